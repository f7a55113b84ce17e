"""Throughput accounting: one FLOP count for the trainer and the estimate (frozen weights cost 4 FLOPs per
token, trained ones 6), and a tokens/s window that leaves evaluation and checkpoint time out, not its steps."""

import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import tiny_pipeline
from tokenmill.config import validate
from tokenmill.estimate import estimate
from tokenmill.model import build_model
from tokenmill.model.lora import apply_lora
from tokenmill.train import perf
from tokenmill.train.loop import LoopSettings, train


@pytest.mark.parametrize("embeddings", ["none", "all"])
@pytest.mark.parametrize("tied", [True, False])
def test_the_estimate_counts_the_flops_of_the_model_the_trainer_builds(corpus, embeddings, tied):
    raw = tiny_pipeline(corpus)
    raw["model"].update(lora={"r": 4}, embeddings={"train": embeddings}, tie_word_embeddings=tied)
    cfg = validate(raw)
    model = apply_lora(build_model(cfg.model, cfg.tokenize.vocab_size, 0), cfg.model.lora, embeddings != "none")
    assert estimate(cfg, "cpu")["flops_per_token"] == perf.flops_per_token(model, cfg.train.seq_len)
    full = validate(tiny_pipeline(corpus) | {"model": {**tiny_pipeline(corpus)["model"], "tie_word_embeddings": tied}})
    assert estimate(cfg, "cpu")["flops_per_token"] < estimate(full, "cpu")["flops_per_token"]


def test_frozen_weights_cost_four_flops_a_trained_one_six_and_a_lookup_none():
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    lookup, head = model.get_input_embeddings().weight.numel(), model.get_output_embeddings().weight.numel()
    everything = sum(p.numel() for p in model.parameters())
    attention = 12 * 1 * 16 * 8
    assert perf.flops_per_token(model, 8) == 6 * (everything - lookup) + attention
    model.requires_grad_(False)
    assert perf.flops_per_token(model, 8) == 4 * (everything - lookup) + attention
    model.lm_head.weight.requires_grad_(True)
    assert perf.flops_per_token(model, 8) == 4 * (everything - lookup - head) + 6 * head + attention


class Recorder:
    def __init__(self):
        self.rows = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append(metrics)


def logged_rate(eval_every: int) -> float:
    """tokens/s over an 8-step log window, with an evaluation that takes 0.3 s every `eval_every` steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = {"x": torch.randn(32, 64)}

    def loss_fn(m, b):
        time.sleep(0.02)  # a step of known length
        return m(b["x"]).square().mean()

    def slow_evaluation(m):
        time.sleep(0.3)
        return {"val": 1.0}

    sink = Recorder()
    loop = LoopSettings(max_steps=8, grad_accum_steps=1, grad_clip=1.0, log_every=8, eval_every=eval_every,
                        save_every=0, tokens_per_step=1000)
    train(model, optimizer, lambda step: 0.01, lambda: batch, slow_evaluation, sink, lambda state: None, loop,
          {"step": 0, "tokens": 0}, torch.device("cpu"), loss_fn)
    return next(row["perf/tokens_per_s"] for row in sink.rows if "perf/tokens_per_s" in row)


def test_tokens_per_second_leaves_evaluation_time_out_but_keeps_the_window_steps():
    # Each step sleeps 0.02 s for 1000 tokens: no honest rate exceeds 50,000 tokens/s (a busy machine only
    # lowers it). Evaluating every 2 steps of an 8-step window once reset the clock and kept all 8 steps: 4x.
    ceiling = 1000 / 0.02
    without, with_evaluations = logged_rate(eval_every=0), logged_rate(eval_every=2)
    assert without <= ceiling and with_evaluations <= ceiling
    assert with_evaluations > 0.3 * without  # the evaluations' 0.3 s each are left out of the window
