"""A CPU training step's time, measured on this machine rather than assumed from a matmul peak.

A CPU's speed on a model depends on the shapes: small matmuls, attention, norms, the loss and the optimizer are
memory-bound at rates no square-matmul peak predicts (the estimate read +37% and +47% on two shapes with one
MFU). So the run's own model, built as the trainer builds it (attention kernel, LoRA, frozen embeddings,
activation checkpointing) with random weights, takes a micro-batch of its shape forward and backward through
the trainer's loss, timed (best of 3 after a warm-up). Above 1B parameters, more than a CPU trains,
it is cut to one and to three decoder layers instead:

    micro-batch ≈ T(1 layer) + (layers − 1) × (T(3 layers) − T(1 layer)) / 2

(an extrapolation from one and two layers moved by 40% between two runs on this 2-core machine: the noise of
the difference is multiplied by the layer count); plus an AdamW step over the trainable parameters.
The figure is kept per shape, CPU, thread count and torch version in ~/.cache/tokenmill/cpu_steps.json, so
an estimate measures once. A 4-bit (QLoRA) base has no CPU kernels to time: its estimate keeps the peak model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

CACHE = Path(os.environ.get("TOKENMILL_CACHE", Path.home() / ".cache" / "tokenmill")) / "cpu_steps.json"
WHOLE_MODEL_PARAMS = 1_000_000_000  # up to this the whole model is timed (what a CPU can train); above, layers
OPTIMIZER_SAMPLE = 20_000_000  # parameters an AdamW step is timed on; more scale linearly (memory-bound)


def step_seconds(cfg, model_config, params: int, trainable: int, accum: int) -> dict:
    """{"micro_batch_s", "optimizer_s", "step_s"} for one optimizer step of the run on this CPU (one rank, `accum`
    micro-batches)."""
    t = cfg.train
    key = _key(cfg, model_config, trainable, accum)
    cached = _read_cache().get(key)
    if cached:
        return cached
    torch.manual_seed(0)
    layers = model_config.num_hidden_layers
    if params <= WHOLE_MODEL_PARAMS or layers <= 3:  # what a CPU trains: the whole model, timed
        micro, how = _micro_batch_seconds(_layered(cfg, model_config, layers), t), f"{layers} layers"
    else:  # a large model: one and three layers, the difference per layer (noise divided by two, not multiplied)
        one, three = (_micro_batch_seconds(_layered(cfg, model_config, n), t) for n in (1, 3))
        micro, how = one + (layers - 1) * max(three - one, 0.0) / 2, "1 and 3 layers, extrapolated"
    optimizer = _optimizer_seconds(trainable)
    result = {"micro_batch_s": micro, "optimizer_s": optimizer, "step_s": micro * accum + optimizer, "timed": how}
    _write_cache(key, result)
    return result


def _layered(cfg, model_config, layers: int):
    """The run's model with `layers` decoder layers, random weights, as train.build would set it up."""
    from transformers import AutoModelForCausalLM

    from tokenmill.model import embeddings
    from tokenmill.model.lora import apply_lora
    config = copy.deepcopy(model_config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    attention = cfg.train.attention_for(torch.device("cpu"))
    if attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    if cfg.model.lora:
        model = apply_lora(model, cfg.model.lora, train_embeddings=cfg.model.embeddings.train != "none")
    elif cfg.model.embeddings.train == "none":
        for weight in embeddings.embedding_weights(model):
            weight.requires_grad_(False)
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def _micro_batch_seconds(model, t, reps: int = 3) -> float:
    """Best of `reps` forward + backward passes of one micro-batch through the trainer's loss (after a warm-up)."""
    from tokenmill.losses import chunked_head, next_token_loss
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (t.micro_batch_size, t.seq_len + 1))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    if t.document_masking:  # packed documents: position ids restart (a document every quarter of the window)
        batch["position_ids"] = (torch.arange(t.seq_len) % max(1, t.seq_len // 4)).expand(t.micro_batch_size, -1)
    head = chunked_head(model) if t.loss_chunk_tokens else None
    best = float("inf")
    for rep in range(reps + 1):
        started = time.perf_counter()
        loss = next_token_loss(model, batch, head=head, chunk_tokens=t.loss_chunk_tokens or 1024)
        loss.backward()
        elapsed = time.perf_counter() - started
        model.zero_grad(set_to_none=True)
        if rep:  # the first pass warms caches and allocators
            best = min(best, elapsed)
    return best


def _optimizer_seconds(trainable: int) -> float:
    """An AdamW step (torch's default, foreach) over the trainable parameters, timed on up to OPTIMIZER_SAMPLE of
    them in tensors of a layer's size and scaled: it reads and writes every state once, memory-bound."""
    sample = min(trainable, OPTIMIZER_SAMPLE)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in [1_000_000] * (sample // 1_000_000) + [sample % 1_000_000] if n]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    optimizer.step()  # the states are created on the first step
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        optimizer.step()
        best = min(best, time.perf_counter() - started)
    return best * trainable / max(sample, 1)


def _key(cfg, model_config, trainable: int, accum: int) -> str:
    t = cfg.train
    shape = {"model": model_config.to_diff_dict(), "micro_batch": t.micro_batch_size, "seq_len": t.seq_len,
             "lora": cfg.model.lora.model_dump(mode="json") if cfg.model.lora else None,
             "embeddings": cfg.model.embeddings.train, "checkpointing": t.activation_checkpointing,
             "chunk": t.loss_chunk_tokens, "masking": t.document_masking, "attention": t.attention_for(torch.device("cpu")),
             "trainable": trainable, "accum": accum, "cpu": _cpu_name(), "threads": torch.get_num_threads(),
             "torch": torch.__version__}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, result: dict) -> None:
    from tokenmill.atomic import atomic_write_json
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(CACHE, {**_read_cache(), key: result})
    except OSError:
        pass  # a read-only home: measured again next time
