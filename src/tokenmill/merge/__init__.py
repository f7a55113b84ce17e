"""Merge: after continued pre-training, win back what the run forgot, in weight space (`41_merge/` in a run).

    tokenmill merge runs/x --method interpolate --start HuggingFaceTB/SmolLM2-135M-Instruct \
        --sets domain=docs/ general=books/ --objective domain --constraint general:0.02 -o merged/

Methods (each weight a candidate from a list, or `auto`):
- interpolate (WiSE-FT, arXiv 2109.01903): θ = (1 − α)·θ_start + α·θ_trained.
- task_arithmetic (the chat vector, arXiv 2310.04799): θ_trained + λ·(θ_instruct − θ_base), for a base that
  was continued and its instruct sibling; the same bytes as mergekit's task_arithmetic.
- average: the mean of the run's last K checkpoints (Megatron-LM#5114: merged stable-phase checkpoints in
  place of a decay), or `ema`, the moving average the trainer kept (train.ema) in its newest checkpoint.
Each candidate is evaluated on the named sets (bits per byte) and the one that keeps the most of the objective
set's gain while the constraint set rises at most the limit over the reference model (the start model; the
instruct model for a chat vector) is written: an ordinary HF folder that eval, export, GGUF and serve take.
`merge.json` holds every candidate's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from tokenmill.atomic import atomic_write_json
from tokenmill.checkpoints import EMA_FILE, checkpoint_dirs
from tokenmill.merge.choose import EMA, Candidate, choose, describe, evaluate_candidates
from tokenmill.plan.config import PlanConstraint, PlanObjective
from tokenmill.schema import StrictModel

if TYPE_CHECKING:  # the weights (torch) are imported where a merge runs: tokenmill.config imports this package
    from tokenmill.merge import weights as w

AUTO_GRIDS = {"interpolate": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "task_arithmetic": [0.0, 0.25, 0.5, 0.75, 1.0]}


class MergeConfig(StrictModel):
    method: Literal["interpolate", "task_arithmetic", "average"] = Field(
        description="interpolate with the start model, add a chat vector (task_arithmetic), or average checkpoints")
    start: str | None = Field(None, description="the model training started from (default: model.init_from): "
                                                "interpolate's other end, and the reference for the limit")
    base: str | None = Field(None, description="task_arithmetic: the base model of the pair (the one trained on)")
    instruct: str | None = Field(None, description="task_arithmetic: the instruct model made from that base")
    weights: list[float] | list[int | Literal["ema"]] | Literal["auto"] = Field(
        "auto", description="α (interpolate), λ (task_arithmetic) or K, the last K checkpoints (average), or ema, "
                            "the trainer's moving average (average, with train.ema); auto: a grid refined where the "
                            "constraint starts to bind (average: every K up to those kept, and ema when kept)")
    sets: dict[str, str] = Field(default_factory=dict, description="more sets to choose on, NAME: PATH, beside the "
                                 "run's evaluation sets: e.g. held-out chats (JSONL), scored on their answers")
    objective: PlanObjective | None = Field(None, description="the set whose gain to keep (the domain)")
    constraint: PlanConstraint | None = Field(None, description="the set that must not rise over the reference "
                                                               "more than the limit (general text, chats)")
    eval_tokens: int = Field(65_536, gt=0, description="tokens per set for each candidate's evaluation")

    @model_validator(mode="after")
    def _check(self):
        problems = []
        if self.method == "task_arithmetic" and not (self.base and self.instruct):
            problems.append("task_arithmetic (a chat vector) needs both merge.base and merge.instruct: the model that "
                            "was continued and the instruct model made from it")
        several = self.weights == "auto" or len(self.weights) > 1
        if several and (self.objective is None or self.constraint is None):
            problems.append("choosing among several weights needs merge.objective {set: NAME} and merge.constraint "
                            "{set: NAME, max_rise_bits_per_byte: X}; or give one weight")
        if self.weights != "auto":
            if self.method == "average" and any(k != EMA and (not isinstance(k, int) or k < 1) for k in self.weights):
                problems.append(f"weights: average takes checkpoint counts K >= 1, or ema (got {self.weights})")
            if self.method != "average" and EMA in self.weights:
                problems.append(f"weights: ema (the trainer's moving average) is a weight of method average, not "
                                f"{self.method}")
            if not self.weights:
                problems.append("weights: give at least one, or auto")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def check_run(cfg: MergeConfig, train) -> None:
    """What a run's merge stage needs of its training, said before the run starts (the merge command reads a
    finished run, whose checkpoints are what they are)."""
    if cfg.method != "average" or cfg.weights == "auto":
        return
    if max(_counts(cfg.weights), default=0) > train.keep_last:
        raise ValueError(f"merge.weights: averaging {max(_counts(cfg.weights))} checkpoints needs train.keep_last "
                         f"at least that (it is {train.keep_last})")
    if EMA in cfg.weights and not train.ema:
        raise ValueError("merge.weights: ema is the moving average the trainer keeps with train.ema, which this "
                         "run does not set; set train.ema (e.g. 0.999) or drop ema")


def _counts(weights) -> list[int]:
    return [k for k in weights if k != EMA]


def sources(cfg: MergeConfig, trained: Path, start: str | None) -> dict[str, w.Weights]:
    """The models a merge reads, by role, checked against each other before any tensor is read."""
    from tokenmill.merge import weights as w
    from tokenmill.model.resolve import resolve_model_path
    if cfg.method == "interpolate":
        if not (cfg.start or start):
            raise ValueError("merge.start: interpolate needs the model training started from (or model.init_from)")
        return {"start": w.Weights(resolve_model_path(cfg.start or start))}
    if cfg.method == "task_arithmetic":
        return {"base": w.Weights(resolve_model_path(cfg.base)), "instruct": w.Weights(resolve_model_path(cfg.instruct))}
    kept = checkpoint_dirs(trained)
    if not kept:
        raise ValueError(f"{trained}: no checkpoints to average; average needs a run's checkpoints folder "
                         "(40_checkpoints), with train.keep_last at least the K to average")
    found = {p.name: w.Weights(p) for p in kept}
    newest = kept[-1]
    if (newest / EMA_FILE).is_file():
        found[EMA] = w.Weights(newest, moving_average=True)
    elif cfg.weights != "auto" and EMA in cfg.weights:
        raise ValueError(f"{newest}: no moving average ({EMA_FILE}) to take as the weight ema: the run was trained "
                         "without train.ema")
    return found


def checkpoints(found: dict[str, w.Weights]) -> list[w.Weights]:
    return [weights for role, weights in found.items() if role != EMA]


def candidates(cfg: MergeConfig, found: dict[str, w.Weights]) -> list[float | str]:
    if cfg.weights != "auto":
        return list(cfg.weights)
    if cfg.method == "average":
        return list(range(1, len(checkpoints(found)) + 1)) + ([EMA] if EMA in found else [])
    return AUTO_GRIDS[cfg.method]


def apply(cfg: MergeConfig, model, trained: w.Weights, found: dict[str, w.Weights], weight: float) -> None:
    """The merge at one weight, written into `model`'s parameters."""
    from tokenmill.merge import weights as w
    if cfg.method == "interpolate":
        w.interpolate(model, trained, found["start"], weight)
    elif cfg.method == "task_arithmetic":
        w.task_arithmetic(model, trained, found["base"], found["instruct"], weight)
    elif weight == EMA:
        w.average(model, [found[EMA]])
    else:
        w.average(model, checkpoints(found)[-int(weight):])


