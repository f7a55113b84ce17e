"""Where a trained model is, whatever the user points at: a run folder, a checkpoints folder, one
checkpoint (LoRA adapters merged), a HF model folder, or `hf://org/name`. Eval and export both load
models through here, so every command accepts the same things.
"""

from __future__ import annotations

from pathlib import Path

import torch
import json

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tokenmill.model.lora import merge
from tokenmill.model.resolve import resolve_model_path
from tokenmill.checkpoints import (EMA_FILE, FINAL, QUANTIZED_BASE, is_checkpoint, latest_whole, load_weights,
                                   require_whole)


def resolve_source(path: Path | str) -> Path:
    """A run folder means its final model; a checkpoints folder its final model or newest checkpoint."""
    path = resolve_model_path(path)
    for candidate in (path / "40_checkpoints" / FINAL, path / FINAL, path):
        if (candidate / "config.json").is_file():
            return candidate
    newest = latest_whole(path) or latest_whole(path / "40_checkpoints")
    if newest:
        return newest
    raise FileNotFoundError(f"{path}: no model here (expected a run folder, a checkpoint, a HF model folder "
                            "or hf://org/name)")


def find_tokenizer(path: Path) -> Path:
    """The tokenizer that belongs to a run, a checkpoint folder or a final model folder."""
    for candidate in (path, path / "final", path.parent / "final", path.parent.parent / "30_shards" / "tokenizer",
                      path / "30_shards" / "tokenizer"):
        if (candidate / "tokenizer_config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no tokenizer found beside it; use a run folder or a checkpoint inside one")


def load_source(spec: Path | str, moving_average: bool = False
                ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """(model in fp32 on CPU, its tokenizer, the folder it came from); a LoRA checkpoint comes merged.
    `moving_average`: a checkpoint's train.ema average in place of the weights that trained."""
    source = resolve_source(spec)
    tokenizer = AutoTokenizer.from_pretrained(find_tokenizer(source))
    if moving_average and not (source / EMA_FILE).is_file():
        raise FileNotFoundError(f"{source}: no moving average ({EMA_FILE}); only checkpoints of a run with "
                                "train.ema hold one")
    if not is_checkpoint(source):
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa"), tokenizer, source
    require_whole(source)
    if (source / "dcp").is_dir():
        raise ValueError(f"{source}: a sharded FSDP checkpoint; use the run's final/ folder, or resume and "
                         "finish the run, which gathers the shards")
    if (source / QUANTIZED_BASE).is_file():  # QLoRA: the adapters go on the full-precision base, not the 4-bit one
        base = json.loads((source / QUANTIZED_BASE).read_text())["init_from"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), attn_implementation="sdpa")
    if (source / "adapter_config.json").is_file():  # a LoRA checkpoint: rebuild the adapters, then merge
        from peft import PeftConfig, get_peft_model
        model = get_peft_model(model, PeftConfig.from_pretrained(source))
    load_weights(model, source / "model.safetensors")
    if moving_average:
        from tokenmill.train.ema import load_average
        load_average(model, source / EMA_FILE)
    return merge(model), tokenizer, source
