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
from typing import Callable, Iterable, Iterator

SHARD_GLOB = "docs-*.jsonl.gz"


@dataclass
class Document:
    id: str
    text: str
    source: str = ""
    metadata: dict = field(default_factory=dict)


def _open_shard(path: Path):
    # compresslevel 1: shards are rewritten by every stage, so speed beats size here.
    return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)


def _line(doc: Document) -> str:
    return json.dumps(asdict(doc), ensure_ascii=False) + "\n"


def write_documents(docs: Iterable[Document], out_dir: Path, docs_per_shard: int = 50_000,
                    chars_per_shard: int | None = None, prefix: str = "docs") -> int:
    """Write documents into numbered shards `PREFIX-NNNNN.jsonl.gz` under `out_dir`, a new shard after
    `docs_per_shard` documents or `chars_per_shard` characters; returns how many were written. The shards are
    the data stages' units of parallel work: each is one task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    count, shard, f = 0, 0, None
    in_shard = chars = 0
    try:
        for doc in docs:
            if f is None or in_shard == docs_per_shard or (chars_per_shard and chars >= chars_per_shard):
                if f:
                    f.close()
                f, in_shard, chars = _open_shard(out_dir / f"{prefix}-{shard:05d}.jsonl.gz"), 0, 0
                shard += 1
            f.write(_line(doc))
            count, in_shard, chars = count + 1, in_shard + 1, chars + len(doc.text)
    finally:
        if f:
            f.close()
    return count


def rewrite_shards(in_dir: Path, out_dir: Path, keep: Callable[[Document], Document | None]) -> tuple[int, int]:
    """Each input shard → the output shard of the same name, holding the documents `keep` returns (in order);
    the shard layout, and so the next stage's tasks, stay those of the input. Returns (docs in, docs out)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_in = n_out = 0
    for shard in document_shards(in_dir):
        with _open_shard(out_dir / shard.name) as f:
            for doc in read_shard(shard):
                n_in += 1
                kept = keep(doc)
                if kept is not None:
                    f.write(_line(kept))
                    n_out += 1
    return n_in, n_out


def document_shards(in_dir: Path) -> list[Path]:
    shards = sorted(Path(in_dir).glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"{in_dir}: no document shards ({SHARD_GLOB}); is this the output of a data stage?")
    return shards


def read_shard(shard: Path) -> Iterator[Document]:
    with gzip.open(shard, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                yield Document(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{shard}:{line_no}: not a tokenmill document ({e})") from e


def read_documents(in_dir: Path) -> Iterator[Document]:
    for shard in document_shards(in_dir):
        yield from read_shard(shard)
