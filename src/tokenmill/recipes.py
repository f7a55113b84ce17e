"""Recipes: published schedules and curricula, resolved into ordinary `train` and `mixture` values.

    recipe: cpt                                   # or {name: cpt, domain: [code], replay: [0.5, 0.2]}
    recipe: {name: wsd, anneal: {books: 1.0}}     # from scratch: warmup-stable-decay, new data for the decay

A recipe fills only what the config leaves unset: any `train.*` key, or `mixture.stages`, given in the YAML
or with --set wins. The resolved values are printed, and saved wherever the config is (the run's
config.resolved.yaml, the train stage's manifest), so a run never depends on a recipe's defaults changing.

cpt, *Reuse, Don't Retrain* (Parmar et al. 2024, arXiv 2407.07263): Nemotron-4 15B, pre-trained on 8T
tokens, continued on 300B; +9% average accuracy over continuing on the pre-training data (48.9 → 56.1).
  - lr_max = the base model's *minimum* pre-training LR (theirs: 4.5e-5); asked for, never guessed.
  - no warmup (warmup variants did not help); cosine decay to lr_max / 100 (decaying to 0 was worse).
  - stage 1, a general blend (replay of general data); stage 2, the domain blend from the step where the LR
    falls to lr_max / 5 (71% of a cosine run without warmup).
  The paper's blends reweight Nemotron's own pre-training sources; with one general and one domain dataset
  tokenmill's defaults are `replay: [0.5, 0.2]`: the general data's share of stage 1 and of stage 2.

wsd (MiniCPM, Hu et al. 2024; SmolLM2): flat LR after warmup, then a linear decay over the last 10–20% of
the steps (`decay_fraction`, default 0.2). With `anneal: {NAME: weight}`, a data stage starts exactly at the
first decay step: the "anneal on high-quality data" practice.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokenmill.schema import StrictModel
from tokenmill.train.config import TrainConfig
from tokenmill.train.mixture import MixtureConfig
from tokenmill.train.schedule import wsd_decay_start


class RecipeConfig(StrictModel):
    name: Literal["none", "cpt", "wsd"] = Field("none", description="none, cpt (Parmar et al. 2024) or wsd")
    domain: list[str] | None = Field(None, description="cpt: the new domain's datasets (default: the last one); "
                                                       "the others are replayed general data")
    replay: tuple[float, float] = Field((0.5, 0.2), description="cpt: general data's share of stage 1 and stage 2")
    switch_lr_below: float = Field(0.2, gt=0, lt=1, description="cpt: stage 2 starts when lr <= this x lr_max")
    lr_min_ratio: float = Field(0.01, ge=0, lt=1, description="cpt: lr_min = this x lr_max")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of the steps spent decaying")
    anneal: dict[str, float] | None = Field(None, description="wsd: dataset weights from the first decay step")

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _shares(self):
        if not all(0 <= share <= 1 for share in self.replay):
            raise ValueError(f"replay shares must lie in [0, 1] (got {list(self.replay)})")
        return self


def expand(raw: dict, datasets: list[str]) -> dict:
    """The raw config with the recipe's values under the user's: train keys the user did not give, and
    mixture.stages when the user gave none. Raises ValueError naming the key to set."""
    recipe = RecipeConfig.model_validate(raw.get("recipe") or {})
    if recipe.name == "none":
        return raw
    user_train = dict(raw.get("train") or {})
    if recipe.name == "cpt":
        if not (raw.get("model") or {}).get("init_from"):
            raise ValueError("recipe cpt continues pre-training: set model.init_from to the base model")
        if "lr_max" not in user_train:
            raise ValueError("recipe cpt: set train.lr_max to the base model's minimum pre-training learning rate "
                             "(the LR its pre-training ended at; Parmar et al.: 4.5e-5 for Nemotron-4 15B); look "
                             "for it in the base model's paper or training config")
        defaults = {"warmup_steps": 0, "schedule": "cosine", "lr_min": user_train["lr_max"] * recipe.lr_min_ratio}
    else:
        defaults = {"schedule": "wsd", "decay_fraction": recipe.decay_fraction}
    train = {**defaults, **user_train}
    raw = {**raw, "train": train}
    mixture = dict(raw.get("mixture") or {})
    if not mixture.get("stages"):
        stages = _cpt_stages(recipe, datasets) if recipe.name == "cpt" else _wsd_stages(recipe, train, datasets)
        if stages:
            raw["mixture"] = {**mixture, "stages": stages}
    return raw


def _cpt_stages(recipe: RecipeConfig, datasets: list[str]) -> list[dict] | None:
    if len(datasets) < 2:
        return None  # one dataset: the recipe is its schedule
    domain = recipe.domain or datasets[-1:]
    unknown = [name for name in domain if name not in datasets]
    if unknown:
        raise ValueError(f"recipe.domain: unknown dataset(s) {', '.join(unknown)} (datasets: {', '.join(datasets)})")
    general = [name for name in datasets if name not in domain]
    if not general:
        raise ValueError("recipe cpt: every dataset is in recipe.domain; leave the general (replay) data out of it")

    def blend(general_share: float) -> dict[str, float]:
        return {**{n: general_share / len(general) for n in general},
                **{n: (1 - general_share) / len(domain) for n in domain}}

    return [{"weights": blend(recipe.replay[0])},
            {"weights": blend(recipe.replay[1]), "start": {"lr_below": recipe.switch_lr_below}}]


def _wsd_stages(recipe: RecipeConfig, train: dict, datasets: list[str]) -> list[dict] | None:
    if not recipe.anneal:
        return None
    unknown = [name for name in recipe.anneal if name not in datasets]
    if unknown:
        raise ValueError(f"recipe.anneal: unknown dataset(s) {', '.join(unknown)} (datasets: {', '.join(datasets) or 'none'})")
    decay_start = wsd_decay_start(TrainConfig.model_validate(train))
    return [{"weights": {n: 1.0 for n in datasets}}, {"weights": dict(recipe.anneal), "start": {"step": decay_start}}]


def describe(recipe: RecipeConfig, train: TrainConfig, mixture: MixtureConfig) -> str:
    """The resolved recipe, as the run will use it."""
    if recipe.name == "none":
        return ""
    decay = f", decaying over the last {train.decay_fraction:.0%} of steps" if train.schedule == "wsd" else ""
    lines = [f"[recipe] {recipe.name}: {train.schedule} lr {train.lr_max:g} → {train.lr_min:g}, warmup "
             f"{train.warmup_steps} steps{decay}, {train.max_steps} steps"]
    for i, stage in enumerate(mixture.stages):
        start = stage.start.model_dump(exclude_none=True) if stage.start else {"step": 0}
        total = sum(stage.weights.values())
        lines.append(f"[recipe] stage {i} from {start}: " + " ".join(f"{n} {w / total:.0%}"
                                                                      for n, w in stage.weights.items()))
    return "\n".join(lines)
