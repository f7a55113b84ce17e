"""Batches of fixed-length windows cut from packed token shards, with a position that checkpoints.

A window is seq_len + 1 tokens (inputs and shifted targets). Windows never cross shard files. Each
epoch visits every window once in an order fixed by (seed, epoch); with several ranks, rank r takes
every world_size-th window of that order, so the global batch is the same for any number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenmill.tokenize.shards import TokenShard


class Windows:
    """The seq_len + 1 token windows of one dataset's shards (windows never cross shard files)."""

    def __init__(self, shards: list[TokenShard], seq_len: int):
        self.shards, self.seq_len = shards, seq_len
        per_shard = [max(0, (len(s.tokens) - 1) // seq_len) for s in shards]
        self.shard_of = np.repeat(np.arange(len(shards)), per_shard)
        self.first = np.concatenate([[0], np.cumsum(per_shard)[:-1]]).astype(np.int64)
        self.n = int(sum(per_shard))

    def __getitem__(self, index: int) -> np.ndarray:
        shard = int(self.shard_of[index])
        start = (index - int(self.first[shard])) * self.seq_len
        return self.shards[shard].tokens[start:start + self.seq_len + 1]



class WindowSampler:
    def __init__(self, shards: list[TokenShard], seq_len: int, micro_batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, mask_documents_at: int | None = None):
        self.windows, self.seq_len, self.micro_batch_size = Windows(shards, seq_len), seq_len, micro_batch_size
        self.mask_documents_at = mask_documents_at  # the EOS id, when packed documents must not see each other
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_windows = self.windows.n
        if self.n_windows < micro_batch_size * world_size:
            raise ValueError(f"{self.n_windows} windows of {seq_len + 1} tokens in the train split: too little data "
                             f"for a batch of {micro_batch_size * world_size}; lower train.seq_len or add text")
        self._start()

    def _start(self) -> None:
        """Epoch 0, its first batch next."""
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)

    def next_batch(self) -> dict[str, torch.Tensor]:
        global_batch = self.micro_batch_size * self.world_size
        if self.cursor + global_batch > self.n_windows:  # the epoch's last partial batch is skipped
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        picks = self._order[self.cursor + self.rank:self.cursor + global_batch:self.world_size]
        self.cursor += global_batch
        return self._take(picks)

    def _take(self, picks) -> dict[str, torch.Tensor]:
        windows = torch.from_numpy(np.stack([self.windows[int(i)] for i in picks]).astype(np.int64))
        batch = {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}
        if self.mask_documents_at is not None:
            batch.update(document_positions(batch["input_ids"], self.mask_documents_at))
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict) -> None:
        if state["n_windows"] != self.n_windows or state["seed"] != self.seed:
            raise ValueError("checkpoint was taken on other data (window count or seed differs); cannot resume exactly")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation()


def document_positions(input_ids: torch.Tensor, eos_id: int) -> dict[str, torch.Tensor]:
    """Position ids that restart at each packed document (so RoPE sees every document from position 0),
    and no attention mask: transformers reads the document boundaries from the position ids
    (`find_packed_sequence_indices`) and keeps attention within each document. No [T, T] mask travels with
    the batch; with SDPA transformers builds one per forward, with flash attention or flex_attention (GPU)
    none at all (varlen / block masks)."""
    is_eos = input_ids == eos_id
    doc = torch.cumsum(is_eos, dim=1) - is_eos.long()  # an EOS belongs to the document it ends
    t = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    starts = torch.ones_like(is_eos)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    return {"position_ids": t - torch.cummax(t * starts, dim=1).values}
