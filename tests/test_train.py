import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from safetensors.torch import load_model

from conftest import Crash, crash_at_step, tiny_pipeline
from tokenmill import export, train
from tokenmill.config import validate
from tokenmill.tokenize.shards import open_split
from tokenmill.checkpoints import checkpoint_dirs
from tokenmill.train.data import WindowSampler


def configs(corpus, **train_overrides):
    raw = tiny_pipeline(corpus)
    raw["train"].update(train_overrides)
    cfg = validate(raw)
    return cfg.model, cfg.train


def losses(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r.get("train/loss", r.get("val/val/loss"))) for r in rows]


def test_training_lowers_the_loss_and_keeps_the_last_checkpoints(shards, corpus, tmp_path):
    model_cfg, train_cfg = configs(corpus, max_steps=30, save_every=6, keep_last=2)
    counts = train.run(model_cfg, train_cfg, shards, tmp_path / "ck")
    rows = [r for r in losses(tmp_path / "ck" / "metrics.jsonl") if r[1] is not None]
    assert rows[-1][1] < rows[0][1] - 1.0, rows
    assert counts["steps"] == 30 and counts["tokens"] == 30 * 32 * 4
    assert [p.name for p in checkpoint_dirs(tmp_path / "ck")] == ["step-00000024", "step-00000030"]
    assert AutoTokenizer.from_pretrained(tmp_path / "ck" / "final").eos_token == "<|endoftext|>"


def test_resume_after_a_crash_continues_exactly(shards, corpus, tmp_path, monkeypatch):
    model_cfg, train_cfg = configs(corpus, max_steps=12, save_every=6, log_every=1, eval_every=3)
    train.run(model_cfg, train_cfg, shards, tmp_path / "straight")

    crash_at_step(monkeypatch, 9)  # after the step-6 checkpoint, before the next one
    with pytest.raises(Crash):
        train.run(model_cfg, train_cfg, shards, tmp_path / "resumed")
    monkeypatch.undo()
    assert checkpoint_dirs(tmp_path / "resumed")[-1].name == "step-00000006"
    train.run(model_cfg, train_cfg, shards, tmp_path / "resumed")

    straight, resumed = losses(tmp_path / "straight" / "metrics.jsonl"), losses(tmp_path / "resumed" / "metrics.jsonl")
    assert [r[0] for r in resumed] == [r[0] for r in straight]
    for a, b in zip(straight, resumed):
        assert a == pytest.approx(b, rel=1e-6), (a, b)


