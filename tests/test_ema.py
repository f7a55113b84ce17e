"""train.ema: the moving average the trainer keeps, step by step as its formula says, resumed exactly, and taken
by merge (full and LoRA runs); the refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import straight_and_killed, tiny_pipeline
from tokenmill import train
from tokenmill.checkpoints import checkpoint_dirs
from tokenmill.config import ConfigError, validate
from tokenmill.merge import MergeConfig, check_run, run as merge
from tokenmill.model.source import load_source

DECAY = 0.75  # large steps of the average, so that it is far from the weights after a few steps


def configs(corpus, **train_overrides):
    raw = tiny_pipeline(corpus)
    raw["train"].update({"ema": DECAY, "log_every": 1, "eval_every": 0, **train_overrides})
    cfg = validate(raw)
    return cfg.model, cfg.train


def test_the_average_follows_its_formula_after_every_step(shards, corpus, tmp_path):
    model_cfg, train_cfg = configs(corpus, max_steps=5, save_every=1, keep_last=5)
    train.run(model_cfg, train_cfg, shards, tmp_path / "ck")
    kept = checkpoint_dirs(tmp_path / "ck")
    assert len(kept) == 5
    weights = [load_file(p / "model.safetensors") for p in kept]
    averages = [load_file(p / "ema.safetensors") for p in kept]
    # The tiny preset ties its head: the weights file stores the tensor once as lm_head.weight, the average
    # under the model's first name for it.
    stored = lambda name: name if name in weights[0] else "lm_head.weight"
    assert len(averages[0]) == len(weights[0]) and "model.embed_tokens.weight" in averages[0]
    for step in range(1, 5):  # ema_k = lerp(ema_{k-1}, θ_k, 1 − d), in float32, every weight that trains
        for name, average in averages[step].items():
            expected = torch.lerp(averages[step - 1][name], weights[step][stored(name)], 1 - DECAY)
            assert torch.equal(average, expected), (step, name)
    last = averages[-1]["model.embed_tokens.weight"]
    assert not torch.allclose(last, weights[-1]["lm_head.weight"], atol=1e-4)  # it lags the weights
    with safe_open(str(kept[-1] / "ema.safetensors"), "pt") as f:
        assert float(f.metadata()["tokenmill.ema_decay"]) == DECAY


def test_a_killed_run_resumes_the_same_average(shards, corpus, tmp_path, monkeypatch):
    model_cfg, train_cfg = configs(corpus, max_steps=8, save_every=4)
    straight_and_killed(model_cfg, train_cfg, shards, tmp_path, monkeypatch, kill_at=6)
    straight = load_file(tmp_path / "straight" / "step-00000008" / "ema.safetensors")
    resumed = load_file(tmp_path / "resumed" / "step-00000008" / "ema.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name

    other = train_cfg.model_copy(update={"ema": 0.5})  # the config check refuses this first; the file says it too
    with pytest.raises(ValueError, match="kept with train.ema 0.75, and this run has 0.5"):
        train.run(model_cfg, other, shards, tmp_path / "other",
                  resume_from=tmp_path / "straight" / "step-00000004")


def test_merge_writes_the_average_and_auto_weighs_it_beside_the_checkpoints(shards, corpus, tmp_path):
    model_cfg, train_cfg = configs(corpus, max_steps=6, save_every=3, keep_last=2)
    train.run(model_cfg, train_cfg, shards, tmp_path / "ck")
    merge(MergeConfig(method="average", weights=["ema"]), tmp_path / "ck", tmp_path / "avg", {}, 32)
    average = load_file(tmp_path / "ck" / "step-00000006" / "ema.safetensors")
    merged = load_file(tmp_path / "avg" / "model.safetensors")
    for name, tensor in merged.items():
        stored = name if name in average else "model.embed_tokens.weight"  # the tiny preset ties its head
        assert torch.equal(tensor, average[stored]), name

    sets = {"val": shards / "val"}
    record = merge(MergeConfig(method="average", objective={"set": "val"},
                               constraint={"set": "val", "max_rise_bits_per_byte": 1.0}),
                   tmp_path / "ck", tmp_path / "auto", sets, 32)
    table = json.loads((tmp_path / "auto" / "merge.json").read_text())["candidates"]
    assert [c["weight"] for c in table if c["role"] == "candidate"] == [1, 2, "ema"]
    assert record["candidates"] == len(table)


def test_a_lora_run_keeps_the_average_of_its_adapters_and_merge_puts_them_on_the_base(shards, corpus, tmp_path):
    from test_train_features import base_model_dir
    base = base_model_dir(tmp_path, shards)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base), "lora": {"r": 4, "alpha": 8}}
    raw["tokenize"]["tokenizer"] = str(base)
    raw["train"].update(max_steps=4, save_every=4, eval_every=0, ema=DECAY)
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    checkpoint = tmp_path / "ck" / "step-00000004"
    average = load_file(checkpoint / "ema.safetensors")
    assert any("lora_A" in name for name in average)  # what trains, under the checkpoint's own names
    assert set(average) < set(load_file(checkpoint / "model.safetensors"))
    assert not any("base_layer" in name for name in average)  # a frozen weight's average is itself

    # The same checkpoint with the average written in place of its adapters, loaded the ordinary way.
    by_hand = tmp_path / "by_hand"
    shutil.copytree(checkpoint, by_hand)
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    save_file({**load_file(checkpoint / "model.safetensors"), **average}, str(by_hand / "model.safetensors"), metadata)
    (by_hand / "ema.safetensors").unlink()
    shutil.copytree(tmp_path / "ck" / "final", tmp_path / "final")  # the tokenizer, found beside a checkpoint

    expected, _, _ = load_source(by_hand)
    merge(MergeConfig(method="average", weights=["ema"]), tmp_path / "ck", tmp_path / "avg", {}, 32)
    merged = load_file(tmp_path / "avg" / "model.safetensors")
    plain, _, _ = load_source(checkpoint)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           plain.state_dict()["model.layers.0.self_attn.q_proj.weight"])
    for name, tensor in expected.state_dict().items():
        if name in merged:
            assert torch.equal(merged[name], tensor), name


def test_the_refusals_come_before_training(tiny_config):
    tiny_config["train"].update(ema=0.999, parallel="fsdp")
    with pytest.raises(ConfigError, match="train.ema is kept of whole weights, and FSDP shards them"):
        validate(tiny_config)
    tiny_config["train"].update(ema=None, parallel="auto")
    cfg = validate(tiny_config)
    with pytest.raises(ValueError, match="ema is the moving average the trainer keeps with train.ema"):
        check_run(MergeConfig(method="average", weights=["ema"]), cfg.train)
    with pytest.raises(ValueError, match="ema .* is a weight of method average, not interpolate"):
        MergeConfig(method="interpolate", weights=["ema"])
    for decay in (0, 1, 1.5):
        tiny_config["train"]["ema"] = decay
        with pytest.raises(ConfigError, match="train.ema"):
            validate(tiny_config)
