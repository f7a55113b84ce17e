"""Export: a run or a checkpoint → a Hugging Face folder that plain `transformers` loads (`60_export/`).

    tokenmill export runs/x -o my-model --format hf
    tokenmill export runs/x/40_checkpoints/step-00000200 -o my-model
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from safetensors.torch import load_model as load_weights
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tokenmill.model.lora import merge
from tokenmill.schema import StrictModel
from tokenmill.train.checkpoint import latest_checkpoint


class ExportConfig(StrictModel):
    format: Literal["hf"] = Field("hf", description="hf: save_pretrained folder (safetensors) with tokenizer")


def find_tokenizer(path: Path) -> Path:
    """The tokenizer that belongs to a run, a checkpoint folder or a final model folder."""
    for candidate in (path, path / "final", path.parent / "final", path.parent.parent / "30_shards" / "tokenizer",
                      path / "30_shards" / "tokenizer"):
        if (candidate / "tokenizer_config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no tokenizer found beside it; export a run folder or a checkpoint inside one")


def resolve_source(path: Path) -> Path:
    """A run folder means its final model; a checkpoints folder its final model or newest checkpoint."""
    path = Path(path)
    for candidate in (path / "40_checkpoints" / "final", path / "final", path):
        if (candidate / "config.json").is_file():
            return candidate
    newest = latest_checkpoint(path) or latest_checkpoint(path / "40_checkpoints")
    if newest:
        return newest
    raise FileNotFoundError(f"{path}: no model here (expected a run folder, a checkpoint, or a HF model folder)")


def run(cfg: ExportConfig, source: Path, out_dir: Path) -> dict:
    source = resolve_source(source)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    if (source / "adapter_config.json").is_file():  # a LoRA checkpoint: rebuild the adapters, then merge
        from peft import PeftConfig, get_peft_model
        model = get_peft_model(model, PeftConfig.from_pretrained(source))
    if (source / "dcp").is_dir():
        raise ValueError(f"{source}: a sharded FSDP checkpoint; export the run's final/ folder, or resume and "
                         "finish the run, which gathers the shards")
    load_weights(model, str(source / "model.safetensors"))
    model = merge(model)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(find_tokenizer(source)).save_pretrained(out_dir)
    return {"source": str(source), "params": sum(p.numel() for p in model.parameters())}
