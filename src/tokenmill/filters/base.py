"""What a filter is: keep a document (possibly rewritten) or drop it with a reason.

tokenmill's own filters are callables `doc -> Document | Drop`; `as_block` turns one into a datatrove
filter step. Filters that datatrove already has return its block from `block()` instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from datatrove.pipeline.filters.base_filter import BaseFilter

from tokenmill.documents import Document


@dataclass(frozen=True)
class Drop:
    reason: str


@functools.lru_cache(maxsize=16)
def read_list(path: str) -> frozenset[str]:
    """A user's list file (one entry per line, `#` comments), lower-cased; read once per process."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


class DocumentFilter(Protocol):
    name: str

    def __call__(self, doc: Document) -> Document | Drop: ...


class CallableBlock(BaseFilter):
    """A tokenmill filter as a datatrove step: Drop → (False, reason); a rewritten document replaces the text."""

    name = "tokenmill filter"

    def __init__(self, check: DocumentFilter, exclusion_writer=None):
        self.check, self.name = check, check.name  # the name first: the base class names the stats with it
        super().__init__(exclusion_writer)

    def filter(self, doc) -> bool | tuple[bool, str]:
        metadata = dict(doc.metadata)
        result = self.check(Document(doc.id, doc.text, metadata.pop("source", ""), metadata))
        if isinstance(result, Drop):
            return False, result.reason
        if result.text != doc.text:
            self.stat_update("rewritten")
            doc.text = result.text
        doc.metadata.update(result.metadata)
        return True


def as_block(step, exclusion_writer=None):
    if hasattr(step, "block"):
        return step.block(exclusion_writer)
    return CallableBlock(step, exclusion_writer)
