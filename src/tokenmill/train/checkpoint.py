"""Checkpoints: everything that decides the next batch, saved together and atomically.

    40_checkpoints/step-00000200/
        model.safetensors   weights (no pickle)
        config.json         the model's HF config, so a checkpoint exports on its own
        optimizer.pt        optimizer state (tensors and numbers only; loaded with weights_only=True)
        rng.pt              torch RNG states
        state.json          step, tokens seen, loader position
A checkpoint is built in a `.partial` folder and renamed when whole, so a killed save never replaces a
good checkpoint; only the newest `keep_last` are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from tokenmill.atomic import staging_dir

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(root: Path, model, optimizer, state: dict, keep_last: int) -> Path:
    final = Path(root) / f"step-{state['step']:08d}"
    with staging_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        model.config.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for old in checkpoint_dirs(root)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG in place; returns the loop state."""
    path = Path(path)
    load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
