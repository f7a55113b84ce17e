"""Data mixtures and curricula: named datasets in set proportions that change across stages.

    mixture:
      stages:
        - {weights: {general: 0.8, domain: 0.2}}
        - {weights: {general: 0.2, domain: 0.8}, start: {lr_below: 0.2}}   # or {step: S}, {tokens: N}, {fraction: F}
        - {weights: {long: 0.3, general: 0.7}, start: {fraction: 0.9}, seq_len: 8192}   # a long-context stage
      max_epochs: 4                                                        # or {domain: 8, general: 1}

The plan is solved before training (`solve_plan`, written to plan.json): stage boundaries as exact
optimizer steps (an `lr_below` start from the schedule, a pure function of the step), the sequences and
tokens each dataset gives and the epochs that implies; a dataset that would repeat more than its
`max_epochs` stops the run before it starts. Weights are in tokens (within a stage every sequence has the
stage's seq_len tokens) and normalised.

A stage may set its own `seq_len`: the tokens per optimizer step stay as configured, so the stage's
micro-batches hold train.micro_batch_size x train.seq_len / seq_len sequences (the accumulation steps and
ranks do not change). Each dataset keeps one cursor per sequence length.

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
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, model_validator

from tokenmill.schema import StrictModel

if TYPE_CHECKING:  # the sampler's batches are torch tensors; the config section (tokenmill.config) needs no torch
    import torch

    from tokenmill.train.data import Windows


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
    seq_len: int | None = Field(None, gt=1, description="this stage's sequence length (tokens), e.g. a final "
                                                        "long-context stage; default train.seq_len")

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
    subsample: dict[str, float] = Field(default_factory=dict, description="use only this share of a dataset's "
                                        "windows (its first ones): a short run that repeats the dataset as often "
                                        "as a long one would (tokenmill plan's proxies)")

    @model_validator(mode="after")
    def _stages(self):
        if self.stages and self.stages[0].start not in (None, StageStart(step=0)):
            raise ValueError("the first stage starts at step 0: leave out its start")
        if any(stage.start is None for stage in self.stages[1:]):
            raise ValueError("every stage after the first needs a start: {step|tokens|fraction|lr_below: ...}")
        return self

    @model_validator(mode="after")
    def _subsample(self):
        bad = {name: share for name, share in self.subsample.items() if not 0 < share <= 1}
        if bad:
            raise ValueError(f"subsample: shares must be in (0, 1] (got {bad})")
        return self

    def restrict(self, windows: dict) -> None:
        """Cut each subsampled dataset's windows ({name: {length: Windows}}) to their first share."""
        for name, share in self.subsample.items():
            for w in windows.get(name, {}).values():
                w.n = max(1, int(w.n * share))

    def epoch_cap(self, name: str) -> float:
        return self.max_epochs if isinstance(self.max_epochs, (int, float)) else self.max_epochs.get(name, 4.0)


@dataclass
class Plan:
    datasets: list[str]
    stage_starts: list[int]           # optimizer step at which each stage starts
    weights: list[list[float]]        # per stage, per dataset, normalised
    batch_sequences: list[int]        # per stage: sequences per optimizer step (all ranks, all micro-steps)
    max_steps: int
    sequences: dict[str, dict[int, int]]  # per dataset, per sequence length: drawn over the whole run
    windows: dict[str, dict[int, int]]    # per dataset, per sequence length: sequences it holds
    seq_len: int                      # train.seq_len
    stage_seq_lens: list[int]         # per stage

    @property
    def lengths(self) -> list[int]:
        """The sequence lengths of the run, each a row of the count arrays."""
        return sorted(set(self.stage_seq_lens))

    def stage_at(self, step: int) -> int:
        return int(np.searchsorted(self.stage_starts, step, side="right")) - 1

    def length_row(self, stage: int) -> int:
        return self.lengths.index(self.stage_seq_lens[stage])

    def to_json(self) -> dict:
        tokens = {n: sum(c * length for length, c in s.items()) for n, s in self.sequences.items()}
        epochs = {n: sum(c / self.windows[n][length] for length, c in s.items() if c) for n, s in self.sequences.items()}
        stages = [{"start_step": start, "weights": dict(zip(self.datasets, w)), "seq_len": length}
                  for start, w, length in zip(self.stage_starts, self.weights, self.stage_seq_lens)]
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


def stage_seq_lens(cfg: MixtureConfig, seq_len: int) -> list[int]:
    return [s.seq_len or seq_len for s in cfg.stages] or [seq_len]


