"""The training loop: get batch, forward, backward, clip, step, schedule, log, evaluate, checkpoint.

Everything that varies (model, optimizer, schedule, batches, sinks, evaluation, saving) is handed in.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tokenmill.losses import next_token_loss


@dataclass
class LoopSettings:
    max_steps: int          # optimizer steps
    grad_accum_steps: int   # micro-steps per optimizer step
    grad_clip: float
    log_every: int
    eval_every: int
    save_every: int
    tokens_per_step: int    # global, all ranks


class TrainingDiverged(RuntimeError):
    pass


def train(model, optimizer, lr_at: Callable[[int], float], next_batch, evaluate, sinks, save,
          loop: LoopSettings, state: dict, device: torch.device, autocast=contextlib.nullcontext,
          flops_per_token: float = 0.0, peak_flops: float = float("inf"), on_log=None) -> dict:
    """Train from `state` (step, tokens) to loop.max_steps; returns the final state with last losses."""
    model.train()
    loss_sum, window_start, window_steps = torch.zeros((), device=device), time.perf_counter(), 0
    while state["step"] < loop.max_steps:
        lr = lr_at(state["step"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for _ in range(loop.grad_accum_steps):
            inputs, targets = next_batch()
            loss = next_token_loss(model, inputs.to(device), targets.to(device), autocast) / loop.grad_accum_steps
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += loop.tokens_per_step
        window_steps += 1
        step, last = state["step"], state["step"] == loop.max_steps

        if step % loop.log_every == 0 or last:  # the only host sync of the loop
            train_loss = (loss_sum / window_steps).item()
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"loss is {train_loss} at step {step}; the last good checkpoint is kept. "
                                       "Lower train.lr_max or train.grad_clip and resume.")
            tokens_per_s = window_steps * loop.tokens_per_step / (time.perf_counter() - window_start)
            metrics = {"tokens": state["tokens"], "train/loss": train_loss, "train/lr": lr,
                       "train/grad_norm": float(grad_norm), "perf/tokens_per_s": tokens_per_s,
                       "perf/mfu": tokens_per_s * flops_per_token / peak_flops}
            if on_log:
                metrics.update(on_log())
            sinks.log(metrics, step)
            state["train_loss"] = train_loss
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if step % loop.eval_every == 0 or last:
            state["val_loss"] = evaluate(model)
            sinks.log({"tokens": state["tokens"], "val/loss": state["val_loss"]}, step)
            model.train()
            window_start = time.perf_counter()  # evaluation time is not training throughput
        if step % loop.save_every == 0 or last:
            save(state)
            window_start = time.perf_counter()
    return state
