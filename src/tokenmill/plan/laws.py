"""Loss laws fitted to proxy runs, the way the scaling-law papers fit them.

CPT mixture (D-CPT Law, Que et al. 2024, arXiv 2406.01375, with the model size fixed):
    L(r, D) = E + B · r^η / D^β + C / (r + ε)^γ
r is the varied dataset's share of the mixture and D the training tokens (here in units of the target run's
tokens, so the target sits at D = 1). One law per evaluation set: the same form bends down in r for the
domain set (the C term) and up for a general set (the B term).

From scratch (Chinchilla's approach 3):
    L(N, D) = E + A / N^α + B / D^β

Fit (Hoffmann et al. 2022; Besiroglu et al. 2024; Porian et al. 2024): parameters on a log scale where they
must be positive, the Huber loss (δ = 1e-3) of log-loss residuals, L-BFGS-B from a grid of starts, the best
kept. `bootstrap` refits on resampled points for intervals; `leave_one_out` predicts each point from a fit
without it: the error a prediction can be trusted to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

EPSILON = 0.02   # D-CPT's ε: keeps the C term finite at r = 0
HUBER_DELTA = 1e-3


@dataclass(frozen=True)
class Law:
    name: str
    params: tuple[str, ...]
    predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]   # (theta, x1, x2) -> loss
    starts: Callable[[np.random.Generator, float], np.ndarray]            # (rng, mean loss) -> initial thetas
    bounds: tuple[tuple[float | None, float | None], ...]
    gradient: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (theta, x1, x2) -> [points, params]


def _dcpt(theta, r, d):
    log_e, log_b, eta, beta, log_c, gamma = theta
    return np.exp(log_e) + np.exp(log_b) * (r + EPSILON) ** eta / d ** beta + np.exp(log_c) / (r + EPSILON) ** gamma


def _dcpt_gradient(theta, r, d):
    log_e, log_b, eta, beta, log_c, gamma = theta
    first, second = np.exp(log_b) * (r + EPSILON) ** eta / d ** beta, np.exp(log_c) / (r + EPSILON) ** gamma
    return np.column_stack([np.full_like(r, np.exp(log_e)), first, first * np.log(r + EPSILON), -first * np.log(d),
                            second, -second * np.log(r + EPSILON)])


def _dcpt_starts(rng, mean):
    n = 24
    return np.column_stack([np.log(mean * rng.uniform(0.3, 0.95, n)), np.log(mean * rng.uniform(0.01, 0.5, n)),
                            rng.uniform(-1, 3, n), rng.uniform(-0.2, 1.0, n), np.log(mean * rng.uniform(1e-3, 0.3, n)),
                            rng.uniform(0.05, 2, n)])


def _chinchilla(theta, n, d):
    log_e, log_a, alpha, log_b, beta = theta
    return np.exp(log_e) + np.exp(log_a) / n ** alpha + np.exp(log_b) / d ** beta


def _chinchilla_gradient(theta, n, d):
    log_e, log_a, alpha, log_b, beta = theta
    first, second = np.exp(log_a) / n ** alpha, np.exp(log_b) / d ** beta
    return np.column_stack([np.full_like(n, np.exp(log_e)), first, -first * np.log(n), second, -second * np.log(d)])


def _chinchilla_starts(rng, mean):
    k = 24
    return np.column_stack([np.log(mean * rng.uniform(0.2, 0.9, k)), rng.uniform(0, 10, k), rng.uniform(0.05, 0.8, k),
                            rng.uniform(0, 10, k), rng.uniform(0.05, 0.8, k)])


DCPT = Law("d-cpt", ("E", "B", "eta", "beta", "C", "gamma"), _dcpt, _dcpt_starts,
           # η < 0: a domain set (more of it, lower loss); β < 0: forgetting that grows with the tokens
           ((None, None), (None, None), (-3.0, 5.0), (-1.0, 2.0), (None, None), (0.0, 3.0)), _dcpt_gradient)
CHINCHILLA = Law("chinchilla", ("E", "A", "alpha", "B", "beta"), _chinchilla, _chinchilla_starts,
                 ((None, None), (None, None), (0.0, 2.0), (None, None), (0.0, 2.0)), _chinchilla_gradient)


def _huber(residual: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    small = np.abs(residual) <= delta
    return np.where(small, 0.5 * residual ** 2, delta * (np.abs(residual) - 0.5 * delta))


def _objective(law: Law, x1, x2, y):
    """The Huber loss of log residuals and its gradient (analytic: L-BFGS-B then needs no finite differences)."""
    log_y = np.log(y)

    def value_and_gradient(theta):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            pred = law.predict(theta, x1, x2)
            if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
                return 1e6, np.zeros(len(theta))
            residual = np.log(pred) - log_y
            slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # the Huber loss's derivative
            grad = (slope / pred) @ law.gradient(theta, x1, x2)
        if not np.all(np.isfinite(grad)):
            return 1e6, np.zeros(len(theta))
        return float(_huber(residual).sum()), grad
    return value_and_gradient


def fit(law: Law, x1: np.ndarray, x2: np.ndarray, y: np.ndarray, seed: int = 0,
        starts: np.ndarray | None = None) -> np.ndarray:
    """The parameters (theta) of the law that fit y at (x1, x2) best, from a grid of starts."""
    from scipy.optimize import minimize
    x1, x2, y = (np.asarray(v, dtype=np.float64) for v in (x1, x2, y))
    value = _objective(law, x1, x2, y)
    grid = law.starts(np.random.default_rng(seed), float(np.mean(y))) if starts is None else starts
    best, best_value = None, np.inf
    for start in grid:
        result = minimize(value, start, method="L-BFGS-B", jac=True, bounds=law.bounds)
        if result.fun < best_value:
            best, best_value = result.x, result.fun
    return best


def predict(law: Law, theta: np.ndarray, x1, x2) -> np.ndarray:
    return law.predict(theta, np.asarray(x1, dtype=np.float64), np.asarray(x2, dtype=np.float64))


def refit_starts(theta: np.ndarray, rng: np.random.Generator, n: int = 6) -> np.ndarray:
    """Starts around a fit, for refits on resampled or held-out points (cheaper than the full grid)."""
    return np.vstack([theta, theta + rng.normal(0, 0.1, (n - 1, len(theta)))])


def leave_one_out(law: Law, x1, x2, y, theta: np.ndarray, seed: int = 0) -> np.ndarray:
    """Relative error of each point predicted by a fit without it."""
    x1, x2, y = (np.asarray(v, dtype=np.float64) for v in (x1, x2, y))
    rng, errors = np.random.default_rng(seed), []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        t = fit(law, x1[keep], x2[keep], y[keep], starts=refit_starts(theta, rng))
        errors.append(float(predict(law, t, x1[i], x2[i]) / y[i] - 1))
    return np.array(errors)


def bootstrap(law: Law, x1, x2, y, theta: np.ndarray, resamples: int = 100, seed: int = 0) -> list[np.ndarray]:
    """Fits on points resampled with replacement (a resample without enough distinct points is redrawn)."""
    x1, x2, y = (np.asarray(v, dtype=np.float64) for v in (x1, x2, y))
    rng, fits = np.random.default_rng(seed), []
    while len(fits) < resamples:
        idx = rng.integers(0, len(y), len(y))
        if len(set(idx)) < len(law.params) + 1:
            continue
        fits.append(fit(law, x1[idx], x2[idx], y[idx], starts=refit_starts(theta, rng, 3)))
    return fits
