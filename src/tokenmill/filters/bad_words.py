"""C4's bad-words rule with the user's own list (datatrove's C4BadWordsFilter downloads its list at run time)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop
from tokenmill.schema import StrictModel


@functools.lru_cache(maxsize=8)
def _pattern(words: tuple[str, ...]) -> re.Pattern | None:
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b", re.I)


class BadWordsFilter(StrictModel):
    name: Literal["bad_words"] = "bad_words"
    words: list[str] = Field(default_factory=list)
    words_file: str | None = Field(None, description="file with one word or phrase per line")

    def __call__(self, doc: Document) -> Document | Drop:
        words = set(self.words)
        if self.words_file:
            words |= {w.strip() for w in Path(self.words_file).read_text(encoding="utf-8").splitlines() if w.strip()}
        pattern = _pattern(tuple(sorted(words)))
        if pattern is not None and pattern.search(doc.text):
            return Drop("bad_word")
        return doc
