"""Throughput accounting: FLOPs per token, device peak, MFU.

FLOPs per token follow the PaLM appendix-B count: 6 x (non-embedding parameters + LM head) for the
matrix products, plus 12 x layers x hidden x seq_len for attention scores and values.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

ACCELERATORS: dict[str, dict] = yaml.safe_load((Path(__file__).parent / "accelerators.yaml").read_text())


def accelerator_named(device_name: str) -> str | None:
    """The ACCELERATORS entry a CUDA device name matches (the longest key first: H100-PCIe before H100)."""
    squeezed = device_name.replace(" ", "").replace("-", "").lower()
    return next((k for k in sorted(ACCELERATORS, key=len, reverse=True)
                 if k.replace("-", "").lower() in squeezed), None)


def flops_per_token(model, seq_len: int) -> float:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    lm_head = cfg.vocab_size * cfg.hidden_size  # tied or not, the head is a matrix product per token
    matmul_params = params - embedding + (lm_head if cfg.tie_word_embeddings else 0)
    return 6 * matmul_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def measured_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """FLOP/s of a large square matmul on this device: the honest peak for MFU on a CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    if device.type == "cuda":
        key = accelerator_named(torch.cuda.get_device_name(device))
        if key is not None:
            peak = ACCELERATORS[key]["bf16_tflops"] * 1e12
            return peak if dtype == torch.bfloat16 else peak / 2
    return measured_matmul_peak(device, dtype)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource  # CPU: the process's peak resident set (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
