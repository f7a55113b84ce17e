"""train.optimizer: muon — Muon takes the hidden matrices and AdamW the rest, one schedule drives both, a run
learns and resumes exactly, and the refusals and the warning."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import straight_and_killed, tiny_pipeline
from tokenmill import train
from tokenmill.config import ConfigError, validate
from tokenmill.train.optim import MuonConfig, Optimizers, build_optimizer


def configs(corpus, **train_overrides):
    raw = tiny_pipeline(corpus)
    raw["train"].update({"optimizer": "muon", **train_overrides})
    cfg = validate(raw)
    return cfg.model, cfg.train


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from test_train_features import tiny_llama
    model = tiny_llama()
    model.config.tie_word_embeddings = False
    optimizer = build_optimizer(model, 3e-3, (0.9, 0.95), 0.1, torch.device("cpu"), embedding_lr_ratio=0.5,
                                kind="muon", muon=MuonConfig(adamw_lr_ratio=0.2))
    assert isinstance(optimizer, Optimizers) and set(optimizer.optimizers) == {"muon", "adamw"}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in optimizer.optimizers["muon"].param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in optimizer.optimizers["adamw"].param_groups for p in g["params"]]
    assert muon and all(n.startswith("model.layers.") and n.endswith("proj.weight") for n in muon)
    assert "model.embed_tokens.weight" in adamw and "model.norm.weight" in adamw
    assert "lm_head.weight" in adamw or model.config.tie_word_embeddings
    assert sorted(muon + adamw) == sorted(names.values())  # every weight, once
    assert optimizer.optimizers["muon"].param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    scales = {round(g.get("lr_scale", 1.0), 6) for g in optimizer.optimizers["adamw"].param_groups}
    assert scales == {0.2, 0.1}  # the AdamW part at 0.2, its embeddings at 0.2 x 0.5
    with pytest.raises(ValueError, match="saved with another train.optimizer"):
        optimizer.load_state_dict({"adamw": {}})


def test_a_muon_run_learns_and_resumes_exactly(shards, corpus, tmp_path, monkeypatch):
    model_cfg, train_cfg = configs(corpus, max_steps=12, save_every=6, log_every=1, eval_every=6)
    straight_and_killed(model_cfg, train_cfg, shards, tmp_path, monkeypatch, kill_at=9)
    rows = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    straight, resumed = rows("straight"), rows("resumed")
    losses = [r["train/loss"] for r in straight if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.5
    assert [(r["step"], r.get("train/loss")) for r in resumed] == [(r["step"], r.get("train/loss")) for r in straight]
    state = torch.load(tmp_path / "resumed" / "step-00000012" / "optimizer.pt", weights_only=True)
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]  # Muon's momentum buffers are kept


def test_muon_is_refused_with_fsdp_and_warns_on_a_full_cpt(shards, corpus, tmp_path, capsys):
    raw = tiny_pipeline(corpus)
    raw["train"].update(optimizer="muon", parallel="fsdp")
    with pytest.raises(ConfigError, match="muon orthogonalizes each whole matrix, and FSDP shards them"):
        validate(raw)
    from test_train_features import base_model_dir
    base = base_model_dir(tmp_path, shards)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base)}
    raw["train"].update(optimizer="muon", max_steps=2, warmup_steps=1, eval_every=0, save_every=0)
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "cpt")
    assert "Muon on every weight of a base trained with AdamW is reported to do worse" in capsys.readouterr().out
