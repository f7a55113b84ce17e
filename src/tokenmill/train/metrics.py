"""Metric sinks: one interface for console, JSONL, TensorBoard and Weights & Biases. Rank 0 only.

Keys are namespaced: train/loss, train/lr, train/grad_norm, val/NAME/loss, val/NAME/perplexity, perf/tokens_per_s,
perf/mfu, mem/peak_gib, plus step and tokens.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Protocol

from tqdm import tqdm


class MetricSink(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON row per log call. On resume, rows past the resumed step are dropped first, so
    the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.path.is_file():
            rows = [r for r in map(json.loads, self.path.read_text().splitlines()) if r.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._file = open(self.path, "a")

    def log(self, metrics: dict, step: int) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ConsoleSink:
    """A progress bar over optimizer steps (its ETA is tqdm's) with loss, lr and tokens/s."""

    def __init__(self, max_steps: int, start_step: int = 0):
        self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, metrics: dict, step: int) -> None:
        self.bar.update(step - self.bar.n)
        if "train/loss" in metrics:
            self.bar.set_postfix({"loss": f"{metrics['train/loss']:.3f}", "lr": f"{metrics['train/lr']:.2e}",
                                  "tok/s": f"{metrics['perf/tokens_per_s']:.0f}"}, refresh=False)
        for key, loss in metrics.items():
            if key.startswith("val/") and key.endswith("/loss"):
                self.bar.write(f"step {step}: {key} {loss:.4f} (ppl {math.exp(min(loss, 50)):.1f})")

    def close(self) -> None:
        self.bar.close()


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("the tensorboard logger needs tensorboard: pip install tensorboard") from e
        self.writer = SummaryWriter(str(log_dir))

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Offline (files under the run folder, `wandb sync` later) unless WANDB_API_KEY is set. The key is
    read by wandb itself from the environment; tokenmill never prints or stores it."""

    def __init__(self, project: str, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError as e:
            raise ImportError("the wandb logger needs wandb: pip install wandb") from e
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(project=project, dir=str(run_dir), config=config, mode=mode, name=Path(run_dir).name)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """Fans one log call out to every sink."""

    def __init__(self, sinks: list[MetricSink]):
        self.sinks = sinks

    def log(self, metrics: dict, step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
