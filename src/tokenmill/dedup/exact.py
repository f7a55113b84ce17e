"""Exact duplicates of normalised text (NFKC, lower case, collapsed whitespace); the smallest id of each
group is kept, so the result does not depend on the input order."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from pathlib import Path

from tokenmill.documents import read_documents, rewrite_shards

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()


def exact_dedup(in_dir: Path, out_dir: Path) -> dict:
    keeper: dict[bytes, str] = {}
    group_size: Counter[bytes] = Counter()
    for doc in read_documents(in_dir):  # pass 1: the smallest id per normalised text
        key = exact_key(doc.text)
        group_size[key] += 1
        if key not in keeper or doc.id < keeper[key]:
            keeper[key] = doc.id
    kept_ids = set(keeper.values())

    def keep(doc):
        if doc.id in kept_ids:
            kept_ids.discard(doc.id)  # a repeated id keeps only its first copy
            return doc
        return None

    n_in, n_out = rewrite_shards(in_dir, out_dir, keep)
    return {"drops": {"exact/duplicate": n_in - n_out} if n_in > n_out else {},
            "cluster_sizes": size_histogram(group_size.values())}


def size_histogram(sizes) -> dict[str, int]:
    """{cluster size: number of clusters} for clusters of two or more documents (JSON keys are strings)."""
    return {str(size): count for size, count in sorted(Counter(s for s in sizes if s > 1).items())}
