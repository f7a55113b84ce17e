"""Device and precision choice. On CPU the default is fp32: bf16 matmuls without AMX run ~40x slower."""

from __future__ import annotations

import contextlib
import functools

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device (is this a CPU build of torch?)")
    return torch.device(name)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def autocast_for(device: torch.device, dtype: torch.dtype):
    """A context factory: bf16 autocast (weights and optimizer stay fp32), or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
