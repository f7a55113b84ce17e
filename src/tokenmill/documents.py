"""The one record type of the data stages, and its on-disk form.

A document folder holds `docs-NNNNN.jsonl.gz` shards, one JSON object per line:
{"id": ..., "text": ..., "source": ..., "metadata": {...}}. The data engine (engine.py) reads and writes the
same shards through datatrove, with `source` carried in datatrove's metadata.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

SHARD_GLOB = "docs-*.jsonl.gz"


@dataclass
class Document:
    id: str
    text: str
    source: str = ""
    metadata: dict = field(default_factory=dict)


def write_documents(docs: Iterable[Document], out_dir: Path, docs_per_shard: int = 50_000) -> int:
    """Write documents into numbered shards under `out_dir`; returns how many were written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    count, shard, f = 0, 0, None
    try:
        for doc in docs:
            if count % docs_per_shard == 0:
                if f:
                    f.close()
                # compresslevel 1: shards are rewritten by every stage, so speed beats size here.
                f = gzip.open(out_dir / f"docs-{shard:05d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1)
                shard += 1
            f.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
            count += 1
    finally:
        if f:
            f.close()
    return count


def document_shards(in_dir: Path) -> list[Path]:
    shards = sorted(Path(in_dir).glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"{in_dir}: no document shards ({SHARD_GLOB}); is this the output of a data stage?")
    return shards


def read_documents(in_dir: Path) -> Iterator[Document]:
    for shard in document_shards(in_dir):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    yield Document(**json.loads(line))
                except (json.JSONDecodeError, TypeError) as e:
                    raise ValueError(f"{shard}:{line_no}: not a tokenmill document ({e})") from e
