"""From proxy points to an answer: a law per evaluation set, its errors, and the share to pay for.

The recommended share r* is the one with the lowest predicted objective (the domain set's bits per byte at the
target budget) among the shares whose predicted constraint set (a general set) rises at most `max_rise` above
the start model's, searched on a 0.01 grid within the shares the proxies ran (never extrapolated in r). A fit
whose leave-one-out error is larger than the margin the decision needs is reported as poor, with no
recommendation: the constraint set's error must stay under half the allowed rise, the objective's under 2%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenmill.plan import laws

GRID_STEP = 0.01
OBJECTIVE_LOO_LIMIT = 0.02


@dataclass
class SetFit:
    """One evaluation set's law: its parameters, leave-one-out relative errors and bootstrap refits."""
    name: str
    theta: np.ndarray
    loo: np.ndarray
    boots: list[np.ndarray]

    def predict(self, share, tokens) -> np.ndarray:
        return laws.predict(laws.DCPT, self.theta, share, tokens)

    def interval(self, share: float, tokens: float = 1.0) -> list[float]:
        draws = [float(laws.predict(laws.DCPT, t, share, tokens)) for t in self.boots]
        return [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]

    def loo_bits(self, values: np.ndarray) -> float:
        """Root-mean-square leave-one-out error in the set's own units (bits per byte)."""
        return float(np.sqrt(np.mean((self.loo * values) ** 2)))


def fit_set(name: str, shares, tokens, values, resamples: int = 100, seed: int = 0) -> SetFit:
    theta = laws.fit(laws.DCPT, shares, tokens, values, seed=seed)
    return SetFit(name, theta, laws.leave_one_out(laws.DCPT, shares, tokens, values, theta, seed),
                  laws.bootstrap(laws.DCPT, shares, tokens, values, theta, resamples, seed))


def recommend(objective: SetFit, constraint: SetFit, constraint_values: np.ndarray, base: float, max_rise: float,
              share_range: tuple[float, float], target: float = 1.0) -> dict:
    """The share to pay for, or why there is none. `base`: the constraint set's bits per byte at the start."""
    lo, hi = share_range
    grid = np.round(np.arange(lo, hi + GRID_STEP / 2, GRID_STEP), 4)
    general = constraint.predict(grid, np.full(len(grid), target))
    domain = objective.predict(grid, np.full(len(grid), target))
    feasible = general - base <= max_rise
    loo_constraint, loo_objective = constraint.loo_bits(constraint_values), float(np.abs(objective.loo).max())
    answer = {"grid": grid.tolist(), "predicted_objective": domain.tolist(), "predicted_constraint": general.tolist(),
              "feasible": feasible.tolist(), "loo_constraint_bits": loo_constraint, "loo_objective_max": loo_objective,
              "base_constraint": base, "max_rise": max_rise}
    poor = []
    if loo_constraint > max_rise / 2:
        poor.append(f"the {constraint.name} law's leave-one-out error ({loo_constraint:.4f} bits/byte) exceeds half the "
                    f"allowed rise ({max_rise / 2:.4f})")
    if loo_objective > OBJECTIVE_LOO_LIMIT:
        poor.append(f"the {objective.name} law's leave-one-out error ({loo_objective:.1%}) exceeds "
                    f"{OBJECTIVE_LOO_LIMIT:.0%}")
    if poor:
        return {**answer, "share": None, "poor_fit": poor}
    if not feasible.any():
        return {**answer, "share": None, "poor_fit": [], "infeasible": f"no share in [{lo}, {hi}] keeps "
                f"{constraint.name} within {max_rise} bits/byte of the start ({base:.4f}); run the proxies with "
                "lower shares, or allow more forgetting"}
    best = int(np.flatnonzero(feasible)[np.argmin(domain[feasible])])
    share = float(grid[best])
    return {**answer, "share": share, "poor_fit": [],
            "prediction": {objective.name: {"bits_per_byte": float(domain[best]), "ci": objective.interval(share, target)},
                           constraint.name: {"bits_per_byte": float(general[best]),
                                             "ci": constraint.interval(share, target)}}}
