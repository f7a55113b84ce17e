"""From proxy points to an answer: a law per evaluation set, its errors, and the share to pay for.

The recommended share r* is the one with the lowest predicted objective (the domain set's bits per byte at the
target budget) among the shares whose predicted constraint set (a general set) rises at most `max_rise` above
the start model's, searched on a 0.01 grid within the shares the proxies ran (never extrapolated in r). A fit
whose leave-one-out error is larger than the margin the decision needs is reported as poor, with no
recommendation: the constraint set's error must stay under half the allowed rise. The same limit holds for its
budget hold-out (the largest proxy budget predicted from the smaller ones: what the target needs most, a law
that carries in tokens). The objective law only orders the shares; when its errors pass 2% the share stands
and its predicted value is marked as not reliable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenmill.plan import laws

GRID_STEP = 0.01
OBJECTIVE_LOO_LIMIT = 0.02
# How far beyond its longest proxy a constraint law that rises with tokens is trusted. Continued pre-training's
# general loss often rises and then recovers (the stability gap: Guo et al. 2024, arXiv 2406.14833); proxies
# that end inside the rise extrapolate it. Measured (docs/plan.md): cpt-demo's general law carried 3.3x out to
# within 1.2%; 22x out it predicted a rise of 0.30-0.45 bits/byte where the runs rose 0.00-0.03.
RISING_LAW_REACH = 4.0


@dataclass
class SetFit:
    """One evaluation set's law: its parameters, leave-one-out relative errors and bootstrap refits. The law's
    share is the set's own data's share of the mixture, offset + slope x the varied share (a general set is
    fitted in the replay share 1 - r, where its forgetting steepens as the replay runs out)."""
    name: str
    theta: np.ndarray
    loo: np.ndarray
    boots: list[np.ndarray]
    offset: float = 0.0
    slope: float = 1.0
    holdout: np.ndarray | None = None  # the largest budget's points predicted from the smaller budgets alone

    def own_share(self, share):
        return self.offset + self.slope * np.asarray(share, dtype=np.float64)

    def predict(self, share, tokens) -> np.ndarray:
        return laws.predict(laws.DCPT, self.theta, self.own_share(share), tokens)

    def interval(self, share: float, tokens: float = 1.0) -> list[float]:
        draws = [float(laws.predict(laws.DCPT, t, self.own_share(share), tokens)) for t in self.boots]
        return [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]

    def loo_bits(self, values: np.ndarray) -> float:
        """Root-mean-square leave-one-out error in the set's own units (bits per byte)."""
        return float(np.sqrt(np.mean((self.loo * values) ** 2)))


def fit_set(name: str, shares, tokens, values, resamples: int = 100, seed: int = 0, offset: float = 0.0,
            slope: float = 1.0) -> SetFit:
    """The law of one set from the points (varied share, tokens, bits per byte)."""
    own = offset + slope * np.asarray(shares, dtype=np.float64)
    tokens, values = np.asarray(tokens, dtype=np.float64), np.asarray(values, dtype=np.float64)
    theta = laws.fit(laws.DCPT, own, tokens, values, seed=seed)
    return SetFit(name, theta, laws.leave_one_out(laws.DCPT, own, tokens, values, theta, seed),
                  laws.bootstrap(laws.DCPT, own, tokens, values, theta, resamples, seed), offset, slope,
                  budget_holdout(own, tokens, values, seed))


def budget_holdout(own, tokens, values, seed: int = 0) -> np.ndarray | None:
    """Relative errors of the largest budget's points predicted by a fit to the smaller budgets: how far the law
    carries in tokens, the direction the target lies in (None with fewer than three budgets)."""
    if len(set(tokens)) < 3:
        return None
    keep = tokens < tokens.max()
    theta = laws.fit(laws.DCPT, own[keep], tokens[keep], values[keep], seed=seed)
    return laws.predict(laws.DCPT, theta, own[~keep], tokens[~keep]) / values[~keep] - 1


def recommend(objective: SetFit, constraint: SetFit, constraint_values: np.ndarray, base: float, max_rise: float,
              share_range: tuple[float, float], target: float = 1.0, longest: float | None = None) -> dict:
    """The share to pay for, or why there is none. `base`: the constraint set's bits per byte at the start;
    `longest`: the longest proxy's tokens (the target's are `target`)."""
    lo, hi = share_range
    grid = np.round(np.arange(lo, hi + GRID_STEP / 2, GRID_STEP), 4)
    general = constraint.predict(grid, np.full(len(grid), target))
    domain = objective.predict(grid, np.full(len(grid), target))
    feasible = general - base <= max_rise
    loo_constraint, loo_objective = constraint.loo_bits(constraint_values), float(np.abs(objective.loo).max())
    answer = {"grid": grid.tolist(), "predicted_objective": domain.tolist(), "predicted_constraint": general.tolist(),
              "feasible": feasible.tolist(), "loo_constraint_bits": loo_constraint, "loo_objective_max": loo_objective,
              "base_constraint": base, "max_rise": max_rise}
    # The choice rests on the constraint law's level (is a share within the allowed rise?) and only on the
    # objective law's ordering of the shares. So a poor constraint law stops the recommendation; a poor objective
    # law leaves it standing and marks the objective's predicted value as not reliable.
    poor, unreliable = [], []
    if loo_constraint > max_rise / 2:
        poor.append(f"the {constraint.name} law's leave-one-out error ({loo_constraint:.4f} bits/byte) exceeds half the "
                    f"allowed rise ({max_rise / 2:.4f})")
    if loo_objective > OBJECTIVE_LOO_LIMIT:
        unreliable.append(f"its leave-one-out error ({loo_objective:.1%}) exceeds {OBJECTIVE_LOO_LIMIT:.0%}")
    # How far each law carries in tokens, the direction the target lies in: the same limits, relative. When the
    # constraint law does not carry, longer proxies would tell (`too_short`: the plan says which, and their cost).
    too_short = False
    for fit, limit, found in ((objective, OBJECTIVE_LOO_LIMIT, unreliable), (constraint, max_rise / 2 / base, poor)):
        if fit.holdout is None:
            continue
        answer[f"budget_holdout_{fit.name}"] = fit.holdout.tolist()
        error = float(np.abs(fit.holdout).max())
        if error > limit:
            too_short = too_short or found is poor
            found.append(f"{'the ' + fit.name + ' law' if found is poor else 'it'} does not carry in tokens: fitted "
                         f"without the largest proxy budget, it misses those points by up to {error:.1%} (limit "
                         f"{limit:.1%}); longer proxies (plan.budgets) would tell")
    beta = float(constraint.theta[laws.DCPT.params.index("beta")])
    if longest is not None and beta < 0 and target / longest > RISING_LAW_REACH:
        too_short = True
        poor.append(f"the {constraint.name} law rises with tokens at every share (beta {beta:.2f}) and the target lies "
                    f"{target / longest:.0f}x beyond the longest proxy: continued pre-training's general loss often "
                    "rises, then recovers (the stability gap, arXiv 2406.14833), which proxies this short cannot see; "
                    f"proxies to at least 1/{RISING_LAW_REACH:g} of the target (plan.budgets) would tell")
    answer["objective_unreliable"] = unreliable
    if poor:
        return {**answer, "share": None, "poor_fit": poor, "too_short": too_short}
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
