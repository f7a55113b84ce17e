"""The training loop: get batch, forward, backward, clip, step, schedule, log, evaluate, checkpoint.

Everything that varies (model, optimizer, schedule, batches, sinks, evaluation, saving, the world of
ranks) is handed in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tokenmill.losses import next_token_loss
from tokenmill.train.distributed import World, grad_sync
from tokenmill.train.preemption import Preempted


@dataclass
class LoopSettings:
    max_steps: int          # optimizer steps
    grad_accum_steps: int   # micro-steps per optimizer step
    grad_clip: float
    log_every: int
    eval_every: int | None  # 0 or None: only at the end
    save_every: int | None  # 0 or None: only at the end
    tokens_per_step: int    # global, all ranks
    eval_at_start: bool = False  # evaluate at step 0, before the first update
    bytes_per_token: dict[str, float] | None = None  # per evaluation set: its loss also in bits per byte


class TrainingDiverged(RuntimeError):
    pass


class LossGuard:
    """Stops a run whose loss is NaN/inf, or jumps above `spike_factor` x its running mean."""

    def __init__(self, spike_factor: float | None = None):
        self.spike_factor, self.mean = spike_factor, None

    def check(self, loss: float, step: int) -> None:
        advice = "the last good checkpoint is kept; lower train.lr_max or train.grad_clip and resume"
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at step {step}; {advice}")
        if self.spike_factor and self.mean is not None and loss > self.spike_factor * self.mean:
            raise TrainingDiverged(f"loss spiked to {loss:.4f} at step {step} (running mean {self.mean:.4f}, "
                                   f"train.spike_factor {self.spike_factor}); {advice}")
        self.mean = loss if self.mean is None else 0.9 * self.mean + 0.1 * loss


def _due(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


def log_evaluation(evaluate, model, sinks, state: dict, bytes_per_token: dict[str, float] | None = None) -> None:
    """`evaluate(model)` gives {set name: loss}; logged as val/NAME/loss, val/NAME/perplexity and, given the
    set's bytes per token, val/NAME/bits_per_byte (what compares across tokenizers). The first set's loss is
    the run's `val_loss`."""
    losses = evaluate(model)
    if not losses:  # nothing held out to evaluate on
        return
    metrics = {"tokens": state["tokens"]}
    for name, loss in losses.items():
        metrics[f"val/{name}/loss"], metrics[f"val/{name}/perplexity"] = loss, math.exp(min(loss, 50))
        if bytes_per_token and name in bytes_per_token:
            metrics[f"val/{name}/bits_per_byte"] = loss / math.log(2) / bytes_per_token[name]
    sinks.log(metrics, state["step"])
    state["val_losses"], state["val_loss"] = losses, next(iter(losses.values()))


def _grad_norm(norm) -> float:
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2 returns a DTensor


def train(model, optimizer, lr_at: Callable[[int], float], next_batch, evaluate, sinks, save,
          loop: LoopSettings, state: dict, device: torch.device, loss_fn=next_token_loss,
          flops_per_token: float = 0.0, peak_flops: float = float("inf"), on_log=None,
          world: World = World(), guard: LossGuard = LossGuard(), before_step=None, after_step=None,
          stop=None) -> dict:
    """Train from `state` (step, tokens) to loop.max_steps; returns the final state with last losses.
    `before_step(step)` may change the gradients before they are clipped (which embedding rows train);
    `after_step()` sees the updated weights (the moving average of train/ema.py);
    `stop` (preemption.StopSignals) ends the run at a step boundary with a checkpoint."""
    if loop.eval_at_start and state["step"] == 0:
        log_evaluation(evaluate, model, sinks, state, loop.bytes_per_token)
    model.train()
    loss_sum, window_start, window_steps = torch.zeros((), device=device), time.perf_counter(), 0
    while state["step"] < loop.max_steps:
        lr = lr_at(state["step"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for micro in range(loop.grad_accum_steps):
            batch = {k: v.to(device, non_blocking=True) for k, v in next_batch().items()}
            with grad_sync(model, enabled=micro == loop.grad_accum_steps - 1):
                loss = loss_fn(model, batch) / loop.grad_accum_steps
                loss.backward()
            loss_sum += loss.detach()
        if before_step:
            before_step(state["step"])
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step:
            after_step()
        state["step"] += 1
        state["tokens"] += loop.tokens_per_step
        window_steps += 1
        step, last = state["step"], state["step"] == loop.max_steps

        if step % loop.log_every == 0 or last:  # the only host syncs of the loop
            train_loss = world.mean(loss_sum / window_steps).item()
            guard.check(train_loss, step)
            tokens_per_s = window_steps * loop.tokens_per_step / (time.perf_counter() - window_start)
            metrics = {"tokens": state["tokens"], "train/loss": train_loss, "train/lr": lr,
                       "train/grad_norm": _grad_norm(grad_norm), "perf/tokens_per_s": tokens_per_s,
                       "perf/mfu": tokens_per_s * flops_per_token / (peak_flops * world.size)}
            if on_log:
                metrics.update(on_log())
            sinks.log(metrics, step)
            state["train_loss"] = train_loss
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0
        paused = time.perf_counter()  # evaluation and checkpoints are not training throughput
        if _due(step, loop.eval_every) or last:
            log_evaluation(evaluate, model, sinks, state, loop.bytes_per_token)
            model.train()
        saved = _due(step, loop.save_every) or last
        if saved:
            save(state)
        # Checked on save steps too (save_every 1 would never check otherwise); a signal during the last step's
        # evaluation or save is the trainer's to act on, once the run is whole.
        if stop is not None and not last and stop.requested():
            if not saved:
                save(state)
            raise Preempted(step, stop.signum)
        window_start += time.perf_counter() - paused  # the window keeps its steps, so only the pause leaves it
    return state
