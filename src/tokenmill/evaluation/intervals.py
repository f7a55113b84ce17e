"""95% intervals for every evaluation figure, and paired intervals for before → after differences.

A set's loss is a ratio over its units, Σ loss / Σ tokens. The units are documents, so that the interval
reflects how much the figure would move with other documents of the same kind; a set with fewer than
MIN_DOCUMENTS documents (one long document filling it) uses its windows instead. Accuracy's units are
questions. The interval is the percentile bootstrap (N_RESAMPLES resamples, a fixed seed, so results.json
is reproducible).

A before → after difference resamples the *same* units for both models and takes the difference each time
(the paired bootstrap): a document that is hard for one model is hard for the other, and that shared part
cancels, so the paired interval is far narrower than two separate ones. A difference whose interval
contains zero is within noise: not reported as a gain or a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES, LEVEL, SEED = 1000, 0.95, 0
MIN_DOCUMENTS = 30
_CHUNK = 50  # resamples drawn at once: memory is chunk x units


@dataclass
class Units:
    """Per-unit sums of a ratio statistic: Σ num / Σ den (loss and tokens; correct answers and questions)."""
    kind: str              # "documents", "windows" or "questions"
    keys: np.ndarray       # unit ids: a document's index in its split, a window's, a question's
    num: np.ndarray
    den: np.ndarray

    @property
    def value(self) -> float:
        return float(self.num.sum() / self.den.sum())

    def subset(self, keys: np.ndarray) -> Units:
        at = np.searchsorted(self.keys, keys)
        return Units(self.kind, keys, self.num[at], self.den[at])


def of_outcomes(correct: np.ndarray) -> Units:
    correct = np.asarray(correct, dtype=np.float64)
    return Units("questions", np.arange(len(correct)), correct, np.ones_like(correct))


def _resampled_ratios(pairs: list[Units], scales: list[float], seed: int) -> np.ndarray:
    """[resamples, len(pairs)]: each statistic on the same resampled unit indices (the units aligned)."""
    n = len(pairs[0].keys)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, N_RESAMPLES, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, N_RESAMPLES - start), n))
        out.append(np.stack([u.num[idx].sum(1) / u.den[idx].sum(1) * s for u, s in zip(pairs, scales)], axis=1))
    return np.concatenate(out)


def _percentiles(values: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return [float(lo), float(hi)]


def interval(units: Units, scale: float = 1.0, seed: int = SEED) -> list[float]:
    """[low, high] of scale x Σ num / Σ den; a single unit has no spread to resample: [value, value]."""
    if len(units.keys) < 2:
        return [units.value * scale] * 2
    return _percentiles(_resampled_ratios([units], [scale], seed)[:, 0])


def paired_difference(before: Units, after: Units, scale_before: float = 1.0, scale_after: float = 1.0,
                      seed: int = SEED) -> dict:
    """after - before (each times its scale) with its paired interval over the units both hold. Units of
    different kinds (documents against windows) cannot be paired: then the two separate intervals combine as
    independent ones (`paired: false`)."""
    difference = after.value * scale_after - before.value * scale_before
    common = np.intersect1d(before.keys, after.keys)
    if before.kind == after.kind and len(common) >= 2:
        draws = _resampled_ratios([before.subset(common), after.subset(common)], [scale_before, scale_after], seed)
        low, high = _percentiles(draws[:, 1] - draws[:, 0])
        # The draws are centred on the common units' difference; shift them onto the whole sets' difference.
        centre = after.subset(common).value * scale_after - before.subset(common).value * scale_before
        ci, paired = [low + difference - centre, high + difference - centre], True
    else:
        spread = [np.diff(interval(u, s, seed))[0] / 2 for u, s in ((before, scale_before), (after, scale_after))]
        half = float(np.hypot(*spread))
        ci, paired = [difference - half, difference + half], False
    return {"difference": difference, "ci": ci, "within_noise": ci[0] <= 0 <= ci[1], "paired": paired,
            "units": len(common) if paired else None}


def wilson(correct: int, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval of a proportion: the closed-form check of a bootstrap accuracy interval."""
    if n == 0:
        return [0.0, 1.0]
    p = correct / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [float((centre - half) / (1 + z * z / n)), float((centre + half) / (1 + z * z / n))]


def describe_change(change: dict, unit: str, digits: int = 4, lower_is_better: bool = True) -> str:
    """'-0.0312 [-0.0401, -0.0227], better' or '+0.0010 [-0.0020, +0.0041], within noise'."""
    d, (lo, hi) = change["difference"], change["ci"]
    if change["within_noise"]:
        word = "within noise"
    else:
        word = "better" if (d < 0) == lower_is_better else "worse"
    return f"{d:+.{digits}f}{' ' + unit if unit else ''} [{lo:+.{digits}f}, {hi:+.{digits}f}], {word}"
