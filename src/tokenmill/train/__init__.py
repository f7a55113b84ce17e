"""Train: a LLaMA-style model from scratch, or continued pre-training of a HF checkpoint (full or LoRA).

    tokenmill train runs/x/30_shards -o runs/x/40_checkpoints --preset tiny
    torchrun --nproc_per_node=8 -m tokenmill train runs/x/30_shards -o runs/x/40_checkpoints --set train.parallel=fsdp

Writes step-NNNNNNNN/ checkpoints (see checkpoint.py) and final/, a HF folder with the tokenizer that
`AutoModelForCausalLM.from_pretrained` loads (LoRA merged in; the adapter alone goes to adapter/).
A killed run started again with the same config resumes from its newest checkpoint and continues exactly.
"""

from __future__ import annotations

import importlib
import importlib.util

from tokenmill.train.config import RESUMABLE_CHANGES, TrainConfig

__all__ = ["RESUMABLE_CHANGES", "TrainConfig", "run"]


def __getattr__(name: str):
    """The trainer's names (run, build, ...) from trainer.py, imported on first use: tokenmill.config reads the
    section's schema (config.py) from this package, and the data commands start without torch."""
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")  # a submodule: the import system's
    return getattr(importlib.import_module("tokenmill.train.trainer"), name)
