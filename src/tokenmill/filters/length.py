"""Length bounds in characters, or in a tokenizer's tokens (to select long documents for a long-context
stage: a dataset of documents of >= N tokens, upsampled by the mixture's weights)."""

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tokenmill.documents import Document
from tokenmill.filters.base import Drop
from tokenmill.schema import StrictModel


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from tokenizers import Tokenizer
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"filter length.tokenizer: {path}: no tokenizer.json (give a tokenizer.json, "
                                "an HF model folder or a run's 30_shards/tokenizer)")
    return Tokenizer.from_file(str(file))


class LengthFilter(StrictModel):
    name: Literal["length"] = "length"
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this (characters)")
    max_chars: int | None = Field(None, gt=0, description="drop documents longer than this (characters)")
    min_tokens: int | None = Field(None, gt=0, description="drop documents of fewer tokens than this (by tokenizer)")
    max_tokens: int | None = Field(None, gt=0, description="drop documents of more tokens than this (by tokenizer)")
    tokenizer: str | None = Field(None, description="tokenizer.json or HF folder that counts min/max_tokens "
                                                    "(the model's own, e.g. models/smollm2)")

    @model_validator(mode="after")
    def _tokenizer_for_tokens(self):
        if (self.min_tokens or self.max_tokens) and not self.tokenizer:
            raise ValueError("min_tokens / max_tokens count a tokenizer's tokens: give tokenizer (a tokenizer.json "
                             "or HF folder)")
        return self

    def __call__(self, doc: Document) -> Document | Drop:
        if len(doc.text) < self.min_chars:
            return Drop("too_short")
        if self.max_chars is not None and len(doc.text) > self.max_chars:
            return Drop("too_long")
        if self.min_tokens or self.max_tokens:
            n = len(_tokenizer(self.tokenizer).encode(doc.text, add_special_tokens=False).ids)
            if self.min_tokens and n < self.min_tokens:
                return Drop("too_few_tokens")
            if self.max_tokens and n > self.max_tokens:
                return Drop("too_many_tokens")
        return doc
