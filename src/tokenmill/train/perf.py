"""Throughput accounting: FLOPs per token, device peak, MFU. The trainer and `tokenmill estimate` both count
FLOPs here, so the logged MFU and the estimate's mean the same thing.

FLOPs per token follow the PaLM appendix-B count, split by what trains: a weight that trains costs 6 FLOPs
per token (forward, gradient of the input, gradient of the weight), a frozen one 4 (LoRA's base: no weight
gradient). Embedding lookups cost nothing; the LM head is a matrix product, tied or not. Attention scores
and values add 12 x layers x hidden x seq_len.
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


def matmul_parameters(model) -> tuple[int, int]:
    """(trainable, frozen) weights that multiply activations: every distinct tensor once, the input
    embedding left out (a lookup) unless it is also the head."""
    head = model.get_output_embeddings().weight
    lookup = model.get_input_embeddings().weight
    trainable = frozen = 0
    for param in {id(p): p for p in model.parameters()}.values():
        if param is lookup and param is not head:
            continue
        if param.requires_grad:
            trainable += param.numel()
        else:
            frozen += param.numel()
    return trainable, frozen


def token_flops(trainable: int, frozen: int, config, seq_len: int) -> float:
    """Model FLOPs of one training token (no recomputation counted: that is hardware FLOPs, not MFU's)."""
    return 6 * trainable + 4 * frozen + attention_flops(config, seq_len)


def forward_flops(trainable: int, frozen: int, config, seq_len: int) -> float:
    """FLOPs of one token's forward: what activation checkpointing computes a second time."""
    return 2 * (trainable + frozen) + attention_flops(config, seq_len) / 3


def attention_flops(config, seq_len: int) -> float:
    return 12 * config.num_hidden_layers * config.hidden_size * seq_len


def flops_per_token(model, seq_len: int) -> float:
    """Model FLOPs of one training token of this model, as it trains (its requires_grad flags)."""
    return token_flops(*matmul_parameters(model), model.config, seq_len)


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
