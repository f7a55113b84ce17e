"""Data mixtures and curricula: exact shares per batch and per stage, stage switches from the schedule,
the epoch cap, rank independence, and resume inside either stage."""

import json

import numpy as np
import pytest

from conftest import Crash, crash_at_step, tiny_pipeline, write_corpus
from tokenmill import train
from tokenmill.cli import main
from tokenmill.config import validate
from tokenmill.ingest import IngestConfig
from tokenmill.ingest import run as ingest
from tokenmill.tokenize import TokenizeConfig
from tokenmill.tokenize import run as tokenize
from tokenmill.checkpoints import checkpoint_dirs
from tokenmill.train.config import TrainConfig
from tokenmill.train.data import Windows
from tokenmill.train.mixture import MixtureConfig, MixtureSampler, allocate, solve_plan
from tokenmill.train.schedule import cosine


def mixture(*stages, max_epochs=1000.0):
    return MixtureConfig.model_validate({"stages": list(stages), "max_epochs": max_epochs})


def test_every_batch_carries_each_share_within_one_sequence():
    cfg = mixture({"weights": {"web": 7, "code": 2, "math": 1}},
                  {"weights": {"web": 0.5, "code": 0.3, "math": 0.2}, "start": {"step": 50}})
    plan = solve_plan(cfg, {"web": 10**6, "code": 10**6, "math": 10**6}, 16, 12, 120, 0, lambda s: 1.0, 1.0)
    counts = np.zeros((1, 3), dtype=np.int64)  # one row: one sequence length
    for step in range(120):
        p = np.array(plan.weights[plan.stage_at(step)])
        take = allocate(plan, step, counts)
        assert take.sum() == 12 and np.all(np.abs(take - 12 * p) < 1), (step, take)
        counts[0] += take
        start = plan.stage_starts[plan.stage_at(step)]
        drawn = counts[0] - (0 if start == 0 else plan_counts(plan, start))
        assert np.all(np.abs(drawn - (step - start + 1) * 12 * p) < 2), (step, drawn)
    assert plan.sequences == {name: {16: int(c)} for name, c in zip(["web", "code", "math"], counts[0])}
    # Stage 1 gives 50 x 12 sequences at 0.7/0.2/0.1 exactly, to the sequence.
    assert plan_counts(plan, 50).tolist() == [420, 120, 60]


def plan_counts(plan, step):
    counts = np.zeros((1, len(plan.datasets)), dtype=np.int64)
    for s in range(step):
        counts[0] += allocate(plan, s, counts)
    return counts[0]


@pytest.mark.parametrize("start, expected", [({"step": 300}, 300), ({"tokens": 64 * 8 * 250}, 250),
                                             ({"fraction": 0.25}, 250)])
def test_stage_switch_steps(start, expected):
    cfg = mixture({"weights": {"a": 1}}, {"weights": {"b": 1}, "start": start})
    plan = solve_plan(cfg, {"a": 10**5, "b": 10**5}, 64, 8, 1000, 0, lambda s: 1.0, 1.0)
    assert plan.stage_starts == [0, expected]


def test_lr_below_start_is_solved_from_the_schedule():
    # Parmar et al.'s schedule: cosine from lr_max to lr_max/100, no warmup; lr_max/5 falls at 71.1% of the run.
    t = TrainConfig(max_steps=1000, lr_max=4.5e-5, lr_min=4.5e-7, warmup_steps=0, schedule="cosine")
    cfg = mixture({"weights": {"a": 1}}, {"weights": {"b": 1}, "start": {"lr_below": 0.2}})
    plan = solve_plan(cfg, {"a": 10**5, "b": 10**5}, 64, 8, 1000, 0, lambda s: cosine(s, t), t.lr_max)
    switch = plan.stage_starts[1]
    assert cosine(switch, t) <= 0.2 * t.lr_max < cosine(switch - 1, t)
    assert switch / 1000 == pytest.approx(0.711, abs=0.002)


def test_a_dataset_read_too_often_stops_the_plan_with_the_numbers():
    cfg = mixture({"weights": {"big": 1, "small": 1}}, max_epochs={"small": 2, "big": 4})
    with pytest.raises(ValueError, match=r"'small' would be read 5.00 times \(500 sequences of its 100\), above "
                                         r"mixture.max_epochs 2"):
        solve_plan(cfg, {"big": 10**4, "small": 100}, 8, 10, 100, 0, lambda s: 1.0, 1.0)


def test_unknown_dataset_and_stage_order_are_errors():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        solve_plan(mixture({"weights": {"nope": 1}}), {"a": 100}, 8, 4, 10, 0, lambda s: 1.0, 1.0)
    with pytest.raises(ValueError, match="every stage after the first needs a start"):
        mixture({"weights": {"a": 1}}, {"weights": {"a": 1}})


