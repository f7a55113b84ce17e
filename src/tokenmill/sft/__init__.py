"""Supervised fine-tuning: chats → a model that answers in its chat template (`42_sft/` in a run).

    tokenmill sft runs/x faq-chats.jsonl -o runs/x/42_sft --set sft.train.max_steps=200

Data: chat JSONL ({messages: [{role, content}, ...]}) or prompt/completion records, read by ingest (any source
it reads; bad records counted and named). Each conversation is rendered with the model's own chat template
(or ChatML for a model without one; chat.py, the renderer the Modelfile and serving use), packed with
per-conversation positions, and trained with the loss on assistant tokens only, full or LoRA, by the same
loop as pre-training. A held-out share of the conversations is evaluated before and after (assistant-token
loss and bits per byte): `results.json`. The model goes to final/ with its template.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from tokenmill.atomic import atomic_write_json
from tokenmill.ingest import IngestConfig
from tokenmill.model.lora import LoraConfig
from tokenmill.schema import StrictModel
from tokenmill.train.config import TrainConfig

if TYPE_CHECKING:  # torch and the packed rows are imported where fine-tuning runs: tokenmill.config reads SFTConfig
    from tokenmill.sft.data import Rows


class SFTTrainConfig(TrainConfig):
    """The train keys, with defaults for fine-tuning a trained model rather than pre-training one."""
    seq_len: int = Field(1024, gt=1, description="tokens per packed row of conversations")
    micro_batch_size: int = Field(4, gt=0, description="rows per forward pass, per rank")
    max_steps: int = Field(100, gt=0, description="optimizer steps")
    lr_max: float = Field(1e-4, gt=0)
    lr_min: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int | None = Field(25, ge=0)
    save_every: int | None = Field(50, ge=0)
    log_every: int = Field(5, gt=0)


class SFTConfig(StrictModel):
    data: IngestConfig = Field(default_factory=IngestConfig, description="the conversations (ingest keys; records "
                                                                         "are read as chats)")
    template: str = Field("auto", description="auto: the model's own chat template, ChatML when it has none; or chatml")
    held_out: float = Field(0.1, ge=0, lt=1, description="share of conversations held out for evaluation (by id)")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="a conversation longer than seq_len")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters (merged into final/) instead of all weights")
    train: SFTTrainConfig = Field(default_factory=SFTTrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _chat_records(cls, raw):
        if isinstance(raw, dict):
            data = dict(raw.get("data") or {})
            data.setdefault("records", "chat")
            raw = {**raw, "data": data}
        return raw


def ingest_chats(cfg: SFTConfig, out_dir: Path, force: bool = False) -> Path:
    """The conversations of sft.data through ingest, as a stage of their own (skipped when up to date)."""
    from tokenmill import ingest
    from tokenmill.stage import run_stage
    run_stage("sft ingest", cfg.data, ingest.input_keys(cfg.data), out_dir, lambda out: ingest.run(cfg.data, out),
              force)
    return Path(out_dir)


def assistant_loss(model, rows: Rows, batch_size: int, device, loss_fn) -> float:
    """Mean loss (nats) over the assistant tokens of the rows."""
    import torch

    from tokenmill.sft.data import IGNORE
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in rows.batch(np.arange(start, min(start + batch_size, len(rows)))).items()}
            n = int((batch["labels"] != IGNORE).sum())
            if n:
                total += loss_fn(model, batch).item() * n
                count += n
    return total / count


def prepare(cfg: SFTConfig, tokenizer, documents) -> tuple[Rows, Rows, dict]:
    """Train and held-out rows, and what happened to the conversations on the way."""
    from tokenmill.chat import use_template
    from tokenmill.sft.data import encode_all, pack
    template = use_template(tokenizer, cfg.template)
    encoded = encode_all(documents, tokenizer, cfg.train.seq_len, cfg.overlong, cfg.held_out)
    if not encoded.train:
        raise ValueError(f"no conversation left to train on ({encoded.counts}); check sft.data and sft.overlong")
    if cfg.held_out and not encoded.held_out:
        raise ValueError(f"sft.held_out {cfg.held_out}: no conversation of {encoded.counts['conversations']} was held "
                         "out; raise it, or add conversations")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [pack(part, cfg.train.seq_len, pad, cfg.train.seed, tokenizer) for part in (encoded.train, encoded.held_out)]
    counts = {**encoded.counts, "template": template, "train_conversations": len(encoded.train),
              "held_out_conversations": len(encoded.held_out), "train_rows": len(rows[0]),
              "assistant_tokens": rows[0].assistant_tokens}
    return rows[0], rows[1], counts


def run(cfg: SFTConfig, model_spec: Path | str, docs_dir: Path, out_dir: Path, metrics_path: Path | None = None) -> dict:
    """Fine-tune the model (a run, checkpoint or HF folder) on the conversations in docs_dir (ingest's output)."""
    import functools

    import torch
    from transformers import AutoTokenizer

    from tokenmill.device import autocast_for, compute_dtype, pick_device
    from tokenmill.documents import read_documents
    from tokenmill.losses import chunked_head, next_token_loss
    from tokenmill.model import ModelConfig, count_parameters
    from tokenmill.model.source import find_tokenizer, resolve_source
    from tokenmill.sft.data import RowSampler
    from tokenmill.train import build, make_sinks, resume, save_final
    from tokenmill.train.checkpoint import resume_point, save_checkpoint
    from tokenmill.train.distributed import init_world, local_device, shutdown, unwrap, wrap
    from tokenmill.train.ema import ExponentialAverage
    from tokenmill.train.loop import LoopSettings, train
    from tokenmill.train.optim import build_optimizer
    from tokenmill.train.schedule import SCHEDULES

    t = cfg.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)
    source = resolve_source(model_spec)
    tokenizer = AutoTokenizer.from_pretrained(find_tokenizer(source))
    train_rows, held_rows, counts = prepare(cfg, tokenizer, read_documents(docs_dir))
    world = init_world(pick_device(t.device))
    device = local_device(pick_device(t.device), world)
    dtype = compute_dtype(device, t.precision)
    sampler = RowSampler(train_rows, t.micro_batch_size, t.seed, world.rank, world.size)
    model_cfg = ModelConfig(init_from=str(source), lora=cfg.lora)
    model = build(model_cfg, t, {"vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id}, device=device)
    n_params = count_parameters(model)
    head = chunked_head(model) if t.loss_chunk_tokens else None  # logits a chunk at a time, as in pre-training
    model = wrap(model, t.parallel, world, device, dtype, t.fsdp_cpu_offload)
    optimizer = build_optimizer(unwrap(model), t.lr_max, t.betas, t.weight_decay, device, kind=t.optimizer,
                                muon=t.muon)
    accum = t.accum_steps(world.size)
    ema = ExponentialAverage(unwrap(model), t.ema) if t.ema else None
    state = {"step": 0, "tokens": 0}
    checkpoint = resume_point(out_dir)
    if checkpoint:
        state = resume(checkpoint, model, optimizer, sampler, t, accum, world, ema)
    loss_fn = functools.partial(next_token_loss, autocast=autocast_for(device, dtype), head=head,
                                chunk_tokens=t.loss_chunk_tokens)
    if world.is_main:
        print(f"[sft] {counts['train_conversations']:,} conversations in {len(train_rows):,} rows of {t.seq_len} "
              f"({counts['assistant_tokens']:,} assistant tokens), {counts['held_out_conversations']:,} held out; "
              f"template: {counts['template']}; truncated {counts['truncated']}, dropped {counts['dropped_too_long']} "
              f"(longer than seq_len); {n_params:,} parameters ({count_parameters(model, trainable=True):,} "
              "trainable)", flush=True)

    def evaluate(m) -> dict[str, float]:
        if not len(held_rows):  # sft.held_out: 0, nothing to evaluate on
            return {}
        loss = assistant_loss(m, held_rows, t.micro_batch_size, device, loss_fn)
        state.setdefault("chat_before", loss)  # kept in the checkpoints: a resumed run still knows its start
        return {"chat": loss}

    bytes_per_token = held_rows.assistant_bytes / max(held_rows.assistant_tokens, 1)
    loop = LoopSettings(max_steps=t.max_steps, grad_accum_steps=accum, grad_clip=t.grad_clip, log_every=t.log_every,
                        eval_every=t.eval_every, save_every=t.save_every,
                        tokens_per_step=t.seq_len * t.micro_batch_size * accum * world.size, eval_at_start=True,
                        bytes_per_token={"chat": bytes_per_token})
    sinks = make_sinks(t, world, out_dir, metrics_path or out_dir / "metrics.jsonl", state["step"],
                       {"sft": cfg.model_dump(mode="json")})

    def save(loop_state: dict) -> None:
        save_checkpoint(out_dir, model, optimizer, {**loop_state, "loader": sampler.state_dict()}, t.keep_last, world,
                        sharded=t.parallel == "fsdp", ema=ema)

    try:
        state = train(model, optimizer, lambda step: SCHEDULES[t.schedule](step, t), sampler.next_batch, evaluate,
                      sinks, save, loop, state, device, loss_fn, world=world, after_step=ema.update if ema else None)
        save_final(model, lambda: build(model_cfg, t, {"vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id}),
                   tokenizer, out_dir, world, False)
    finally:
        sinks.close()
        shutdown(world)
    results = {"template": counts["template"], "counts": counts}
    if len(held_rows):
        bits = lambda loss: loss / math.log(2) / bytes_per_token
        results["before"] = {"loss": state["chat_before"], "bits_per_byte": bits(state["chat_before"])}
        results["after"] = {"loss": state["val_losses"]["chat"], "bits_per_byte": bits(state["val_losses"]["chat"])}
    if world.is_main:
        atomic_write_json(out_dir / "results.json", results)
        if len(held_rows):
            print(f"[sft] held-out answers: {results['before']['bits_per_byte']:.4f} → "
                  f"{results['after']['bits_per_byte']:.4f} bits per byte", flush=True)
    return {**{k: v for k, v in counts.items() if k != "template"}, "steps": state["step"],
            **{f"chat_loss_{when}": results[when]["loss"] for when in ("before", "after") if when in results}}
