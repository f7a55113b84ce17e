"""Dedup: drop exact duplicates of normalised text, keeping the first occurrence (`20_dedup/`).

    tokenmill dedup runs/x/10_filtered -o runs/x/20_dedup

Normalisation (NFKC, lower case, collapsed whitespace) makes copies that differ only in layout or case
count as the same document.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import Field

from tokenmill.documents import read_documents, write_documents
from tokenmill.filters import FunnelCounter
from tokenmill.schema import StrictModel

_SPACE = re.compile(r"\s+")


class DedupConfig(StrictModel):
    method: Literal["exact"] = Field("exact", description="exact: hash of normalised text")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()


def run(cfg: DedupConfig, in_dir: Path, out_dir: Path) -> dict:
    counter, seen = FunnelCounter(), set()

    def unique():
        for doc in read_documents(in_dir):
            counter.seen(doc)
            key = exact_key(doc.text)
            if key in seen:
                counter.drops["exact/duplicate"] += 1
                continue
            seen.add(key)
            counter.kept(doc)
            yield doc

    write_documents(unique(), out_dir)
    return counter.as_dict()
