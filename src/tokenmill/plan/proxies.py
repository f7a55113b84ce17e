"""Proxy runs: ordinary `train` runs of the real trainer on the real shards, one folder each, resumable and
skipped when done.

For each share of the varied dataset, one WSD run to the largest budget, and for every smaller budget a
cooldown branch: the same run resumed from its stable-phase checkpoint at that budget's decay start, with the
budget's own max_steps (WSD's stable phase does not depend on max_steps, so the branch has seen exactly what a
run of that length would have; Hägele et al. 2024, arXiv 2405.18392). Each run evaluates every set at step 0
(the start model) and at its end; the last row of its metrics gives the point (share, tokens, bits per byte).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tokenmill.checkpoints import checkpoint_dirs


@dataclass(frozen=True)
class Budget:
    steps: int          # the branch's max_steps
    decay_start: int    # its first decay step: where it leaves the stable run


def budgets(fractions: list[float], target_steps: int, decay_fraction: float) -> list[Budget]:
    """Each fraction of the target's steps as a WSD run (max_steps, decay start); the stable run keeps a
    checkpoint every `checkpoint_interval` steps, which every decay start is a multiple of."""
    def decay_start(steps: int) -> int:
        return steps - max(1, round(decay_fraction * steps))
    steps = sorted({max(2, round(f * target_steps)) for f in fractions})
    return [Budget(m, decay_start(m)) for m in steps]


def checkpoint_interval(budget_list: list[Budget]) -> int:
    return math.gcd(*[b.decay_start for b in budget_list])


def mixture_weights(varied: str, share: float, proportions: dict[str, float]) -> dict[str, float]:
    """The varied dataset at `share`, the others sharing the rest in their configured proportions."""
    others = {n: w for n, w in proportions.items() if n != varied}
    total = sum(others.values()) or 1.0
    return {varied: share, **{n: (1 - share) * w / total for n, w in others.items()}}


def final_bits_per_byte(metrics: Path) -> tuple[dict[str, float], dict[str, float]]:
    """({set: bits per byte at step 0}, {set: bits per byte at the last evaluation}) of a run's metrics."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    evals = [r for r in rows if any(k.endswith("/bits_per_byte") for k in r)]

    def of(row):
        return {k[len("val/"):-len("/bits_per_byte")]: v for k, v in row.items() if k.endswith("/bits_per_byte")}
    return of(evals[0]) if evals[0]["step"] == 0 else {}, of(evals[-1])


def branch_point(stable_dir: Path, budget: Budget) -> Path:
    """The stable run's checkpoint a branch starts from."""
    found = [d for d in checkpoint_dirs(stable_dir) if d.name == f"step-{budget.decay_start:08d}"]
    if not found:
        raise FileNotFoundError(f"{stable_dir}: no checkpoint at step {budget.decay_start} to branch from")
    return found[0]


def share_label(share: float) -> str:
    return f"share-{share:.3f}".rstrip("0").rstrip(".")


def keep_last(budget_list: list[Budget]) -> int:
    return math.ceil(budget_list[-1].steps / checkpoint_interval(budget_list)) + 1
