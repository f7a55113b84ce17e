import re
from pathlib import Path

import pytest
import yaml

from tokenmill.config import BUILTIN_CONFIGS, ConfigError, load_config, validate


@pytest.mark.parametrize("path", sorted(BUILTIN_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    from tokenmill.ingest import input_files
    cfg = load_config(path)
    sources = [ds.ingest_config() for ds in cfg.datasets.values()] or [cfg.ingest]
    for source in sources:
        assert input_files(source), "a shipped config's data is installed with tokenmill"


def test_one_message_lists_every_problem():
    raw = {
        "train": {"lr_max": "fast", "bogus_key": 1},
        "tokenize": {"val_fraction": 1.0},
        "filters": {},
        "filter": {"steps": [{"name": "no_such_filter"}]},
    }
    with pytest.raises(ConfigError) as err:
        validate(raw, "bad.yaml")
    message = str(err.value)
    assert "bad.yaml" in message
    for expected in ["train.lr_max", "'fast'", "train.bogus_key: unknown key",
                     "tokenize.val_fraction", "filters: unknown section", "no_such_filter", "gopher_quality"]:
        assert expected in message, expected
    assert len(err.value.problems) == 5


def test_cross_section_check_names_both_keys():
    with pytest.raises(ConfigError, match=r"train.seq_len: 1024 exceeds model max_position_embeddings 512"):
        validate({"model": {"preset": "tiny"}, "train": {"seq_len": 1024}})
    with pytest.raises(ConfigError, match="unknown preset"):
        validate({"model": {"preset": "70b"}})


def test_set_overrides_are_typed_and_validated(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr_max": 1e-3}}))
    cfg = load_config(path, ["train.lr_max=3e-4", "model.preset=small", "train.schedule=wsd"])
    assert cfg.train.lr_max == pytest.approx(3e-4) and cfg.model.preset == "small" and cfg.train.schedule == "wsd"
    with pytest.raises(ConfigError, match="train.schedule"):
        load_config(path, ["train.schedule=exponential"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["train.lr_max"])


def test_impossible_values_are_refused():
    with pytest.raises(ConfigError) as err:
        validate({"train": {"lr_min": 1.0, "lr_max": 0.1, "warmup_steps": 10, "max_steps": 5}})
    assert "lr_min (1.0) is above lr_max (0.1)" in str(err.value)
    assert "warmup_steps (10) must be below max_steps (5)" in str(err.value)


def test_the_readme_configs_are_valid():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        validate(yaml.safe_load(block))


def test_a_small_lr_max_does_not_trip_over_the_default_lr_min():
    assert validate({"train": {"lr_max": 2e-4}}).train.lr_min == pytest.approx(2e-5)
    assert validate({}).train.lr_min == 3e-4
    with pytest.raises(ConfigError, match=r"lr_min \(0.0003\) is above lr_max \(0.0002\)"):
        validate({"train": {"lr_max": 2e-4, "lr_min": 3e-4}})