def run(cfg: MergeConfig, trained: Path, out_dir: Path, sets: dict[str, Path], seq_len: int,
        start: str | None = None) -> dict:
    """Merge the trained model (a run, its checkpoints folder or a HF folder) into out_dir: a HF folder and
    merge.json."""
    from tokenmill.merge import weights as w
    from tokenmill.model.source import load_source, resolve_source
    checkpoints_dir = Path(trained) / "40_checkpoints" if (Path(trained) / "40_checkpoints").is_dir() else Path(trained)
    found = sources(cfg, checkpoints_dir, start)
    model, tokenizer, trained_dir = load_source(trained)
    trained_weights = w.Weights(trained_dir)
    w.check_compatible(model, found)
    grid = candidates(cfg, found)
    if cfg.method == "average" and max(_counts(grid), default=0) > len(checkpoints(found)):
        raise ValueError(f"merge.weights: {max(_counts(grid))} checkpoints asked for, {checkpoints_dir} keeps "
                         f"{len(checkpoints(found))} (raise train.keep_last)")
    if sets:
        table = evaluate_candidates(cfg, model, tokenizer, lambda x: apply(cfg, model, trained_weights, found, x), grid,
                                    sets, seq_len, Path(out_dir) / "sets", _reference(cfg, found, start), trained_dir)
        chosen = choose(table, cfg.objective, cfg.constraint)
    elif len(grid) == 1:  # one weight and nothing to measure it on
        table = [chosen := Candidate(grid[0], {})]
    else:
        raise ValueError("merge: several weights to choose from and no evaluation sets to choose on; name sets")
    apply(cfg, model, trained_weights, found, chosen.weight)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {"method": cfg.method, "trained": str(resolve_source(trained)), "chosen": chosen.weight,
              "sources": {role: str(s.path) for role, s in found.items()},
              "objective": cfg.objective and cfg.objective.set, "constraint": cfg.constraint and cfg.constraint.set,
              "max_rise": _allowed_rise(cfg, table),
              "candidates": [c.to_json() for c in table], "feasible": chosen.feasible}
    if sets:
        print(describe(record), flush=True)
    atomic_write_json(Path(out_dir) / "merge.json", record)
    return {"method": cfg.method, "weight": chosen.weight, "candidates": len(table), "feasible": chosen.feasible}


def _reference(cfg: MergeConfig, found: dict[str, w.Weights], start: str | None) -> Path | None:
    """The model whose figures the constraint's rise is measured from: what the user had before training (for
    a chat vector, the instruct model); None (from scratch): the trained model itself."""
    from tokenmill.model.resolve import resolve_model_path
    if cfg.method == "interpolate":
        return found["start"].path
    if cfg.method == "task_arithmetic":
        return found["instruct"].path
    start = cfg.start or start
    return resolve_model_path(start) if start else None


def _allowed_rise(cfg: MergeConfig, table: list[Candidate]) -> float | None:
    if cfg.constraint is None or not table[0].bits_per_byte:
        return None
    return cfg.constraint.allowed_rise(table[0].bits_per_byte[cfg.constraint.set])