def solve_plan(cfg: MixtureConfig, windows: dict[str, dict[int, int]], seq_len: int, batch_sequences: int,
               max_steps: int, warmup_steps: int, lr_at, lr_max: float, micro_batch_size: int | None = None) -> Plan:
    """`windows`: per dataset, per sequence length of the run (stage_seq_lens), the sequences it holds (one
    number: at seq_len); `batch_sequences` at train.seq_len."""
    windows = {n: w if isinstance(w, dict) else {seq_len: w} for n, w in windows.items()}
    names = list(windows)
    stages = cfg.stages or [MixtureStage(weights={n: 1.0 for n in names})]
    problems = [f"mixture.stages[{i}].weights: unknown dataset {n!r} (datasets: {', '.join(names)})"
                for i, s in enumerate(stages) for n in s.weights if n not in windows]
    lengths, step_tokens = stage_seq_lens(cfg, seq_len), batch_sequences * seq_len
    per_micro = batch_sequences // (micro_batch_size or batch_sequences)  # micro-steps x ranks
    for i, length in enumerate(lengths):
        if step_tokens % (length * per_micro):
            problems.append(f"mixture.stages[{i}].seq_len {length}: each micro-batch holds train.micro_batch_size "
                            f"x train.seq_len = {step_tokens // per_micro} tokens, not a whole number of "
                            f"{length}-token sequences; choose a seq_len that divides it")
    if problems:
        raise ValueError("; ".join(problems))
    starts = [stage_start_step(s.start, max_steps, step_tokens, warmup_steps, lr_at, lr_max) for s in stages]
    if starts != sorted(starts):
        raise ValueError(f"mixture stages start at steps {starts}: they must be in order")
    weights = [[s.weights.get(n, 0.0) / sum(s.weights.values()) for n in names] for s in stages]
    plan = Plan(names, starts, weights, [step_tokens // length for length in lengths], max_steps, {},
                {n: dict(w) for n, w in windows.items()}, seq_len, lengths)
    counts = np.zeros((len(plan.lengths), len(names)), dtype=np.int64)
    for step in range(max_steps):
        counts[plan.length_row(plan.stage_at(step))] += allocate(plan, step, counts)
    plan.sequences = {n: {length: int(counts[row, i]) for row, length in enumerate(plan.lengths)}
                      for i, n in enumerate(names)}
    _check_epochs(cfg, plan)
    return plan


def _check_epochs(cfg: MixtureConfig, plan: Plan) -> None:
    problems = []
    for name, drawn in plan.sequences.items():
        epochs, cap = plan.to_json()["epochs"][name], cfg.epoch_cap(name)
        if epochs > cap:
            several = len(plan.lengths) > 1
            held = ", ".join(f"{c:,} sequences of its {plan.windows[name][length]:,}"
                             + (f" at {length} tokens" if several else "") for length, c in drawn.items() if c)
            problems.append(f"dataset {name!r} would be read {epochs:.2f} times ({held}), above "
                            f"mixture.max_epochs {cap}")
    if problems:
        raise ValueError("; ".join(problems) + ". Lower its weights, add data, lower train.max_steps, or raise "
                                               "mixture.max_epochs")


def allocate(plan: Plan, step: int, counts: np.ndarray) -> np.ndarray:
    """Sequences each dataset gives to the batch of `step`, given the counts drawn before it in the run
    (one row per sequence length): floor(B p_i) each, and the leftover slots to the datasets furthest
    behind their target."""
    stage = plan.stage_at(step)
    p, batch, row = np.asarray(plan.weights[stage]), plan.batch_sequences[stage], plan.length_row(stage)
    start = plan.stage_starts[stage]
    base = np.floor(batch * p + 1e-9).astype(np.int64)
    leftover = batch - int(base.sum())
    # Deficit against the stage's own target: counts drawn in this stage so far vs (steps done + 1) x B x p.
    drawn_in_stage = counts[row] - _counts_at(plan, start)[row]
    deficit = (step - start + 1) * batch * p - (drawn_in_stage + base)
    deficit[p == 0] = -np.inf
    for i in np.argsort(-deficit, kind="stable")[:leftover]:
        base[i] += 1
    return base


def _counts_at(plan: Plan, step: int) -> np.ndarray:
    """Counts drawn before `step` (memoised per stage start: the only steps asked for)."""
    memo = plan.__dict__.setdefault("_memo", {0: np.zeros((len(plan.lengths), len(plan.datasets)), dtype=np.int64)})
    if step not in memo:
        known = max(s for s in memo if s < step)
        counts = memo[known].copy()
        for s in range(known, step):
            counts[plan.length_row(plan.stage_at(s))] += allocate(plan, s, counts)
        memo[step] = counts
    return memo[step]


class MixtureSampler:
    """Micro-batches for one rank from several datasets, following a plan; its position checkpoints."""

    def __init__(self, datasets: dict[str, dict[int, Windows]], plan: Plan, micro_batch_size: int, accum_steps: int,
                 seed: int, rank: int = 0, world_size: int = 1, mask_documents_at: int | None = None):
        """`datasets`: per name, its Windows at each sequence length of the plan (one Windows: at seq_len)."""
        datasets = {n: w if isinstance(w, dict) else {plan.seq_len: w} for n, w in datasets.items()}
        self.windows = [[datasets[n][length] for length in plan.lengths] for n in plan.datasets]
        self.plan, self.accum_steps, self.seed = plan, accum_steps, seed
        self.rank, self.world_size, self.mask_documents_at = rank, world_size, mask_documents_at
        # tokens per optimizer step, as the plan was solved for
        assert micro_batch_size * accum_steps * world_size * plan.seq_len == plan.batch_sequences[0] * plan.stage_seq_lens[0]
        self.step, self.micro = 0, 0
        self.counts = np.zeros((len(plan.lengths), len(plan.datasets)), dtype=np.int64)
        self._slots: list[tuple[int, int]] = []
        self._row = 0
        self._orders: dict[tuple[int, int, int], np.ndarray] = {}

    def _order(self, dataset: int, row: int, epoch: int) -> np.ndarray:
        key = (dataset, row, epoch)
        if key not in self._orders:  # one epoch kept per dataset and length
            self._orders = {k: v for k, v in self._orders.items() if k[:2] != (dataset, row)}
            # The first length keeps the seed of a run with one length, so such runs draw as they always did.
            seed = [self.seed, dataset, epoch] if row == 0 else [self.seed, dataset, epoch, self.plan.lengths[row]]
            self._orders[key] = np.random.default_rng(seed).permutation(self.windows[dataset][row].n)
        return self._orders[key]

    def _window(self, dataset: int, row: int, position: int) -> np.ndarray:
        n = self.windows[dataset][row].n
        return self.windows[dataset][row][int(self._order(dataset, row, position // n)[position % n])]

    def _plan_step(self) -> None:
        """The shuffled (dataset, position) slots of this optimizer step's global batch."""
        take = allocate(self.plan, self.step, self.counts)
        self._row = self.plan.length_row(self.plan.stage_at(self.step))
        slots = [(i, int(self.counts[self._row, i]) + j) for i in range(len(take)) for j in range(int(take[i]))]
        order = np.random.default_rng([self.seed, 1 << 20, self.step]).permutation(len(slots))
        self._slots = [slots[k] for k in order]
        self.counts[self._row] += take

    def next_batch(self) -> dict[str, torch.Tensor]:
        import torch

        from tokenmill.train.data import document_positions
        if self.micro == 0:
            self._plan_step()
        per_micro = len(self._slots) // self.accum_steps  # sequences per micro-step, all ranks: the stage's
        mine = self._slots[self.micro * per_micro:(self.micro + 1) * per_micro][self.rank::self.world_size]
        self.micro += 1
        if self.micro == self.accum_steps:
            self.step, self.micro = self.step + 1, 0
        windows = torch.from_numpy(np.stack([self._window(d, self._row, p) for d, p in mine]).astype(np.int64))
        batch = {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}
        if self.mask_documents_at is not None:
            batch.update(document_positions(batch["input_ids"], self.mask_documents_at))
        return batch

    def metrics(self) -> dict:
        """data/NAME/tokens (cumulative, drawn so far) and data/stage."""
        step = self.step - (1 if self.micro == 0 and self.step else 0)
        tokens = np.asarray(self.plan.lengths) @ self.counts
        return {"data/stage": self.plan.stage_at(max(step, 0)),
                **{f"data/{n}/tokens": int(t) for n, t in zip(self.plan.datasets, tokens)}}

    def state_dict(self) -> dict:
        return {"kind": "mixture", "step": self.step, "micro": self.micro, "seed": self.seed,
                "counts": {str(length): self.counts[row].tolist() for row, length in enumerate(self.plan.lengths)},
                "datasets": self.plan.datasets, "windows": [w[0].n for w in self.windows],
                "stage_starts": self.plan.stage_starts, "weights": self.plan.weights,
                "stage_seq_lens": self.plan.stage_seq_lens}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "mixture" or state["datasets"] != self.plan.datasets \
                or state["windows"] != [w[0].n for w in self.windows] or state["seed"] != self.seed:
            raise ValueError("the checkpoint was taken on other datasets (names, sizes or seed differ); "
                             "cannot resume exactly")
        # Stages that started before the checkpoint decided batches already drawn: they must not change.
        lengths = state.get("stage_seq_lens") or [self.plan.seq_len] * len(state["stage_starts"])
        past = [(s, w, n) for s, w, n in zip(state["stage_starts"], state["weights"], lengths) if s < state["step"]]
        now = [(s, w, n) for s, w, n in zip(self.plan.stage_starts, self.plan.weights, self.plan.stage_seq_lens)
               if s < state["step"]]
        if [(s, np.round(w, 12).tolist(), n) for s, w, n in past] != [(s, np.round(w, 12).tolist(), n) for s, w, n in now]:
            raise ValueError(f"the mixture's past stages changed since the checkpoint at step {state['step']} "
                             f"(was {past}, now {now}); only stages that start after it may change. Restore "
                             "them, or start a new run (--force)")
        counts = state["counts"]
        if isinstance(counts, list):  # a checkpoint from before per-stage lengths: all at train.seq_len
            counts = {str(self.plan.seq_len): counts}
        self.counts = np.zeros((len(self.plan.lengths), len(self.plan.datasets)), dtype=np.int64)
        for length, row_counts in counts.items():
            if int(length) not in self.plan.lengths:
                raise ValueError(f"the checkpoint drew {length}-token sequences, which no stage of this mixture uses")
            self.counts[self.plan.lengths.index(int(length))] = row_counts
        self.step, self.micro = state["step"], state["micro"]
