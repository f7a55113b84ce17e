"""Filter: run the configured filters in order; count every drop by filter and reason (`10_filtered/`).

    tokenmill filter runs/x/00_raw -o runs/x/10_filtered

Dropped documents go to `dropped/` beside the kept ones (metadata.drop = "filter/reason") so a person can
look at what was removed and why. Adding a filter: one module with a config class that is callable, and
one line in FILTER_TYPES.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.filters.base import Drop
from tokenmill.filters.gopher import GopherQualityFilter
from tokenmill.filters.length import LengthFilter
from tokenmill.schema import StrictModel

FILTER_TYPES = (LengthFilter, GopherQualityFilter)
FilterStep = Annotated[Union[FILTER_TYPES], Field(discriminator="name")]


class FilterConfig(StrictModel):
    steps: list[FilterStep] = Field(
        default_factory=lambda: [LengthFilter(min_chars=200), GopherQualityFilter()],
        description="filters in the order they run; each is {name: ..., its parameters}")
    write_dropped: bool = Field(True, description="write dropped documents to dropped/ for inspection")


class FunnelCounter:
    """Documents and characters in and out, and drops by 'filter/reason'."""

    def __init__(self):
        self.counts = Counter()
        self.drops = Counter()

    def seen(self, doc: Document) -> None:
        self.counts["docs_in"] += 1
        self.counts["chars_in"] += len(doc.text)

    def kept(self, doc: Document) -> None:
        self.counts["docs_out"] += 1
        self.counts["chars_out"] += len(doc.text)

    def as_dict(self) -> dict:
        return {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0, **self.counts,
                "drops": dict(sorted(self.drops.items()))}


def apply_filters(docs, steps, counter: FunnelCounter, dropped: list | None = None):
    for doc in docs:
        counter.seen(doc)
        for step in steps:
            result = step(doc)
            if isinstance(result, Drop):
                label = f"{step.name}/{result.reason}"
                counter.drops[label] += 1
                if dropped is not None:
                    dropped.append(Document(doc.id, doc.text, doc.source, {**doc.metadata, "drop": label}))
                break
            doc = result
        else:
            counter.kept(doc)
            yield doc


def run(cfg: FilterConfig, in_dir: Path, out_dir: Path) -> dict:
    counter = FunnelCounter()
    dropped: list[Document] | None = [] if cfg.write_dropped else None
    write_documents(apply_filters(read_documents(in_dir), cfg.steps, counter, dropped), out_dir)
    if dropped:
        write_documents(dropped, out_dir / "dropped")
    return counter.as_dict()
