"""Learning-rate schedules: pure functions of the optimizer step, tested without a model.

Each takes (step, cfg) and returns the learning rate; warmup is linear from 0 to lr_max.
"""

from __future__ import annotations

import math
from typing import Callable


def _warmup(step: int, cfg) -> float | None:
    if step < cfg.warmup_steps:
        return cfg.lr_max * (step + 1) / cfg.warmup_steps
    return None


def _progress(step: int, cfg) -> float:
    """0 at the end of warmup, 1 at max_steps - 1."""
    span = max(1, cfg.max_steps - 1 - cfg.warmup_steps)
    return min(1.0, (step - cfg.warmup_steps) / span)


def constant(step: int, cfg) -> float:
    return _warmup(step, cfg) or cfg.lr_max


def linear(step: int, cfg) -> float:
    return _warmup(step, cfg) or cfg.lr_max + (cfg.lr_min - cfg.lr_max) * _progress(step, cfg)


def cosine(step: int, cfg) -> float:
    warm = _warmup(step, cfg)
    if warm is not None:
        return warm
    return cfg.lr_min + 0.5 * (cfg.lr_max - cfg.lr_min) * (1 + math.cos(math.pi * _progress(step, cfg)))


def wsd(step: int, cfg) -> float:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): flat at lr_max, then a linear decay over the last
    `decay_fraction` of the steps to lr_min."""
    warm = _warmup(step, cfg)
    if warm is not None:
        return warm
    decay_start = wsd_decay_start(cfg)
    decay_steps = cfg.max_steps - decay_start
    if step < decay_start:
        return cfg.lr_max
    return cfg.lr_max + (cfg.lr_min - cfg.lr_max) * min(1.0, (step - decay_start + 1) / decay_steps)


def wsd_decay_start(cfg) -> int:
    """The first step of the decay, whose learning rate is already below lr_max."""
    return cfg.max_steps - max(1, round(cfg.decay_fraction * cfg.max_steps))


SCHEDULES: dict[str, Callable[[int, object], float]] = {
    "constant": constant, "linear": linear, "cosine": cosine, "wsd": wsd}
