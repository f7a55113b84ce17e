"""The `plan:` section: which dataset's share to vary, at which budgets, to optimise what, under which limit."""

from __future__ import annotations

from pydantic import Field, model_validator

from tokenmill.engine import SlurmConfig
from tokenmill.schema import StrictModel

LAW_PARAMETERS = 6           # D-CPT with the model size fixed: E, B, η, β, C, γ
MIN_POINTS = LAW_PARAMETERS + 3  # and a leave-one-out check worth the name
LADDER_PARAMETERS = 5        # Chinchilla's L(N, D): E, A, α, B, β
MIN_PROXY_STEPS = 10


class PlanObjective(StrictModel):
    set: str = Field(description="the evaluation set whose bits per byte the share should lower (the domain)")


class PlanConstraint(StrictModel):
    set: str = Field(description="the evaluation set that must not forget too much (general text)")
    max_rise_bits_per_byte: float | None = Field(None, gt=0, description="its largest allowed rise over the start "
                                                                          "model, in bits per byte")
    max_rise_relative: float | None = Field(None, gt=0, description="or as a share of the start model's value")

    @model_validator(mode="after")
    def _one(self):
        if (self.max_rise_bits_per_byte is None) == (self.max_rise_relative is None):
            raise ValueError("give one of max_rise_bits_per_byte and max_rise_relative")
        return self

    def allowed_rise(self, base: float) -> float:
        return self.max_rise_bits_per_byte if self.max_rise_bits_per_byte is not None else self.max_rise_relative * base


class PlanConfig(StrictModel):
    sizes: list[str | dict[str, int]] = Field(default_factory=list, description="from scratch: a ladder of model "
                                             "sizes (presets, or model keys such as {hidden_size: 64, "
                                             "num_hidden_layers: 2}) whose proxies fit L(N, D) and predict the target")
    shares: dict[str, list[float]] = Field(default_factory=dict, description="the dataset whose share of the mixture "
                                           "varies, and the shares the proxies run (the other datasets share the "
                                           "rest in the mixture's proportions)")
    budgets: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2],
                                 description="proxy lengths as fractions of the target's train.max_steps; one WSD run "
                                             "per share to the largest, cooldown branches for the others")
    match_repetition: bool = Field(True, description="when the target would read the varied dataset more than once, "
                                   "the proxies read only the share of it (their largest budget) that they repeat as "
                                   "often; false: they read all of it (docs/plan.md measures both)")
    decay_fraction: float = Field(0.2, gt=0, lt=1, description="the proxies' WSD decay, a share of each one's steps")
    objective: PlanObjective | None = None
    constraint: PlanConstraint | None = None
    resamples: int = Field(100, ge=10, description="bootstrap refits for the prediction intervals")
    gpus: str = Field("cpu", description="what the cost is estimated on (tokenmill estimate's --gpus: 8xH100, cpu)")
    price_per_gpu_hour: float | None = Field(None, gt=0, description="USD per device-hour, for the cost")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="tokenmill plan --submit: each proxy task's "
                               "and the fit's resources (a GPU each: sbatch_args: {gres: 'gpu:1'})")
    parallel: int | None = Field(None, gt=0, description="tokenmill plan --submit: proxy tasks running at once (the "
                                                         "array's %N); None: as many as the cluster gives")

    @model_validator(mode="after")
    def _check(self):
        if self.sizes:
            return self._check_ladder()
        problems = []
        if len(self.shares) != 1:
            problems.append("shares: name exactly one dataset to vary, e.g. {domain: [0.5, 0.7, 0.85, 0.95, 1.0]}")
        for name, values in self.shares.items():
            outside = [v for v in values if not 0 <= v <= 1]
            if outside:
                problems.append(f"shares.{name}: {outside} outside [0, 1]")
            if len(set(values)) < 3:
                problems.append(f"shares.{name}: at least 3 different shares (got {len(set(values))})")
        if any(not 0 < b <= 1 for b in self.budgets) or len(set(self.budgets)) < 2:
            problems.append(f"budgets: at least 2 different fractions in (0, 1] (got {self.budgets})")
        points = len(set(next(iter(self.shares.values()), []))) * len(set(self.budgets))
        if self.shares and points < MIN_POINTS:
            problems.append(f"{points} proxy points (shares x budgets) are too few: the law has {LAW_PARAMETERS} "
                            f"parameters, and a fit with a leave-one-out check needs at least {MIN_POINTS}")
        if self.objective is None or self.constraint is None:
            problems.append("give an objective {set: NAME} and a constraint {set: NAME, max_rise_bits_per_byte: X}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _check_ladder(self):
        problems = []
        if self.shares or self.constraint:
            problems.append("sizes (a from-scratch ladder) and shares/constraint (a mixture) are two plans: give one")
        if len(self.sizes) < 3:
            problems.append(f"sizes: at least 3 model sizes (got {len(self.sizes)})")
        if any(not 0 < b <= 1 for b in self.budgets) or len(set(self.budgets)) < 2:
            problems.append(f"budgets: at least 2 different fractions in (0, 1] (got {self.budgets})")
        points = len(self.sizes) * len(set(self.budgets))
        if points < LADDER_PARAMETERS + 3:
            problems.append(f"{points} proxy points (sizes x budgets) are too few: L(N, D) has {LADDER_PARAMETERS} "
                            f"parameters, and a fit with a leave-one-out check needs at least {LADDER_PARAMETERS + 3}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def varied(self) -> str:
        return next(iter(self.shares))

    @property
    def share_values(self) -> list[float]:
        return sorted(set(self.shares[self.varied]))

    @property
    def groups(self) -> list:
        """What one proxy task trains (its stable run and cooldown branches): a share, or a size of the ladder."""
        return list(self.sizes) if self.sizes else self.share_values
