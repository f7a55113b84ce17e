"""Next-token loss, for training and evaluation alike."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


def next_token_loss(model, inputs: torch.Tensor, targets: torch.Tensor, autocast=contextlib.nullcontext) -> torch.Tensor:
    with autocast():
        logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def mean_loss(model, windows: list[np.ndarray], batch_size: int, device, autocast=contextlib.nullcontext) -> float:
    """Mean next-token loss (nats) over windows of seq_len + 1 tokens."""
    if not windows:
        raise ValueError("no evaluation windows: the validation split is shorter than one sequence")
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.stack(windows[i:i + batch_size]).astype(np.int64)).to(device)
        total += next_token_loss(model, batch[:, :-1], batch[:, 1:], autocast).item() * len(batch)
    return total / len(windows)
