"""Estimate a run before running it: parameters, FLOPs, memory per device, time and cost.

    tokenmill estimate my.yaml --gpus 8xH100 --price-per-gpu-hour 2.5
    tokenmill estimate demo --gpus cpu --json

The model is built on PyTorch's meta device (exact parameter counts for any config, no memory, no
download beyond a base model's config.json). FLOPs per token follow the PaLM convention that training's
MFU uses (`train/perf.py`): 6 x (non-embedding parameters + LM head) + 12 x layers x hidden x seq_len,
attention not halved for causality. Memory is a sum of parts (`memory.py`), each named in the breakdown;
`bench/estimate_vs_measured.py` checks the total and the step time against real runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
import torch

from tokenmill.estimate.memory import MemoryPlan, memory_breakdown
from tokenmill.train import perf
from tokenmill.train.mixture import stage_seq_lens
from tokenmill.train.perf import ACCELERATORS

DEFAULT_MFU = {"gpu": 0.40, "cpu": 0.60}  # GPU: llm-foundry's published H100 range 35-46%; CPU: our loop, measured


@dataclass
class Devices:
    kind: str          # "cpu" or an ACCELERATORS name
    count: int
    peak_flops: float  # per device, in the run's precision
    memory_gib: float | None

    @classmethod
    def parse(cls, spec: str, bf16: bool) -> "Devices":
        """'8xH100', 'H100', or 'cpu' (whose peak is measured here, like training's MFU)."""
        count, name = re.fullmatch(r"(?:(\d+)x)?(.+)", spec.strip()).groups(default="1")
        if name.lower() == "cpu":
            # Best of three: one short measurement on a busy machine can read 30% low.
            peak = max(perf.measured_matmul_peak(torch.device("cpu")) for _ in range(3))
            return cls("cpu", int(count), peak, None)
        match = next((k for k in ACCELERATORS if k.lower() == name.lower()), None)
        if match is None:
            raise ValueError(f"--gpus {spec}: unknown device {name!r}; known: cpu, {', '.join(ACCELERATORS)} "
                             f"(add one to tokenmill/train/accelerators.yaml)")
        spec_ = ACCELERATORS[match]
        return cls(match, int(count), 1e12 * spec_["bf16_tflops" if bf16 else "fp32_tflops"], spec_["memory_gib"])


def meta_model(cfg):
    """The model the run would train, on the meta device: shapes and counts without weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tokenmill.model import build_model
    from tokenmill.model.resolve import resolve_model_path
    with torch.device("meta"):
        if cfg.model.init_from:
            config = AutoConfig.from_pretrained(resolve_model_path(cfg.model.init_from))
            return AutoModelForCausalLM.from_config(config)
        return build_model(cfg.model, vocab_size_of(cfg), eos_id=0)


def vocab_size_of(cfg) -> int:
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.tokenize.tokenizer:
        from tokenmill.tokenize.tokenizer import load_tokenizer
        return len(load_tokenizer(cfg.tokenize.tokenizer, cfg.tokenize.eos_token))
    return cfg.tokenize.vocab_size


def matmul_parameters(model, lora, train_embeddings: bool) -> tuple[int, int]:
    """(trainable, frozen) matrix-product weights of the run, as perf.matmul_parameters counts them on the
    model the trainer builds: with LoRA the base is frozen and its adapters (and the head, when embeddings
    train) are what trains."""
    trainable, frozen = perf.matmul_parameters(model)
    if lora is None:
        return trainable, frozen
    head = model.get_output_embeddings().weight.numel() if train_embeddings else 0
    return lora_parameters(model, lora) + head, trainable + frozen - head


def quantized_parameters(model) -> int:
    """The weights a 4-bit load quantizes: every linear layer's but the LM head's (transformers keeps it)."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def lora_parameters(model, lora) -> int:
    return sum(lora.r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in lora.target_modules)


def trainable_parameters(model, lora, train_embeddings: bool = True) -> int:
    """All parameters, or LoRA's: r x (in + out) per adapted linear layer, plus the embeddings (and an
    untied head) when they train too."""
    if lora is None:
        return sum(p.numel() for p in model.parameters())
    count = lora_parameters(model, lora)
    if train_embeddings:
        count += model.get_input_embeddings().weight.numel()
        if not model.config.tie_word_embeddings:
            count += model.get_output_embeddings().weight.numel()
    return count


def muon_parameters(model, lora) -> int:
    """What Muon takes (train/optim.py): the hidden matrices, or under LoRA the adapters (all matrices)."""
    if lora is not None:
        return lora_parameters(model, lora)
    from tokenmill.train.optim import hidden_matrices
    return sum(p.numel() for p in hidden_matrices(model))


def estimate(cfg, gpus: str = "cpu", price_per_gpu_hour: float | None = None, mfu: float | None = None,
             world_size: int | None = None) -> dict:
    on_gpu = gpus.lower() != "cpu"
    bf16 = on_gpu and cfg.train.precision != "fp32"
    devices = Devices.parse(gpus, bf16)
    world = world_size or devices.count
    model = meta_model(cfg)
    t = cfg.train
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    matmuls = matmul_parameters(model, cfg.model.lora, cfg.model.embeddings.train != "none")
    flops_token = perf.token_flops(*matmuls, model.config, t.seq_len)
    accum = t.accum_steps(world)
    tokens_per_step = t.seq_len * t.micro_batch_size * accum * world
    trainable = trainable_parameters(model, cfg.model.lora, cfg.model.embeddings.train != "none")
    plan = MemoryPlan(params=params, trainable=trainable, config=model.config,
                      micro_batch_size=t.micro_batch_size, seq_len=t.seq_len, world_size=world,
                      parallel="fsdp" if t.parallel == "fsdp" else ("ddp" if world > 1 else "none"),
                      bf16=bf16, activation_checkpointing=t.activation_checkpointing,
                      loss_chunk_tokens=t.loss_chunk_tokens, cpu_offload=t.fsdp_cpu_offload, on_gpu=on_gpu,
                      loaded_checkpoint=bool(cfg.model.init_from),
                      quantized_params=quantized_parameters(model) if cfg.model.quantize else 0,
                      quantized_bytes_per_param=cfg.model.quantize.bytes_per_param() if cfg.model.quantize else 0.5,
                      muon_params=muon_parameters(model, cfg.model.lora) if t.optimizer == "muon" else 0,
                      ema=t.ema is not None)
    memory = memory_breakdown(plan)
    # After the memory parts: the runtime part is this process's resident memory, which timing a CPU step raises.
    measured = None
    if not on_gpu and mfu is None and not cfg.model.quantize:  # a CPU: the run's own shape, timed here (cpu_step.py)
        from tokenmill.estimate.cpu_step import step_seconds
        measured = step_seconds(cfg, model.config, params, trainable, accum)
        step_time = measured["step_s"]
        mfu = flops_token * tokens_per_step / (world * devices.peak_flops * step_time)
    else:
        mfu = mfu or DEFAULT_MFU["gpu" if on_gpu else "cpu"]
        # Hardware FLOPs: activation checkpointing computes the forward twice.
        recompute = perf.forward_flops(*matmuls, model.config, t.seq_len) if t.activation_checkpointing else 0
        step_time = (flops_token + recompute) * tokens_per_step / (world * devices.peak_flops * mfu)
    total_time = step_time * t.max_steps
    cost = total_time / 3600 * devices.count * price_per_gpu_hour if price_per_gpu_hour else None
    lengths = sorted(set(stage_seq_lens(cfg.mixture, t.seq_len)) | {t.seq_len})
    return {"params": params, "params_embedding": embedding, "params_trainable": plan.trainable,
            # A stage at another length: the same tokens per step and per micro-batch (so the same activation
            # memory without a seq² term); attention FLOPs per token grow with the length.
            "stage_seq_lens": lengths,
            "flops_per_token_by_seq_len": {n: perf.token_flops(*matmuls, model.config, n) for n in lengths},
            "flops_per_token": flops_token, "flops_total": flops_token * tokens_per_step * t.max_steps,
            "memory_gib_per_device": round(sum(memory.values()), 3),
            "memory_breakdown_gib": memory,
            "device_memory_gib": devices.memory_gib, "step_time_s": step_time, "total_time_s": total_time,
            "cost_usd": cost, "tokens_per_step": tokens_per_step, "tokens_total": tokens_per_step * t.max_steps,
            "chinchilla_tokens": 20 * params, "mfu": mfu, "devices": asdict(devices), "step_time_measured": measured,
            "flops_convention": FLOPS_CONVENTION}


FLOPS_CONVENTION = ("PaLM: 6 x trained + 4 x frozen matmul weights (LM head included, embedding lookup not) "
                     "+ 12 x layers x hidden x seq_len")


def format_estimate(e: dict) -> str:
    d = e["devices"]
    fits = "" if e["device_memory_gib"] is None else (
        f" of {e['device_memory_gib']} GiB" + ("" if e["memory_gib_per_device"] <= e["device_memory_gib"]
                                                else "  ← does not fit: try fsdp, activation checkpointing or LoRA"))
    lines = [f"parameters       {e['params'] / 1e6:,.1f}M ({e['params_embedding'] / 1e6:,.1f}M embedding, "
             f"{e['params_trainable'] / 1e6:,.1f}M trainable)",
             f"FLOPs per token  {e['flops_per_token']:.3g} ({e['flops_convention']})"
             + ("".join(f"; {n} tokens: {f:.3g}" for n, f in e["flops_per_token_by_seq_len"].items())
                if len(e["stage_seq_lens"]) > 1 else ""),
             f"tokens           {e['tokens_total']:,} ({e['tokens_per_step']:,} per step); Chinchilla-optimal for "
             f"this size: {e['chinchilla_tokens']:,.0f} (20 per parameter; not a target for CPT)",
             f"memory/device    {e['memory_gib_per_device']:.2f} GiB{fits}"]
    lines += [f"  {name:<15}{gib:8.3f} GiB" for name, gib in e["memory_breakdown_gib"].items()]
    how = (f"a micro-batch of this shape timed here, {e['mfu']:.0%} MFU" if e.get("step_time_measured")
           else f"at {e['mfu']:.0%} MFU")
    lines += [f"time             {e['step_time_s']:.3g} s/step, {_duration(e['total_time_s'])} on {d['count']} x "
              f"{d['kind']} ({how}; peak {d['peak_flops'] / 1e12:.3g} TFLOP/s per device)"]
    if e["cost_usd"] is not None:
        lines.append(f"cost             ${e['cost_usd']:,.2f}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{math.ceil(seconds / 60)} min"
