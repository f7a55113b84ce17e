"""Export: a run or a checkpoint → a Hugging Face folder that plain `transformers` loads (`60_export/`).

    tokenmill export runs/x -o my-model --format hf
    tokenmill export runs/x/40_checkpoints/step-00000200 -o my-model
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tokenmill.model.source import load_source
from tokenmill.schema import StrictModel


class ExportConfig(StrictModel):
    format: Literal["hf"] = Field("hf", description="hf: save_pretrained folder (safetensors) with tokenizer")


def run(cfg: ExportConfig, source: Path, out_dir: Path) -> dict:
    model, tokenizer, source = load_source(source)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"source": str(source), "params": sum(p.numel() for p in model.parameters())}
