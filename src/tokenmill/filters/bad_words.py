"""C4's bad-words rule with the user's own list (datatrove's C4BadWordsFilter downloads its list at run time)."""

from __future__ import annotations

import functools
import re
from typing import Literal

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop, read_list
from tokenmill.schema import StrictModel


@functools.lru_cache(maxsize=8)
def _pattern(words: tuple[str, ...], words_file: str | None) -> re.Pattern | None:
    """One case-insensitive whole-word pattern, built once per list (the file is read once, not per document)."""
    words = {w.strip().lower() for w in words if w.strip()} | (read_list(words_file) if words_file else frozenset())
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b", re.I)


class BadWordsFilter(StrictModel):
    name: Literal["bad_words"] = "bad_words"
    words: list[str] = Field(default_factory=list)
    words_file: str | None = Field(None, description="file with one word or phrase per line")

    def __call__(self, doc: Document) -> Document | Drop:
        pattern = _pattern(tuple(self.words), self.words_file)
        if pattern is not None and pattern.search(doc.text):
            return Drop("bad_word")
        return doc
