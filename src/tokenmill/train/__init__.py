"""Train: a LLaMA-style model from scratch (or a local HF checkpoint) on packed token shards.

    tokenmill train runs/x/30_shards -o runs/x/40_checkpoints --preset tiny

Writes step-NNNNNNNN/ checkpoints (see checkpoint.py) and final/, a HF folder with the tokenizer that
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load. A killed run started
again with the same config resumes from its newest checkpoint and continues exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from transformers import AutoTokenizer

from tokenmill.device import autocast_for, compute_dtype, pick_device
from tokenmill.losses import mean_loss
from tokenmill.model import ModelConfig, build_model, count_parameters
from tokenmill.schema import StrictModel
from tokenmill.tokenize.shards import open_split, read_meta
from tokenmill.train import perf
from tokenmill.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tokenmill.train.data import WindowSampler, eval_windows
from tokenmill.train.loop import LoopSettings, train
from tokenmill.train.metrics import ConsoleSink, JsonlSink, Sinks
from tokenmill.train.schedule import SCHEDULES

log = logging.getLogger(__name__)


class TrainConfig(StrictModel):
    seq_len: int = Field(256, gt=1, description="tokens per training sequence")
    micro_batch_size: int = Field(8, gt=0, description="sequences per forward pass (per device)")
    grad_accum_steps: int = Field(1, gt=0, description="micro-steps per optimizer step")
    batch_tokens: int | None = Field(None, gt=0, description="global tokens per optimizer step; sets grad_accum_steps")
    max_steps: int = Field(1000, gt=0, description="optimizer steps")
    lr_max: float = Field(3e-3, gt=0)
    lr_min: float = Field(3e-4, ge=0)
    warmup_steps: int = Field(50, ge=0, description="optimizer steps of linear warmup")
    schedule: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of max_steps spent decaying")
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    log_every: int = Field(10, gt=0, description="optimizer steps between metric rows")
    eval_every: int = Field(100, gt=0, description="optimizer steps between validation losses")
    eval_tokens: int = Field(65_536, gt=0, description="validation tokens per evaluation")
    save_every: int = Field(200, gt=0, description="optimizer steps between checkpoints")
    keep_last: int = Field(2, gt=0, description="checkpoints kept")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the model")
    threads: int | None = Field(None, gt=0, description="CPU threads for torch (default: torch's choice)")

    @model_validator(mode="after")
    def _check(self):
        problems = []
        if self.lr_min > self.lr_max:
            problems.append(f"lr_min ({self.lr_min}) is above lr_max ({self.lr_max})")
        if self.warmup_steps >= self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.batch_tokens is not None and self.batch_tokens % (self.seq_len * self.micro_batch_size):
            problems.append(f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len x micro_batch_size "
                            f"({self.seq_len * self.micro_batch_size})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def accum_steps(self, world_size: int = 1) -> int:
        if self.batch_tokens is None:
            return self.grad_accum_steps
        return max(1, self.batch_tokens // (self.seq_len * self.micro_batch_size * world_size))


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms, biases and embeddings are left undecayed."""
    embeddings = {id(model.get_input_embeddings().weight)}
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.requires_grad and (p.ndim < 2 or id(p) in embeddings)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run(model_cfg: ModelConfig, cfg: TrainConfig, shards_dir: Path, out_dir: Path,
        metrics_path: Path | None = None) -> dict:
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = compute_dtype(device, cfg.precision)
    meta = read_meta(shards_dir / "train")
    tokenizer = AutoTokenizer.from_pretrained(shards_dir / "tokenizer")

    model = build_model(model_cfg, meta["vocab_size"], meta["eos_id"]).to(device)
    if model.config.vocab_size < meta["vocab_size"]:
        raise ValueError(f"model.vocab_size {model.config.vocab_size} is below the tokenizer's {meta['vocab_size']}")
    if cfg.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"train.seq_len {cfg.seq_len} exceeds the model's max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr_max, betas=cfg.betas,
                                  fused=device.type == "cuda")
    sampler = WindowSampler(open_split(shards_dir / "train"), cfg.seq_len, cfg.micro_batch_size, cfg.seed)
    val = eval_windows(open_split(shards_dir / "val"), cfg.seq_len, cfg.eval_tokens)

    state = {"step": 0, "tokens": 0}
    resume_from = latest_checkpoint(out_dir)
    if resume_from:
        state = load_checkpoint(resume_from, model, optimizer)
        sampler.load_state_dict(state.pop("loader"))
        log.info("resuming from %s (step %d)", resume_from, state["step"])
    forward_model = torch.compile(model) if cfg.compile else model

    n_params = count_parameters(model)
    print(f"[train] {n_params / 1e6:.2f}M parameters, {meta['n_tokens']:,} train tokens, device {device}, {dtype}")
    autocast = autocast_for(device, dtype)
    sinks = Sinks([ConsoleSink(cfg.max_steps, state["step"]),
                   JsonlSink(metrics_path or out_dir / "metrics.jsonl", resume_step=state["step"])])

    def save(loop_state: dict) -> None:
        save_checkpoint(out_dir, model, optimizer, {**loop_state, "loader": sampler.state_dict()}, cfg.keep_last)

    loop = LoopSettings(max_steps=cfg.max_steps, grad_accum_steps=cfg.accum_steps(), grad_clip=cfg.grad_clip,
                        log_every=cfg.log_every, eval_every=cfg.eval_every, save_every=cfg.save_every,
                        tokens_per_step=cfg.seq_len * cfg.micro_batch_size * cfg.accum_steps())
    try:
        state = train(forward_model, optimizer, lambda step: SCHEDULES[cfg.schedule](step, cfg), sampler.next_batch,
                      lambda m: mean_loss(m, val, cfg.micro_batch_size, device, autocast), sinks, save, loop, state,
                      device, autocast, perf.flops_per_token(model, cfg.seq_len), perf.device_peak_flops(device, dtype),
                      on_log=lambda: {"mem/peak_gib": perf.peak_memory_gib(device)})
    finally:
        sinks.close()
    model.save_pretrained(out_dir / "final")
    tokenizer.save_pretrained(out_dir / "final")
    return {"params": n_params, "steps": state["step"], "tokens": state["tokens"],
            "train_loss": state.get("train_loss"), "val_loss": state.get("val_loss")}
