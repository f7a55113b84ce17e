"""Recipes resolve into ordinary train and mixture values: the paper's defaults, the user's values winning,
the stage switch where the recipe says, and clear errors for what must be given."""

import pytest
import yaml

from tokenmill.config import ConfigError, dump_config, validate
from tokenmill.train.mixture import stage_start_step
from tokenmill.train.schedule import SCHEDULES, wsd_decay_start

DATASETS = {"general": {"paths": ["g/"]}, "domain": {"paths": ["d/"]}}


def cpt(**train):
    return validate({"recipe": "cpt", "datasets": DATASETS, "model": {"init_from": "models/base"},
                     "train": {"lr_max": 4.5e-5, "max_steps": 1000, **train}})


def test_cpt_recipe_values_and_the_switch_at_a_fifth_of_the_lr():
    cfg = cpt()
    t = cfg.train
    assert (t.schedule, t.warmup_steps, t.lr_max) == ("cosine", 0, 4.5e-5)
    assert t.lr_min == pytest.approx(4.5e-7)
    first, second = cfg.mixture.stages
    assert first.weights == {"general": 0.5, "domain": 0.5} and first.start is None
    assert second.weights == pytest.approx({"general": 0.2, "domain": 0.8})
    switch = stage_start_step(second.start, t.max_steps, 1, t.warmup_steps,
                              lambda s: SCHEDULES[t.schedule](s, t), t.lr_max)
    assert 700 <= switch <= 720  # Parmar et al.: lr_max/5 falls at ~71% of a cosine run without warmup
    assert SCHEDULES["cosine"](switch, t) <= 0.2 * t.lr_max < SCHEDULES["cosine"](switch - 1, t)


def test_the_users_values_win_and_the_resolved_config_round_trips():
    cfg = cpt(warmup_steps=10, lr_min=1e-6)
    assert (cfg.train.warmup_steps, cfg.train.lr_min, cfg.train.schedule) == (10, 1e-6, "cosine")
    raw = {"recipe": {"name": "cpt", "domain": ["general"], "replay": [0.9, 0.1]}, "datasets": DATASETS,
           "model": {"init_from": "x"}, "train": {"lr_max": 1e-4},
           "mixture": {"stages": [{"weights": {"general": 1}}]}}
    cfg = validate(raw)
    assert [s.weights for s in cfg.mixture.stages] == [{"general": 1}]  # stages given: the recipe keeps out
    again = validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    raw.pop("mixture")
    stages = validate(raw).mixture.stages  # domain named: the other dataset is the replayed general data
    assert stages[0].weights == pytest.approx({"domain": 0.9, "general": 0.1})


def test_cpt_recipe_asks_for_what_it_cannot_guess():
    with pytest.raises(ConfigError, match=r"recipe cpt: set train.lr_max to the base model's minimum"):
        validate({"recipe": "cpt", "model": {"init_from": "x"}})
    with pytest.raises(ConfigError, match=r"set model.init_from"):
        validate({"recipe": "cpt", "model": {"preset": "tiny"}, "train": {"lr_max": 1e-4}})
    with pytest.raises(ConfigError, match=r"recipe.domain: unknown dataset\(s\) code"):
        validate({"recipe": {"name": "cpt", "domain": ["code"]}, "datasets": DATASETS,
                  "model": {"init_from": "x"}, "train": {"lr_max": 1e-4}})
    with pytest.raises(ConfigError, match=r"recipe.name"):
        validate({"recipe": "cpd"})


def test_wsd_recipe_anneals_on_the_named_data_from_the_first_decay_step():
    cfg = validate({"recipe": {"name": "wsd", "anneal": {"domain": 1.0}}, "datasets": DATASETS,
                    "model": {"preset": "tiny"}, "train": {"max_steps": 500, "warmup_steps": 20}})
    t = cfg.train
    assert (t.schedule, t.decay_fraction) == ("wsd", 0.2)
    start = cfg.mixture.stages[1].start.step
    assert start == wsd_decay_start(t) == 400
    assert SCHEDULES["wsd"](start - 1, t) == t.lr_max > SCHEDULES["wsd"](start, t)
    assert cfg.mixture.stages[1].weights == {"domain": 1.0}
    assert cfg.mixture.stages[0].weights == {"general": 1.0, "domain": 1.0}


def test_recipe_over_datasets_named_on_the_command_line(tmp_path):
    from tokenmill.config import load_config
    path = tmp_path / "cpt.yaml"
    path.write_text(yaml.safe_dump({"recipe": "cpt", "model": {"init_from": "x"}, "train": {"lr_max": 3e-4}}))
    cfg = load_config(path, dataset_names=["web", "code"])
    assert cfg.mixture.stages[1].weights == pytest.approx({"web": 0.2, "code": 0.8})
    assert load_config(path).mixture.stages == []  # one unnamed dataset: the recipe is its schedule
