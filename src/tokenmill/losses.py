"""Next-token loss, for training and evaluation alike."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


def next_token_loss(model, batch: dict[str, torch.Tensor], autocast=contextlib.nullcontext) -> torch.Tensor:
    """Mean cross-entropy of predicting batch["labels"]; other keys (attention_mask, position_ids) go to the model."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with autocast():
        logits = model(**inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())


@torch.no_grad()
def mean_loss(model, windows: list[np.ndarray], batch_size: int, device, autocast=contextlib.nullcontext,
              world=None) -> float:
    """Mean next-token loss (nats) over windows of seq_len + 1 tokens; with a `world` of several ranks,
    each evaluates its share and the sums are combined."""
    if not windows:
        raise ValueError("no evaluation windows: the validation split is shorter than one sequence")
    rank, size = (world.rank, world.size) if world else (0, 1)
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, window count
    # Every rank runs the same number of forwards (FSDP's collectives would hang otherwise).
    mine = windows[:len(windows) // size * size][rank::size] if len(windows) >= size else windows
    for i in range(0, len(mine), batch_size):
        tokens = torch.from_numpy(np.stack(mine[i:i + batch_size]).astype(np.int64)).to(device)
        batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
        total += torch.stack([next_token_loss(model, batch, autocast).double() * len(tokens),
                              torch.tensor(float(len(tokens)), dtype=torch.float64, device=device)])
    if size > 1 and len(windows) >= size:
        total = world.mean(total) * size
    return (total[0] / total[1]).item()
