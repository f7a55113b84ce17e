"""`tokenmill estimate`: exact counts against built models, the memory parts moving the way each option
moves them, time and cost arithmetic, and the CLI's JSON."""

import json

import pytest
import torch

from conftest import tiny_pipeline
from tokenmill.cli import main
from tokenmill.config import validate
from tokenmill.estimate import estimate
from tokenmill.model import build_model, count_parameters
from tokenmill.train import perf


def config(corpus, **train):
    raw = tiny_pipeline(corpus)
    raw["train"].update(train)
    return validate(raw)


def test_counts_equal_the_built_model(corpus):
    cfg = config(corpus)
    e = estimate(cfg, "cpu")
    model = build_model(cfg.model, cfg.tokenize.vocab_size, 0)
    assert e["params"] == count_parameters(model)
    assert e["flops_per_token"] == perf.flops_per_token(model, cfg.train.seq_len)
    assert e["tokens_per_step"] == cfg.train.seq_len * cfg.train.micro_batch_size


def test_lora_trainable_count_equals_peft(corpus):
    from tokenmill.model.lora import apply_lora
    raw = tiny_pipeline(corpus)
    raw["model"]["lora"] = {"r": 4}
    raw["model"]["embeddings"] = {"train": "none"}
    cfg = validate(raw)
    e = estimate(cfg, "cpu")
    model = apply_lora(build_model(cfg.model, cfg.tokenize.vocab_size, 0), cfg.model.lora, train_embeddings=False)
    assert e["params_trainable"] == count_parameters(model, trainable=True)
    full = estimate(config(corpus), "cpu")["memory_breakdown_gib"]
    assert e["memory_breakdown_gib"]["optimizer"] == pytest.approx(8 * e["params_trainable"] / 2**30)
    assert e["memory_breakdown_gib"]["optimizer"] < full["optimizer"]


def test_each_option_moves_its_memory_part(corpus):
    base = estimate(config(corpus, micro_batch_size=8), "8xH100")
    parts = base["memory_breakdown_gib"]
    ckpt = estimate(config(corpus, micro_batch_size=8, activation_checkpointing=True), "8xH100")
    assert ckpt["memory_breakdown_gib"]["activations"] < parts["activations"]
    assert ckpt["step_time_s"] == pytest.approx(base["step_time_s"] * 4 / 3)  # the recomputed forward
    fsdp = estimate(config(corpus, micro_batch_size=8, parallel="fsdp"), "8xH100")["memory_breakdown_gib"]
    assert fsdp["optimizer"] == pytest.approx(parts["optimizer"] / 8) and "fsdp_buffers" in fsdp
    unchunked = estimate(config(corpus, micro_batch_size=8, loss_chunk_tokens=None), "8xH100")
    assert unchunked["memory_breakdown_gib"]["loss"] > parts["loss"]
    assert parts["weights"] == pytest.approx(6 * base["params"] / 2**30, rel=1e-3)  # fp32 master + bf16 copy
    from tokenmill.train.optim import build_optimizer
    muon_cfg = config(corpus, micro_batch_size=8, optimizer="muon", ema=0.999)
    muon = estimate(muon_cfg, "8xH100")["memory_breakdown_gib"]
    optimizer = build_optimizer(build_model(muon_cfg.model, muon_cfg.tokenize.vocab_size, 0), 1e-3, (0.9, 0.95), 0.1,
                                torch.device("cpu"), kind="muon")
    hidden = sum(p.numel() for g in optimizer.optimizers["muon"].param_groups for p in g["params"])
    assert muon["optimizer"] == pytest.approx(parts["optimizer"] - 4 * hidden / 2**30)  # one moment, not two
    assert muon["ema"] == pytest.approx(4 * base["params"] / 2**30) and "ema" not in parts


def test_time_and_cost_arithmetic_and_the_json(corpus, tmp_path, capsys):
    import yaml
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline(corpus)))
    assert main(["estimate", str(path), "--gpus", "4xA100", "--price-per-gpu-hour", "2", "--mfu", "0.5", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert {"params", "flops_per_token", "memory_gib_per_device", "step_time_s", "total_time_s", "cost_usd"} <= set(e)
    assert e["step_time_s"] == pytest.approx(e["flops_per_token"] * e["tokens_per_step"] / (4 * 312e12 * 0.5))
    assert e["cost_usd"] == pytest.approx(e["total_time_s"] / 3600 * 4 * 2)
    assert main(["estimate", str(path), "--gpus", "2xB999"]) == 2
    assert "unknown device 'B999'" in capsys.readouterr().err


def test_the_estimate_knows_each_mixture_stage_length(corpus):
    raw = tiny_pipeline(corpus)
    raw.pop("ingest")
    raw["datasets"] = {"general": {"paths": [str(corpus)]}, "long": {"paths": [str(corpus)]}}
    raw["mixture"] = {"stages": [{"weights": {"general": 1}},
                                 {"weights": {"long": 1}, "start": {"fraction": 0.9}, "seq_len": 64}]}
    e = estimate(validate(raw), "cpu")
    assert e["stage_seq_lens"] == [32, 64]
    flops = e["flops_per_token_by_seq_len"]
    assert flops[32] == e["flops_per_token"] and flops[64] - flops[32] == 12 * 2 * 32 * 32  # attention grows


def test_a_cpu_step_is_timed_on_the_runs_own_shape_once_and_kept(corpus, tmp_path, monkeypatch):
    """On a CPU the step time comes from the run's own model, a micro-batch of its shape forward and backward
    through the trainer's loss, plus an AdamW step; the figure is kept per shape and read
    back (no second measurement); another shape is measured anew; an explicit --mfu keeps the peak model."""
    from tokenmill.estimate import cpu_step
    monkeypatch.setattr(cpu_step, "CACHE", tmp_path / "cpu_steps.json")
    cfg = config(corpus, micro_batch_size=2, grad_accum_steps=3)
    e = estimate(cfg, "cpu")
    m = e["step_time_measured"]
    assert m["micro_batch_s"] > 0 and m["optimizer_s"] > 0 and m["timed"] == "2 layers"  # the whole model
    assert e["step_time_s"] == pytest.approx(3 * m["micro_batch_s"] + m["optimizer_s"])
    assert e["mfu"] == pytest.approx(e["flops_per_token"] * e["tokens_per_step"] / (e["devices"]["peak_flops"] * e["step_time_s"]))

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr(cpu_step, "_micro_batch_seconds", no_measuring)
    assert estimate(cfg, "cpu")["step_time_measured"] == m  # kept
    with pytest.raises(AssertionError, match="measured again"):
        estimate(config(corpus, micro_batch_size=4, grad_accum_steps=3), "cpu")  # another shape
    assert estimate(cfg, "cpu", mfu=0.5)["step_time_measured"] is None