class FakeShard:
    def __init__(self, n_tokens, offset):
        self.tokens = np.arange(offset, offset + n_tokens, dtype=np.int64)


def test_the_global_batch_does_not_depend_on_the_number_of_ranks():
    windows = {"a": Windows([FakeShard(4000, 0)], 8), "b": Windows([FakeShard(4000, 10**6)], 8)}
    plan = solve_plan(mixture({"weights": {"a": 3, "b": 1}}), {n: w.n for n, w in windows.items()}, 8, 8, 20, 0,
                      lambda s: 1.0, 1.0)
    one = MixtureSampler(windows, plan, micro_batch_size=4, accum_steps=2, seed=1)
    two = [MixtureSampler(windows, plan, micro_batch_size=2, accum_steps=2, seed=1, rank=r, world_size=2)
           for r in range(2)]
    for _ in range(10):
        single = one.next_batch()["input_ids"]
        ranks = [s.next_batch()["input_ids"] for s in two]
        merged = sorted(map(tuple, np.concatenate(ranks).tolist()))
        assert merged == sorted(map(tuple, single.tolist()))
    assert one.metrics() == two[0].metrics()


@pytest.fixture
def two_datasets(tmp_path):
    """Two tokenize outputs with one tokenizer: 'general' trains the BPE, 'domain' reuses it."""
    out = {}
    for name, seed, n in (("general", 0, 40), ("domain", 7, 20)):
        corpus = write_corpus(tmp_path / f"corpus_{name}", n_docs=n, seed=seed)
        ingest(IngestConfig(paths=[str(corpus)]), tmp_path / f"docs_{name}")
        tok = {"tokenizer": str(out["general"] / "tokenizer")} if out else {"vocab_size": 320}
        tokenize(TokenizeConfig(val_fraction=0.15, **tok), tmp_path / f"docs_{name}", tmp_path / f"shards_{name}")
        out[name] = tmp_path / f"shards_{name}"
    return out


def mix_config(corpus_dir, second_weights=None, **train):
    raw = tiny_pipeline(corpus_dir)
    raw["train"].update(max_steps=12, save_every=4, log_every=1, eval_every=4, warmup_steps=0, **train)
    raw["mixture"] = {"stages": [{"weights": {"general": 0.75, "domain": 0.25}},
                                 {"weights": second_weights or {"general": 0.25, "domain": 0.75},
                                  "start": {"step": 6}}], "max_epochs": 50}
    return validate(raw)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mixture_training_logs_tokens_per_dataset_and_writes_the_plan(two_datasets, tmp_path):
    cfg = mix_config(tmp_path / "corpus_general")
    train.run(cfg.model, cfg.train, two_datasets, tmp_path / "ck", mixture=cfg.mixture)
    plan = json.loads((tmp_path / "ck" / "plan.json").read_text())
    assert [s["start_step"] for s in plan["stages"]] == [0, 6]
    rows = read_rows(tmp_path / "ck" / "metrics.jsonl")
    by_step = {r["step"]: r for r in rows if "data/stage" in r}
    # 4 sequences a step: 3 + 1 in stage 0, 1 + 3 in stage 1; 32 tokens each.
    assert by_step[6]["data/general/tokens"] == 6 * 3 * 32 and by_step[6]["data/stage"] == 0
    assert by_step[12]["data/domain/tokens"] == (6 * 1 + 6 * 3) * 32 and by_step[12]["data/stage"] == 1
    assert plan["tokens"] == {"general": by_step[12]["data/general/tokens"], "domain": by_step[12]["data/domain/tokens"]}
    assert {"val/general/loss", "val/domain/loss"} <= {k for r in rows for k in r}  # each dataset's val split


