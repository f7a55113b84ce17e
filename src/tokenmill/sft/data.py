"""Conversations → packed rows of seq_len positions, with the loss on assistant tokens only.

Each conversation becomes its inputs (tokens 0..n-2), labels (tokens 1..n-1, -100 where the target is not
an assistant token) and positions (0..n-2: RoPE sees it from its start, and transformers keeps attention
inside it, as for packed documents in pre-training). Rows are filled greedily in a seeded order; what is left
of a row is padding with no loss. A conversation longer than a row is truncated or dropped, as configured,
and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from tokenmill.chat import ChatError, encode
from tokenmill.train.data import WindowSampler

IGNORE = -100


@dataclass
class Rows:
    """Packed rows: inputs, labels and positions, each [rows, seq_len]."""
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    assistant_bytes: int = 0       # UTF-8 bytes of the assistant tokens predicted (for bits per byte)
    conversations: int = 0
    tokens: int = 0                # positions that hold a conversation (the rest is padding)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, picks) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(getattr(self, k)[picks]) for k in ("input_ids", "labels", "position_ids")}

    @property
    def assistant_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


@dataclass
class Encoding:
    train: list = field(default_factory=list)
    held_out: list = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {"conversations": 0, "truncated": 0, "dropped_too_long": 0,
                                                  "no_assistant_token_left": 0})


def is_held_out(doc_id: str, fraction: float) -> bool:
    """A stable split by id: the same conversations are held out whatever the order or the machine."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def encode_all(documents, tokenizer, seq_len: int, overlong: str, held_out: float) -> Encoding:
    """Every conversation encoded; one the template cannot render stops with its file and line."""
    out = Encoding()
    for doc in documents:
        messages = doc.metadata["messages"]
        try:
            encoded = encode(tokenizer, messages)
        except ChatError as e:
            raise ChatError(f"{doc.metadata.get('where', doc.id)}: {e}") from e
        out.counts["conversations"] += 1
        if len(encoded) - 1 > seq_len:
            if overlong == "drop":
                out.counts["dropped_too_long"] += 1
                continue
            out.counts["truncated"] += 1
            encoded.ids, encoded.assistant = encoded.ids[:seq_len + 1], encoded.assistant[:seq_len + 1]
        if not encoded.assistant[1:].any():  # truncation cut every assistant token
            out.counts["no_assistant_token_left"] += 1
            continue
        (out.held_out if is_held_out(doc.id, held_out) else out.train).append(encoded)
    return out


def pack(encoded: list, seq_len: int, pad_id: int, seed: int, tokenizer) -> Rows:
    """Conversations into rows of seq_len inputs, first fit in a seeded order."""
    order = np.random.default_rng(seed).permutation(len(encoded))
    rows: list[list] = []
    free: list[int] = []
    for i in order:
        need = len(encoded[i]) - 1
        slot = next((r for r, left in enumerate(free) if left >= need), None)
        if slot is None:
            rows.append([])
            free.append(seq_len)
            slot = len(rows) - 1
        rows[slot].append(encoded[i])
        free[slot] -= need
    shape = (len(rows), seq_len)
    inputs, labels, positions = np.full(shape, pad_id, np.int64), np.full(shape, IGNORE, np.int64), np.zeros(shape, np.int64)
    assistant_bytes = 0
    for r, members in enumerate(rows):
        at = 0
        for conv in members:
            n = len(conv) - 1
            target = np.where(conv.assistant[1:], conv.ids[1:], IGNORE)
            inputs[r, at:at + n], labels[r, at:at + n], positions[r, at:at + n] = conv.ids[:-1], target, np.arange(n)
            assistant_bytes += len(tokenizer.decode(conv.ids[1:][conv.assistant[1:]]).encode())
            at += n
        positions[r, at:] = np.arange(seq_len - at)  # the padding: a segment of its own, with no loss
    return Rows(inputs, labels, positions, assistant_bytes, len(encoded), sum(len(c) - 1 for c in encoded))


class RowSampler(WindowSampler):
    """Packed rows in a seeded order, epoch after epoch, with a position that checkpoints (WindowSampler's)."""

    def __init__(self, rows: Rows, micro_batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.rows, self.micro_batch_size = rows, micro_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_windows = len(rows)
        if self.n_windows < micro_batch_size * world_size:
            raise ValueError(f"{self.n_windows} packed rows of conversations: too few for a batch of "
                             f"{micro_batch_size * world_size}; lower train.micro_batch_size or add conversations")
        self._start()

    def _take(self, picks) -> dict[str, torch.Tensor]:
        return self.rows.batch(picks)
