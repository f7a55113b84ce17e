"""The token-shard format. The only module that knows its bytes; the trainer and `shards check` use it.

A split folder (`30_shards/train/`, `30_shards/val/`) holds:
  tokens-PART-NNNNN.bin  64-byte header, then the token ids as little-endian uint16 (vocab <= 65536) or uint32.
                         Documents are packed back to back, each followed by the EOS id.
  tokens-PART-NNNNN.idx  int64 offsets of each document's first token (numpy .npy).
  meta.json              dtype, vocab size, EOS id, the shards in order with their counts, UTF-8 bytes of the
                         source text. Written last, when every part is whole: no meta.json, no split.
Parallel writers (one per document shard, `PART`) each leave part-PART.json and its token counts; `merge_parts`
joins them into meta.json in part order, so the split reads as one stream whatever wrote it.
Header: magic b"TKMSHRD1", version u32, itemsize u32, n_tokens u64, n_docs u64, zero padding.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from tokenmill.atomic import atomic_write_json

MAGIC = b"TKMSHRD1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
HEADER_BYTES = 64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends documents (each followed by EOS) to shards of at most `tokens_per_shard` tokens. With a `part`
    name it is one of several writers of the split: close() then leaves the part's record for `merge_parts`."""

    def __init__(self, out_dir: Path, vocab_size: int, eos_id: int, tokens_per_shard: int = 1 << 28,
                 part: str | None = None):
        self.out_dir, self.eos_id, self.tokens_per_shard = Path(out_dir), eos_id, tokens_per_shard
        self.prefix, self.part = f"tokens-{part}" if part else "tokens", part
        self.vocab_size, self.dtype = vocab_size, token_dtype(vocab_size)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.n_bytes = 0
        self.unigram = np.zeros(vocab_size, dtype=np.int64)
        self._file = None

    def add(self, token_ids, n_text_bytes: int = 0) -> None:
        ids = np.asarray(list(token_ids) + [self.eos_id], dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}): the tokenizer and vocab_size disagree")
        if self._file is None or self._n_tokens + ids.size > self.tokens_per_shard and self._offsets:
            self._open_next()
        self._offsets.append(self._n_tokens)
        self._file.write(ids.astype(self.dtype).tobytes())
        self._n_tokens += ids.size
        self.n_bytes += n_text_bytes
        np.add.at(self.unigram, ids, 1)  # O(document), not O(vocabulary) like a per-document bincount

    def _open_next(self) -> None:
        self._finish_shard()
        self._name = f"{self.prefix}-{len(self.shards):05d}"
        self._file = open(self.out_dir / f"{self._name}.bin.tmp", "wb")
        self._file.write(b"\0" * HEADER_BYTES)
        self._n_tokens, self._offsets = 0, []

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self._n_tokens, len(self._offsets)))
        self._file.close()
        np.save(self.out_dir / f"{self._name}.idx.npy", np.asarray(self._offsets, dtype=np.int64))
        os.replace(self.out_dir / f"{self._name}.bin.tmp", self.out_dir / f"{self._name}.bin")
        self.shards.append({"file": f"{self._name}.bin", "n_tokens": self._n_tokens, "n_docs": len(self._offsets)})
        self._file = None

    def close(self) -> dict:
        self._finish_shard()
        if self.part is not None:
            np.save(self.out_dir / f"part-{self.part}.unigram.npy", self.unigram)
            atomic_write_json(self.out_dir / f"part-{self.part}.json", {"shards": self.shards, "n_bytes": self.n_bytes})
            return {"shards": self.shards, "n_bytes": self.n_bytes}
        return self._write_meta(self.shards, self.n_bytes, self.unigram)

    def _write_meta(self, shards: list[dict], n_bytes: int, unigram: np.ndarray) -> dict:
        meta = {"format": "tokenmill-shards", "version": VERSION, "dtype": self.dtype.name,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id, "shards": shards,
                "n_tokens": sum(s["n_tokens"] for s in shards), "n_docs": sum(s["n_docs"] for s in shards),
                "n_bytes": n_bytes, "unigram_entropy_nats": unigram_entropy(unigram)}
        atomic_write_json(self.out_dir / "meta.json", meta)
        return meta


def merge_parts(split_dir: Path, vocab_size: int, eos_id: int) -> dict:
    """meta.json of a split written in parts, the parts in name order; the part records are removed."""
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(split_dir.glob("part-*.json"))
    shards, n_bytes, unigram = [], 0, np.zeros(vocab_size, dtype=np.int64)
    for record in records:
        part = json.loads(record.read_text())
        shards += part["shards"]
        n_bytes += part["n_bytes"]
        unigram += np.load(record.with_name(record.name.replace(".json", ".unigram.npy")))
    meta = ShardWriter(split_dir, vocab_size, eos_id)._write_meta(shards, n_bytes, unigram)
    for record in records:
        record.unlink()
        record.with_name(record.name.replace(".json", ".unigram.npy")).unlink()
    return meta


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy (nats/token) of the token frequency distribution: the loss of the best model that ignores context."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


@dataclass
class TokenShard:
    path: Path
    tokens: np.ndarray      # memory-mapped, read-only
    doc_offsets: np.ndarray

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens, without its EOS."""
        ends = list(self.doc_offsets[1:]) + [len(self.tokens)]
        for start, end in zip(self.doc_offsets, ends):
            yield self.tokens[start:end - 1]


def open_shard(path: Path) -> TokenShard:
    path = Path(path)
    with open(path, "rb") as f:
        magic, version, itemsize, n_tokens, n_docs = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"{path}: not a tokenmill token shard (magic {magic!r}, version {version})")
    expected = HEADER_BYTES + n_tokens * itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: truncated or corrupt: header says {n_tokens} tokens ({expected} bytes), "
                         f"file has {path.stat().st_size} bytes; re-run `tokenmill tokenize`")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    offsets = np.load(path.with_name(path.name.replace(".bin", ".idx.npy")))
    if len(offsets) != n_docs:
        raise ValueError(f"{path}: index holds {len(offsets)} documents, header says {n_docs}")
    return TokenShard(path, tokens, offsets)


def read_meta(split_dir: Path) -> dict:
    meta_path = Path(split_dir) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{split_dir}: no meta.json; expected a token split folder written by `tokenmill tokenize`")
    return json.loads(meta_path.read_text())


def open_split(split_dir: Path) -> list[TokenShard]:
    meta = read_meta(split_dir)
    return [open_shard(Path(split_dir) / s["file"]) for s in meta["shards"]]


def check_split(split_dir: Path) -> dict:
    """Open every shard (header, size, index) and confirm the counts in meta.json; returns the meta."""
    meta = read_meta(split_dir)
    shards = open_split(split_dir)
    n_tokens = sum(len(s.tokens) for s in shards)
    if n_tokens != meta["n_tokens"]:
        raise ValueError(f"{split_dir}: meta.json says {meta['n_tokens']} tokens, shards hold {n_tokens}")
    for s in shards:
        if len(s.tokens) and int(s.tokens.max()) >= meta["vocab_size"]:
            raise ValueError(f"{s.path}: token id {int(s.tokens.max())} >= vocab_size {meta['vocab_size']}")
    return meta


def bytes_per_token(meta: dict) -> float:
    return meta["n_bytes"] / meta["n_tokens"] if meta["n_tokens"] else math.nan
