"""Data mixtures and curricula: named datasets in set proportions that change across stages.

    mixture:
      stages:
        - {weights: {general: 0.8, domain: 0.2}}
        - {weights: {general: 0.2, domain: 0.8}, start: {lr_below: 0.2}}   # or {step: S}, {tokens: N}, {fraction: F}
      max_epochs: 4                                                        # or {domain: 8, general: 1}

The plan is solved before training (`solve_plan`, written to plan.json): stage boundaries as exact
optimizer steps (an `lr_below` start from the schedule, a pure function of the step), the sequences and
tokens each dataset gives and the epochs that implies; a dataset that would repeat more than its
`max_epochs` stops the run before it starts. Weights are in tokens (every sequence has seq_len tokens)
and normalised.

Exactness: each optimizer step's global batch of B sequences gives dataset i either floor(B p_i) or
floor(B p_i) + 1 sequences (within one sequence of its share); the +1s go to the datasets furthest
behind their cumulative target (Megatron's deficit rule, at the batch level), so the running totals stay
within a sequence or two of the target at every step. The batch is then shuffled, and ranks take
interleaved slots, so the global batch is the same for any number of ranks. Each dataset has one cursor
for the whole run (a later stage continues where an earlier one stopped) and visits its windows in an
order fixed by (seed, dataset, epoch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from pydantic import Field, model_validator

from tokenmill.schema import StrictModel
from tokenmill.train.data import Windows, document_positions


class StageStart(StrictModel):
    step: int | None = Field(None, ge=0, description="at this optimizer step")
    tokens: int | None = Field(None, ge=0, description="after this many training tokens")
    fraction: float | None = Field(None, ge=0, le=1, description="at this share of train.max_steps")
    lr_below: float | None = Field(None, gt=0, le=1, description="at the first step after warmup whose learning "
                                                                 "rate is at most this x lr_max")

    @model_validator(mode="after")
    def _one(self):
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of step, tokens, fraction, lr_below (got {given or 'none'})")
        return self


class MixtureStage(StrictModel):
    weights: dict[str, float] = Field(description="dataset name: share of the stage's tokens (normalised)")
    start: StageStart | None = Field(None, description="when the stage starts; the first starts at step 0")

    @model_validator(mode="after")
    def _weights(self):
        if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return self


class MixtureConfig(StrictModel):
    stages: list[MixtureStage] = Field(default_factory=list, description="curriculum stages, in order")
    max_epochs: float | dict[str, float] = Field(4.0, description="most passes over a dataset (one number or "
                                                                  "per dataset); Muennighoff et al. 2023: ~4 "
                                                                  "epochs are nearly as good as new data")

    @model_validator(mode="after")
    def _stages(self):
        if self.stages and self.stages[0].start not in (None, StageStart(step=0)):
            raise ValueError("the first stage starts at step 0: leave out its start")
        if any(stage.start is None for stage in self.stages[1:]):
            raise ValueError("every stage after the first needs a start: {step|tokens|fraction|lr_below: ...}")
        return self

    def epoch_cap(self, name: str) -> float:
        return self.max_epochs if isinstance(self.max_epochs, (int, float)) else self.max_epochs.get(name, 4.0)


@dataclass
class Plan:
    datasets: list[str]
    stage_starts: list[int]           # optimizer step at which each stage starts
    weights: list[list[float]]        # per stage, per dataset, normalised
    batch_sequences: int              # sequences per optimizer step (all ranks, all micro-steps)
    max_steps: int
    sequences: dict[str, int]         # drawn over the whole run
    windows: dict[str, int]           # sequences each dataset holds
    seq_len: int

    def stage_at(self, step: int) -> int:
        return int(np.searchsorted(self.stage_starts, step, side="right")) - 1

    def to_json(self) -> dict:
        tokens = {n: s * self.seq_len for n, s in self.sequences.items()}
        epochs = {n: s / self.windows[n] for n, s in self.sequences.items()}
        stages = [{"start_step": start, "weights": dict(zip(self.datasets, w))}
                  for start, w in zip(self.stage_starts, self.weights)]
        return {**asdict(self), "stages": stages, "tokens": tokens, "epochs": epochs}


def stage_start_step(start: StageStart | None, max_steps: int, tokens_per_step: int, warmup_steps: int,
                     lr_at, lr_max: float) -> int:
    if start is None:
        return 0
    if start.step is not None:
        return start.step
    if start.tokens is not None:
        return math.ceil(start.tokens / tokens_per_step)
    if start.fraction is not None:
        return round(start.fraction * max_steps)
    threshold = start.lr_below * lr_max
    return next((s for s in range(warmup_steps, max_steps) if lr_at(s) <= threshold * (1 + 1e-12)), max_steps)


def solve_plan(cfg: MixtureConfig, windows: dict[str, int], seq_len: int, batch_sequences: int, max_steps: int,
               warmup_steps: int, lr_at, lr_max: float) -> Plan:
    names = list(windows)
    stages = cfg.stages or [MixtureStage(weights={n: 1.0 for n in names})]
    problems = [f"mixture.stages[{i}].weights: unknown dataset {n!r} (datasets: {', '.join(names)})"
                for i, s in enumerate(stages) for n in s.weights if n not in windows]
    if problems:
        raise ValueError("; ".join(problems))
    starts = [stage_start_step(s.start, max_steps, batch_sequences * seq_len, warmup_steps, lr_at, lr_max)
              for s in stages]
    if starts != sorted(starts):
        raise ValueError(f"mixture stages start at steps {starts}: they must be in order")
    weights = [[s.weights.get(n, 0.0) / sum(s.weights.values()) for n in names] for s in stages]
    plan = Plan(names, starts, weights, batch_sequences, max_steps, {}, dict(windows), seq_len)
    counts = np.zeros(len(names), dtype=np.int64)
    for step in range(max_steps):
        counts += allocate(plan, step, counts)
    plan.sequences = dict(zip(names, counts.tolist()))
    _check_epochs(cfg, plan)
    return plan


def _check_epochs(cfg: MixtureConfig, plan: Plan) -> None:
    problems = []
    for name, drawn in plan.sequences.items():
        epochs, cap = drawn / plan.windows[name], cfg.epoch_cap(name)
        if epochs > cap:
            problems.append(f"dataset {name!r} would be read {epochs:.2f} times ({drawn:,} sequences of its "
                            f"{plan.windows[name]:,}), above mixture.max_epochs {cap}")
    if problems:
        raise ValueError("; ".join(problems) + ". Lower its weights, add data, lower train.max_steps, or raise "
                                               "mixture.max_epochs")


def allocate(plan: Plan, step: int, counts: np.ndarray) -> np.ndarray:
    """Sequences each dataset gives to the batch of `step`, given the counts drawn before it in the run:
    floor(B p_i) each, and the leftover slots to the datasets furthest behind their target."""
    stage = plan.stage_at(step)
    p = np.asarray(plan.weights[stage])
    start = plan.stage_starts[stage]
    base = np.floor(plan.batch_sequences * p + 1e-9).astype(np.int64)
    leftover = plan.batch_sequences - int(base.sum())
    # Deficit against the stage's own target: counts drawn in this stage so far vs (steps done + 1) x B x p.
    drawn_in_stage = counts - _counts_at(plan, start)
    deficit = (step - start + 1) * plan.batch_sequences * p - (drawn_in_stage + base)
    deficit[p == 0] = -np.inf
    for i in np.argsort(-deficit, kind="stable")[:leftover]:
        base[i] += 1
    return base


def _counts_at(plan: Plan, step: int) -> np.ndarray:
    """Counts drawn before `step` (memoised per stage start: the only steps asked for)."""
    memo = plan.__dict__.setdefault("_memo", {0: np.zeros(len(plan.datasets), dtype=np.int64)})
    if step not in memo:
        known = max(s for s in memo if s < step)
        counts = memo[known].copy()
        for s in range(known, step):
            counts += allocate(plan, s, counts)
        memo[step] = counts
    return memo[step]


class MixtureSampler:
    """Micro-batches for one rank from several datasets, following a plan; its position checkpoints."""

    def __init__(self, datasets: dict[str, Windows], plan: Plan, micro_batch_size: int, accum_steps: int,
                 seed: int, rank: int = 0, world_size: int = 1, mask_documents_at: int | None = None):
        self.windows, self.plan = [datasets[n] for n in plan.datasets], plan
        self.micro_batch_size, self.accum_steps, self.seed = micro_batch_size, accum_steps, seed
        self.rank, self.world_size, self.mask_documents_at = rank, world_size, mask_documents_at
        assert micro_batch_size * accum_steps * world_size == plan.batch_sequences
        self.step, self.micro = 0, 0
        self.counts = np.zeros(len(plan.datasets), dtype=np.int64)
        self._slots: list[tuple[int, int]] = []
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _order(self, dataset: int, epoch: int) -> np.ndarray:
        key = (dataset, epoch)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != dataset}  # one epoch kept each
            self._orders[key] = np.random.default_rng([self.seed, dataset, epoch]).permutation(self.windows[dataset].n)
        return self._orders[key]

    def _window(self, dataset: int, position: int) -> np.ndarray:
        n = self.windows[dataset].n
        return self.windows[dataset][int(self._order(dataset, position // n)[position % n])]

    def _plan_step(self) -> None:
        """The shuffled (dataset, position) slots of this optimizer step's global batch."""
        take = allocate(self.plan, self.step, self.counts)
        slots = [(i, int(self.counts[i]) + j) for i in range(len(take)) for j in range(int(take[i]))]
        order = np.random.default_rng([self.seed, 1 << 20, self.step]).permutation(len(slots))
        self._slots = [slots[k] for k in order]
        self.counts += take

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.micro == 0:
            self._plan_step()
        per_micro = self.micro_batch_size * self.world_size
        mine = self._slots[self.micro * per_micro:(self.micro + 1) * per_micro][self.rank::self.world_size]
        self.micro += 1
        if self.micro == self.accum_steps:
            self.step, self.micro = self.step + 1, 0
        windows = torch.from_numpy(np.stack([self._window(d, p) for d, p in mine]).astype(np.int64))
        batch = {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}
        if self.mask_documents_at is not None:
            batch.update(document_positions(batch["input_ids"], self.mask_documents_at))
        return batch

    def metrics(self) -> dict:
        """data/NAME/tokens (cumulative, drawn so far) and data/stage."""
        step = self.step - (1 if self.micro == 0 and self.step else 0)
        return {"data/stage": self.plan.stage_at(max(step, 0)),
                **{f"data/{n}/tokens": int(c) * self.plan.seq_len for n, c in zip(self.plan.datasets, self.counts)}}

    def state_dict(self) -> dict:
        return {"kind": "mixture", "step": self.step, "micro": self.micro, "counts": self.counts.tolist(),
                "seed": self.seed, "datasets": self.plan.datasets, "windows": [w.n for w in self.windows],
                "stage_starts": self.plan.stage_starts, "weights": self.plan.weights}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "mixture" or state["datasets"] != self.plan.datasets \
                or state["windows"] != [w.n for w in self.windows] or state["seed"] != self.seed:
            raise ValueError("the checkpoint was taken on other datasets (names, sizes or seed differ); "
                             "cannot resume exactly")
        # Stages that started before the checkpoint decided batches already drawn: they must not change.
        past = [(s, w) for s, w in zip(state["stage_starts"], state["weights"]) if s < state["step"]]
        now = [(s, w) for s, w in zip(self.plan.stage_starts, self.plan.weights) if s < state["step"]]
        if [(s, np.round(w, 12).tolist()) for s, w in past] != [(s, np.round(w, 12).tolist()) for s, w in now]:
            raise ValueError(f"the mixture's past stages changed since the checkpoint at step {state['step']} "
                             f"(was {past}, now {now}); only stages that start after it may change. Restore "
                             "them, or start a new run (--force)")
        self.step, self.micro, self.counts = state["step"], state["micro"], np.asarray(state["counts"], dtype=np.int64)
