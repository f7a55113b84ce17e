"""Throughput accounting: FLOPs per token, device peak, MFU.

FLOPs per token follow the PaLM appendix-B count: 6 x (non-embedding parameters + LM head) for the
matrix products, plus 12 x layers x hidden x seq_len for attention scores and values.
"""

from __future__ import annotations

import time

import torch

# Dense bf16 peak FLOP/s (vendor figures, no sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                  "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}


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
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak if dtype == torch.bfloat16 else peak / 2
    return measured_matmul_peak(device, dtype)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource  # CPU: the process's peak resident set (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
