"""`datasets:` in one run: each dataset cleaned on its own (with its own overrides), one tokenizer for all,
mixed in training, evaluated under its own name, and shown in the report."""

import json

import yaml

from conftest import tiny_pipeline, write_corpus
from tokenmill.config import validate
from tokenmill.pipeline import run_pipeline
from tokenmill.stage import read_manifest


def two_dataset_config(tmp_path) -> dict:
    raw = tiny_pipeline(write_corpus(tmp_path / "general", n_docs=40, seed=1))
    raw.pop("ingest")
    raw["datasets"] = {
        "general": {"paths": [str(tmp_path / "general")]},
        "domain": {"paths": [str(write_corpus(tmp_path / "domain", n_docs=30, seed=2))],
                   "filter": {"steps": [{"name": "length", "min_chars": 700}]}},
    }
    raw["mixture"] = {"stages": [{"weights": {"general": 0.75, "domain": 0.25}},
                                 {"weights": {"general": 0.25, "domain": 0.75}, "start": {"fraction": 0.5}}]}
    raw["train"].update(max_steps=8, eval_every=4, save_every=4, log_every=2)
    return raw


def test_named_datasets_run_end_to_end(tmp_path, capsys):
    cfg = validate(two_dataset_config(tmp_path))
    run = tmp_path / "run"
    run_pipeline(cfg, run)
    for name in ("general", "domain"):
        for folder in ("00_raw", "10_filtered", "20_dedup", "30_shards"):
            assert read_manifest(run / "datasets" / name / folder), (name, folder)
    # The domain's own filter section replaced the run's: its length threshold, not gopher_quality.
    domain_filter = read_manifest(run / "datasets" / "domain" / "10_filtered")
    assert [s["name"] for s in domain_filter["config"]["steps"]] == ["length"]
    assert [s["name"] for s in read_manifest(run / "datasets" / "general" / "10_filtered")["config"]["steps"]] \
        == ["length", "gopher_quality"]
    assert domain_filter["counts"]["docs_out"] < domain_filter["counts"]["docs_in"]
    # One tokenizer, trained on both, used by both.
    shared = (run / "30_tokenizer" / "tokenizer" / "tokenizer.json").read_text()
    for name in ("general", "domain"):
        assert (run / "datasets" / name / "30_shards" / "tokenizer" / "tokenizer.json").read_text() == shared
    plan = json.loads((run / "40_checkpoints" / "plan.json").read_text())
    assert plan["datasets"] == ["general", "domain"] and plan["stage_starts"] == [0, 4]
    results = json.loads((run / "50_eval" / "results.json").read_text())
    assert set(results["sets"]) == {"general", "domain"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "val/domain/loss" in rows[-1] and "data/domain/tokens" in next(r for r in rows if "train/loss" in r)
    page = (run / "report.html").read_text()
    assert "Dataset general" in page and "Dataset domain" in page and "Data mixture" in page
    capsys.readouterr()
    run_pipeline(cfg, run)  # nothing changed: every stage is up to date
    out = capsys.readouterr().out
    assert "running" not in out and out.count("up to date") == 2 * 4 + 1 + 3


def test_a_config_with_both_datasets_and_ingest_paths_is_refused(tmp_path):
    import pytest
    from tokenmill.config import ConfigError
    raw = two_dataset_config(tmp_path)
    raw["ingest"] = {"paths": ["x/"]}
    raw["mixture"]["stages"][0]["weights"]["books"] = 1
    with pytest.raises(ConfigError) as e:
        validate(raw)
    assert "not both" in str(e.value) and "mixture.stages[0].weights.books: no dataset of that name" in str(e.value)
    assert yaml.safe_dump(raw)  # (the raw config stays a plain mapping)
