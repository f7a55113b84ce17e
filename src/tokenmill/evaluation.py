"""Evaluate: loss, perplexity and bits per byte of a model on one or more token splits (`50_eval/`).

    tokenmill eval runs/x/60_export runs/x/30_shards other_corpus/30_shards

Several validation sets side by side is how forgetting shows in continued pre-training: general text
next to domain text. Bits per byte divides by the split's UTF-8 bytes, so it compares across tokenizers.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from pydantic import Field

from tokenmill.atomic import atomic_write_json
from tokenmill.device import pick_device
from tokenmill.losses import chunked_head, mean_loss, next_token_loss
from tokenmill.schema import StrictModel
from tokenmill.tokenize.shards import bytes_per_token, open_split, read_meta
from tokenmill.train.data import eval_windows


class EvalConfig(StrictModel):
    seq_len: int | None = Field(None, gt=1, description="window length (tokens); default: the training seq_len")
    max_tokens: int | None = Field(262_144, gt=0, description="tokens evaluated per split; None: the whole split")
    batch_size: int = Field(8, gt=0, description="windows per forward pass")


def split_dir(path: Path) -> Path:
    """A split folder, or a tokenize output whose val/ split is meant."""
    path = Path(path)
    return path / "val" if (path / "val" / "meta.json").is_file() else path


def evaluate_split(model, path: Path, seq_len: int, cfg: EvalConfig, device, head=None) -> dict:
    split = split_dir(path)
    meta = read_meta(split)
    windows = eval_windows(open_split(split), seq_len, cfg.max_tokens)
    loss_fn = functools.partial(next_token_loss, head=head)
    loss = mean_loss(model, windows, cfg.batch_size, device, loss_fn=loss_fn)
    return {"split": str(split), "loss": loss, "perplexity": math.exp(min(loss, 50)),
            "bits_per_byte": loss / math.log(2) / bytes_per_token(meta),
            "unigram_entropy_nats": meta.get("unigram_entropy_nats"), "tokens": min(meta["n_tokens"], cfg.max_tokens or meta["n_tokens"])}


def run(cfg: EvalConfig, model_dir: Path, splits: list[Path], out_dir: Path, default_seq_len: int = 256) -> dict:
    from tokenmill.model import load_model
    model = load_model(model_dir)
    seq_len = min(cfg.seq_len or default_seq_len, model.config.max_position_embeddings)
    device = pick_device("auto")
    model.to(device)
    head = chunked_head(model)  # logits a chunk at a time: 8 x 2048 tokens of a 49k vocabulary are 3 GiB at once
    results = [evaluate_split(model, path, seq_len, cfg, device, head) for path in splits]
    atomic_write_json(Path(out_dir) / "results.json", {"model": str(model_dir), "seq_len": seq_len, "results": results})
    return {"splits": len(results), **{f"loss[{i}]": r["loss"] for i, r in enumerate(results)}}
