"""Which merge weight to keep: every candidate evaluated on the named sets, and the rule that picks one.

The rule is `tokenmill plan`'s: the most gain on the objective set among the candidates whose constraint set
rises at most the limit over the reference model. With `auto`, the grid is refined by bisection where the
constraint starts to bind, since that boundary is where the best feasible weight lies when the trade is monotone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

EMA = "ema"  # average's weight for the trainer's moving average, beside the checkpoint counts K
REFINE_STEPS = 2  # bisections between the last feasible and the first infeasible weight of the grid
# The weight at which each method returns the trained model unchanged: its figures are the trained model's.
IDENTITY = {"interpolate": 1.0, "task_arithmetic": 0.0, "average": 1}


@dataclass
class Candidate:
    weight: float | str                # α, λ, K, or EMA
    bits_per_byte: dict[str, float]
    rise: float | None = None          # constraint set, over the reference
    gain_kept: float | None = None     # share of the trained model's objective gain over the reference
    feasible: bool = True
    role: str = "candidate"            # or reference, trained

    def to_json(self) -> dict:
        return asdict(self)


def evaluate_candidates(cfg, model, tokenizer, set_weight, grid: list[float], sets: dict[str, Path], seq_len: int,
                        cache: Path, reference: Path | None, trained_dir: Path) -> list[Candidate]:
    """The reference, the trained model, and every weight of the grid (refined for auto), evaluated."""
    table = []
    if reference is not None:
        from tokenmill.model.source import load_source
        ref_model, ref_tokenizer, _ = load_source(reference)
        table.append(Candidate(0.0, _bits_per_byte(cfg, ref_model, ref_tokenizer, sets, seq_len, cache, "reference"),
                               role="reference"))
        del ref_model
    trained = Candidate(IDENTITY[cfg.method], _bits_per_byte(cfg, model, tokenizer, sets, seq_len, cache, "trained"),
                        role="trained")
    table.append(trained)

    def measure(weight: float) -> Candidate:
        if weight == IDENTITY[cfg.method]:
            return Candidate(weight, dict(trained.bits_per_byte))
        set_weight(weight)
        return Candidate(weight, _bits_per_byte(cfg, model, tokenizer, sets, seq_len, cache,
                                                f"{cfg.method} {label(cfg.method, weight)}"))

    measured = [measure(x) for x in grid]
    _score(measured, table, cfg.objective, cfg.constraint)
    if cfg.weights == "auto" and cfg.method != "average":
        for _ in range(REFINE_STEPS):
            between = _boundary(measured)
            if between is None:
                break
            measured.append(measure(round(sum(between) / 2, 6)))
            _score(measured, table, cfg.objective, cfg.constraint)
    return table + sorted(measured, key=lambda c: _order(c.weight))


def _order(weight: float | str) -> tuple[bool, float]:
    return (weight == EMA, 0.0 if weight == EMA else weight)


def _bits_per_byte(cfg, model, tokenizer, sets, seq_len, cache, label) -> dict[str, float]:
    from tokenmill.evaluation import EvalConfig, evaluate
    results, _ = evaluate(model, tokenizer, EvalConfig(max_tokens=cfg.eval_tokens), sets, seq_len, cache, label=label)
    return {name: r["bits_per_byte"] for name, r in results["sets"].items()}


def _score(measured: list[Candidate], fixed: list[Candidate], objective, constraint) -> None:
    """Each candidate's rise on the constraint set, share of the gain kept, and feasibility."""
    if objective is None or constraint is None:
        return
    reference = next((c for c in fixed if c.role == "reference"), None) or fixed[-1]
    trained = fixed[-1]
    base = reference.bits_per_byte[constraint.set]
    gain = reference.bits_per_byte[objective.set] - trained.bits_per_byte[objective.set]
    for c in [*fixed, *measured]:
        c.rise = c.bits_per_byte[constraint.set] - base
        c.feasible = c.rise <= constraint.allowed_rise(base) + 1e-12
        c.gain_kept = (reference.bits_per_byte[objective.set] - c.bits_per_byte[objective.set]) / gain if gain else None


def _boundary(measured: list[Candidate]) -> tuple[float, float] | None:
    """Two neighbouring weights, one feasible and one not, not yet closer than a bisection step apart."""
    ordered = sorted(measured, key=lambda c: _order(c.weight))
    for a, b in pairwise(ordered):
        if a.feasible != b.feasible and b.weight - a.weight > 1e-3:
            return a.weight, b.weight
    return None


def choose(table: list[Candidate], objective, constraint) -> Candidate:
    """The feasible candidate with the lowest objective bits per byte; with none feasible, the one that rises
    least (reported as such: `feasible` false)."""
    candidates = [c for c in table if c.role == "candidate"]
    if objective is None or constraint is None:
        return candidates[0]
    feasible = [c for c in candidates if c.feasible]
    if feasible:
        return min(feasible, key=lambda c: (c.bits_per_byte[objective.set], c.rise))
    return min(candidates, key=lambda c: c.rise)


def describe(record: dict) -> str:
    """The printout: every candidate's figures, the chosen one marked."""
    header, rows = table_rows(record)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [f"[merge] {record['method']}: each candidate on the evaluation sets"]
    lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    if not record["feasible"]:
        lines.append("[merge] no candidate keeps the constraint set within the limit: the one that rises least is "
                     "written; widen the limit or the weights")
    return "\n".join(lines)


SYMBOLS = {"interpolate": "α", "task_arithmetic": "λ", "average": "K"}


def label(method: str, weight: float | str) -> str:
    """A candidate as the printout, the card and the report name it: α = 0.4, K = 3, EMA."""
    return "EMA" if weight == EMA else f"{SYMBOLS[method]} = {weight:g}"


def table_rows(record: dict) -> tuple[tuple[str, ...], list[tuple]]:
    """merge.json as a table (header, rows) for the model card and the report: one row per candidate."""
    sets = list(record["candidates"][0]["bits_per_byte"])
    header = ("candidate", *(f"{s} bits/byte" for s in sets), "constraint rise", "gain kept", "")
    rows = []
    for c in record["candidates"]:
        name = c["role"] if c["role"] != "candidate" else label(record["method"], c["weight"])
        mark = "chosen" if c["role"] == "candidate" and c["weight"] == record["chosen"] else \
            ("" if c["feasible"] else "over the limit")
        rows.append((name, *(f"{c['bits_per_byte'][s]:.4f}" for s in sets),
                     "" if c["rise"] is None else f"{c['rise']:+.4f}",
                     "" if c["gain_kept"] is None else f"{c['gain_kept']:.0%}", mark))
    return header, rows
