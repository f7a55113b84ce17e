"""What a filter is: one call that keeps a document (possibly rewritten) or drops it with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tokenmill.documents import Document


@dataclass(frozen=True)
class Drop:
    reason: str


class DocumentFilter(Protocol):
    def __call__(self, doc: Document) -> Document | Drop: ...
