"""Length bounds in characters."""

from typing import Literal

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop
from tokenmill.schema import StrictModel


class LengthFilter(StrictModel):
    name: Literal["length"] = "length"
    min_chars: int = Field(1, ge=0, description="drop documents shorter than this (characters)")
    max_chars: int | None = Field(None, gt=0, description="drop documents longer than this (characters)")

    def __call__(self, doc: Document) -> Document | Drop:
        if len(doc.text) < self.min_chars:
            return Drop("too_short")
        if self.max_chars is not None and len(doc.text) > self.max_chars:
            return Drop("too_long")
        return doc