@pytest.mark.parametrize("crash_at, last_checkpoint", [(3, None), (10, "step-00000008")])
def test_resume_inside_either_stage_equals_a_straight_run(two_datasets, tmp_path, monkeypatch, crash_at,
                                                          last_checkpoint):
    cfg = mix_config(tmp_path / "corpus_general")
    cfg.train.save_every = 2 if last_checkpoint is None else 4
    train.run(cfg.model, cfg.train, two_datasets, tmp_path / "straight", mixture=cfg.mixture)

    crash_at_step(monkeypatch, crash_at)
    with pytest.raises(Crash):
        train.run(cfg.model, cfg.train, two_datasets, tmp_path / "resumed", mixture=cfg.mixture)
    monkeypatch.undo()
    assert checkpoint_dirs(tmp_path / "resumed")[-1].name == (last_checkpoint or "step-00000002")
    train.run(cfg.model, cfg.train, two_datasets, tmp_path / "resumed", mixture=cfg.mixture)
    straight, resumed = read_rows(tmp_path / "straight" / "metrics.jsonl"), read_rows(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    for a, b in zip(straight, resumed):
        for key in a:
            if key.startswith(("train/loss", "val/", "data/")):
                assert a[key] == pytest.approx(b[key], rel=1e-6), (key, a["step"])


def test_a_changed_past_stage_is_refused_a_changed_future_stage_is_not(two_datasets, tmp_path, capsys,
                                                                       monkeypatch):
    import yaml
    raw = mix_config(tmp_path / "corpus_general").model_dump(mode="json")
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump(raw))
    args = ["train", f"general={two_datasets['general']}", f"domain={two_datasets['domain']}", "-o",
            str(tmp_path / "ck"), "--config", str(config)]

    crash_at_step(monkeypatch, 9)  # after the step-8 checkpoint
    with pytest.raises(Crash):
        main(args)
    monkeypatch.undo()
    # Stage 1 started at step 6, before the step-8 checkpoint: changing its weights is refused.
    raw["mixture"]["stages"][1]["weights"] = {"general": 0.5, "domain": 0.5}
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(args) == 2
    assert "past stages changed" in capsys.readouterr().err
    # A stage that starts after the checkpoint may change: training resumes at step 8 and ends at 12.
    raw["mixture"]["stages"][1]["weights"] = {"general": 0.25, "domain": 0.75}
    raw["mixture"]["stages"].append({"weights": {"domain": 1.0}, "start": {"step": 10}})
    config.write_text(yaml.safe_dump(raw))
    assert main(args) == 0
    rows = read_rows(tmp_path / "ck" / "metrics.jsonl")
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 13))
    last = [r for r in rows if "data/stage" in r][-1]
    assert last["step"] == 12 and last["data/stage"] == 2
    assert last["data/domain/tokens"] == (6 * 1 + 4 * 3 + 2 * 4) * 32


def test_a_long_context_stage_has_its_own_seq_len_and_the_same_tokens_per_step(two_datasets, tmp_path, monkeypatch):
    """Stage 1 at 64 tokens (train.seq_len 32): micro-batches of 2 sequences instead of 4, the same 128 tokens
    per optimizer step; the plan, the batches and a resume across the switch all know it."""
    raw = mix_config(tmp_path / "corpus_general").model_dump(mode="json")
    raw["mixture"]["stages"][1]["seq_len"] = 64
    cfg = validate(raw)
    shapes = []
    from tokenmill.losses import next_token_loss
    import tokenmill.train.trainer as train_module

    def recording_loss(model, batch, **kw):
        if model.training:  # a training micro-step, not an evaluation
            shapes.append(tuple(batch["input_ids"].shape))
        return next_token_loss(model, batch, **kw)
    monkeypatch.setattr(train_module, "next_token_loss", recording_loss)
    train.run(cfg.model, cfg.train, two_datasets, tmp_path / "straight", mixture=cfg.mixture)
    monkeypatch.undo()
    plan = json.loads((tmp_path / "straight" / "plan.json").read_text())
    assert [s["seq_len"] for s in plan["stages"]] == [32, 64] and plan["batch_sequences"] == [4, 2]
    assert shapes == [(4, 32)] * 6 + [(2, 64)] * 6
    rows = [r for r in read_rows(tmp_path / "straight" / "metrics.jsonl") if "data/stage" in r]
    assert all(r["data/general/tokens"] + r["data/domain/tokens"] == r["step"] * 128 for r in rows)
    assert plan["tokens"] == {"general": rows[-1]["data/general/tokens"], "domain": rows[-1]["data/domain/tokens"]}

    crash_at_step(monkeypatch, 10)  # after the step-8 checkpoint, inside the 64-token stage
    with pytest.raises(Crash):
        train.run(cfg.model, cfg.train, two_datasets, tmp_path / "resumed", mixture=cfg.mixture)
    monkeypatch.undo()
    train.run(cfg.model, cfg.train, two_datasets, tmp_path / "resumed", mixture=cfg.mixture)
    straight, resumed = read_rows(tmp_path / "straight" / "metrics.jsonl"), read_rows(tmp_path / "resumed" / "metrics.jsonl")
    def losses(rows):
        return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert [s for s, _ in losses(resumed)] == list(range(1, 13))
    assert [loss for _, loss in losses(resumed)] == pytest.approx([loss for _, loss in losses(straight)], rel=1e-6)

    raw["mixture"]["stages"][1]["seq_len"] = 48  # 4 x 32 = 128 tokens per micro-batch: not whole 48s
    bad = validate(raw)
    with pytest.raises(ValueError, match=r"stages\[1\].seq_len 48: each micro-batch holds"):
        train.run(bad.model, bad.train, two_datasets, tmp_path / "bad", mixture=bad.mixture)
