"""Line-level dedup: lines that occur in at least `min_docs` different documents are boilerplate
(navigation, licence headers, cookie notices) and are removed everywhere; a document left with too little
text is dropped. Counting runs over the whole corpus before anything is removed."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from pydantic import Field

from tokenmill.dedup.exact import normalise
from tokenmill.documents import read_documents, rewrite_shards
from tokenmill.schema import StrictModel


class LineDedupConfig(StrictModel):
    min_docs: int = Field(3, ge=2, description="a line in this many documents or more is removed")
    min_line_chars: int = Field(10, ge=1, description="shorter lines are never counted or removed")
    min_doc_chars: int = Field(50, ge=0, description="documents shorter than this after removal are dropped")


def _key(line: str) -> bytes:
    return hashlib.blake2b(normalise(line).encode(), digest_size=12).digest()


def line_dedup(cfg: LineDedupConfig, in_dir: Path, out_dir: Path) -> dict:
    docs_with_line = Counter()
    for doc in read_documents(in_dir):
        docs_with_line.update({_key(l) for l in doc.text.splitlines() if len(l.strip()) >= cfg.min_line_chars})
    boilerplate = {k for k, n in docs_with_line.items() if n >= cfg.min_docs}
    stats = Counter()

    def cleaned(doc):
        lines = doc.text.splitlines(keepends=True)
        kept = [l for l in lines if len(l.strip()) < cfg.min_line_chars or _key(l) not in boilerplate]
        stats["lines_removed"] += len(lines) - len(kept)
        doc.text = "".join(kept)
        if len(doc.text.strip()) < cfg.min_doc_chars:
            stats["dropped"] += 1
            return None
        return doc

    rewrite_shards(in_dir, out_dir, cleaned)
    drops = {"lines/too_short_after_line_dedup": stats["dropped"]} if stats["dropped"] else {}
    return {"drops": drops, "boilerplate_lines": len(boilerplate), "lines_removed": stats["lines_removed"]}