def test_ranks_split_the_global_batch(shards):
    split = open_split(shards / "train")
    whole = WindowSampler(split, seq_len=16, micro_batch_size=4, seed=3)
    ranks = [WindowSampler(split, seq_len=16, micro_batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        batch = whole.next_batch()
        parts = [s.next_batch()["input_ids"] for s in ranks]
        # rank r takes every world_size-th window of the same global order
        assert torch.equal(batch["input_ids"][0::2], parts[0]) and torch.equal(batch["input_ids"][1::2], parts[1])
        assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_sampler_refuses_a_checkpoint_from_other_data(shards):
    split = open_split(shards / "train")
    state = WindowSampler(split, 16, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="other data"):
        WindowSampler(split, 8, 2, seed=0).load_state_dict(state)


def test_export_gives_the_same_logits_as_the_trained_weights(shards, corpus, tmp_path):
    model_cfg, train_cfg = configs(corpus, max_steps=6, save_every=6)
    train.run(model_cfg, train_cfg, shards, tmp_path / "ck")
    last = checkpoint_dirs(tmp_path / "ck")[-1]
    trained = LlamaForCausalLM(LlamaConfig.from_pretrained(last))
    load_model(trained, str(last / "model.safetensors"))

    export.run(export.ExportConfig(), tmp_path / "ck", tmp_path / "hf")
    export.run(export.ExportConfig(), last, tmp_path / "hf_from_checkpoint")
    ids = torch.from_numpy(open_split(shards / "val")[0].tokens[:32].astype(np.int64))[None]
    with torch.no_grad():
        expected = trained.eval()(ids).logits
        for folder in ("hf", "hf_from_checkpoint"):
            exported = AutoModelForCausalLM.from_pretrained(tmp_path / folder).eval()
            torch.testing.assert_close(exported(ids).logits, expected, rtol=0, atol=0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.decode(tok("The king was brave.").input_ids) == "The king was brave."


def test_kill_9_then_resume_equals_an_uninterrupted_run(shards, corpus, tmp_path):
    """A real SIGKILL in the middle of training; started again, the run continues exactly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=300, save_every=25, log_every=25, eval_every=100, keep_last=3, loggers=["jsonl"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "straight")

    argv = [sys.executable, "-m", "tokenmill", "train", str(shards), "-o", str(tmp_path / "killed"), "--config", str(config)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint_dirs(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -9
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it was killed"
    assert subprocess.run(argv, capture_output=True).returncode == 0

    straight, resumed = losses(tmp_path / "straight" / "metrics.jsonl"), losses(tmp_path / "killed" / "metrics.jsonl")
    assert [r[0] for r in resumed] == [r[0] for r in straight]
    for a, b in zip(straight, resumed):
        assert a == pytest.approx(b, rel=1e-6), (a, b)


def test_activation_checkpointing_changes_memory_not_math(shards, corpus, tmp_path):
    results = {}
    for flag in (False, True):
        model_cfg, train_cfg = configs(corpus, max_steps=5, log_every=1, eval_every=5, activation_checkpointing=flag)
        train.run(model_cfg, train_cfg, shards, tmp_path / str(flag))
        results[flag] = losses(tmp_path / str(flag) / "metrics.jsonl")
    for a, b in zip(results[False], results[True]):
        assert a == pytest.approx(b, rel=1e-5)


def test_resume_from_a_named_checkpoint_into_another_folder_and_no_resume(shards, corpus, tmp_path, capsys):
    import yaml
    from tokenmill.cli import main
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=8, save_every=4, keep_last=2, log_every=1, eval_every=4)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    common = [str(shards), "--config", str(config)]
    assert main(["train", *common, "-o", str(tmp_path / "a")]) == 0
    step4 = tmp_path / "a" / "step-00000004"
    assert main(["train", *common, "-o", str(tmp_path / "b"), "--resume-from", str(step4)]) == 0
    a, b = losses(tmp_path / "a" / "metrics.jsonl"), losses(tmp_path / "b" / "metrics.jsonl")
    tail = [r for r in a if r[0] > 4]
    assert [s for s, _ in b] == [s for s, _ in tail] == [5, 6, 7, 8, 8]
    assert [v for _, v in b] == pytest.approx([v for _, v in tail], rel=1e-6)

    # A changed config (more steps) continues from the named checkpoint in its own folder, not from scratch.
    assert main(["train", *common, "-o", str(tmp_path / "a"), "--resume-from", str(tmp_path / "a" / "step-00000008"),
                 "--set", "train.max_steps=10"]) == 0
    assert [s for s, _ in losses(tmp_path / "a" / "metrics.jsonl")][-3:] == [9, 10, 10]
    capsys.readouterr()
    assert main(["train", *common, "-o", str(tmp_path / "a"), "--resume-from", str(step4)]) == 2
    assert "step-00000004" in capsys.readouterr().err  # gone: keep_last=2 kept steps 8 and 10
    assert main(["train", *common, "-o", str(tmp_path / "a"), "--resume-from", str(tmp_path / "a" / "step-00000008"),
                 "--set", "train.max_steps=12"]) == 2
    assert "holds checkpoints after step-00000008 (step-00000010)" in capsys.readouterr().err
    assert main(["train", *common, "-o", str(tmp_path / "a"), "--no-resume"]) == 2
    assert "--no-resume starts only in an empty folder" in capsys.readouterr().err
    assert main(["train", *common, "-o", str(tmp_path / "c"), "--no-resume"]) == 0
    assert [v for _, v in losses(tmp_path / "c" / "metrics.jsonl")] == pytest.approx([v for _, v in a], rel=1e-6)
