"""What a checkpoint folder is: its name, what makes it whole, and how to find the newest whole one.

    40_checkpoints/step-00000200/
        model.safetensors   weights (no pickle), or dcp/ for FSDP: sharded torch.distributed.checkpoint
                            files (model and optimizer) that load on any number of ranks. With a 4-bit base
                            (QLoRA) only the weights that train, marked in its metadata, and
                            quantized_base.json names the base they go on
        optimizer.pt        optimizer state (tensors and numbers; loaded with weights_only=True); not with dcp/
        ema.safetensors     with train.ema: the moving average of the weights that train (train/ema.py)
        config.json         the model's HF config (+ adapter_config.json for LoRA), so a checkpoint exports alone
        rng-R.pt            torch RNG states of rank R
        state.json          step, tokens seen, loader position (written last: the completion marker)
    40_checkpoints/final/   the HF model folder written at the end of a run

Training writes these (train/checkpoint.py) and model loading reads them (model/source.py); both ask here.
A checkpoint cut short on disk (a full disk, a copy that stopped) is named with what is wrong with it, and
an automatic resume falls back to the newest whole one.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{8})$")
FINAL = "final"


TRAINABLE_ONLY = "tokenmill.trainable_only"  # safetensors metadata: the file holds only what trains
QUANTIZED_BASE = "quantized_base.json"
EMA_FILE = "ema.safetensors"


def save_weights(model, path: Path, trainable_only: bool = False) -> None:
    from safetensors.torch import save_file, save_model
    if not trainable_only:
        save_model(model, str(path))  # handles tied embeddings
        return
    tensors = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(path), metadata={"format": "pt", TRAINABLE_ONLY: "1"})


def load_weights(model, path: Path) -> None:
    """Into `model` in place: every weight, or (a trainable-only file) every weight that trains, all of them."""
    from safetensors import safe_open
    from safetensors.torch import load_file, load_model
    with safe_open(str(path), "pt") as f:
        trainable_only = (f.metadata() or {}).get(TRAINABLE_ONLY) == "1"
    if not trainable_only:
        load_model(model, str(path))
        return
    tensors = load_file(str(path))
    result = model.load_state_dict(tensors, strict=False)
    wanted = {name for name, p in model.named_parameters() if p.requires_grad}
    if result.unexpected_keys or wanted - set(tensors):
        raise ValueError(f"{path}: its weights do not fit this model (unexpected: {result.unexpected_keys[:3]}, "
                         f"missing: {sorted(wanted - set(tensors))[:3]}); was it saved with another model.lora?")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / "state.json").is_file()


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoints under `root` that finished saving (they have state.json), oldest first."""
    if not Path(root).is_dir():
        return []
    return sorted((p for p in Path(root).iterdir() if _STEP_DIR.match(p.name) and is_checkpoint(p)),
                  key=lambda p: p.name)


def holds_run(root: Path) -> bool:
    """Whether `root` holds a training run's results (checkpoints or a final model)."""
    return bool(checkpoint_dirs(root)) or (Path(root) / FINAL / "config.json").is_file()


def problem(path: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when it is whole. Reads headers only (cheap)."""
    path = Path(path)
    try:
        json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        return f"state.json is unreadable ({e})"
    if (path / "dcp").is_dir():
        return None if (path / "dcp" / ".metadata").is_file() else "dcp/.metadata is missing"
    ema = path / EMA_FILE
    return _safetensors_problem(path / "model.safetensors") or _zip_problem(path / "optimizer.pt") or \
        (_safetensors_problem(ema) if ema.exists() else None)


def _safetensors_problem(file: Path) -> str | None:
    from safetensors import safe_open
    if not file.is_file():
        return f"{file.name} is missing"
    try:  # the header lists every tensor's byte range; a cut file no longer covers them
        with safe_open(str(file), "pt"):
            return None
    except Exception as e:  # SafetensorError is not importable by name across versions
        return f"{file.name} is damaged or cut short ({file.stat().st_size:,} bytes: {e})"


def _zip_problem(file: Path) -> str | None:
    if not file.is_file():
        return f"{file.name} is missing"
    try:  # torch.save writes a zip; its central directory is at the end, so a cut file has none
        with zipfile.ZipFile(file):
            return None
    except zipfile.BadZipFile as e:
        return f"{file.name} is damaged or cut short ({file.stat().st_size:,} bytes: {e})"


def require_whole(path: Path) -> Path:
    """`path` if it is a whole checkpoint, else a ValueError that names it and what is wrong."""
    path = Path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (a step-NNNNNNNN folder with state.json); "
                                f"complete ones in {path.parent}: "
                                f"{', '.join(p.name for p in checkpoint_dirs(path.parent)) or 'none'}")
    wrong = problem(path)
    if wrong:
        raise ValueError(f"{path}: {wrong}. Resume from an earlier checkpoint "
                         f"({', '.join(p.name for p in checkpoint_dirs(path.parent) if p != path) or 'none'}), "
                         "or copy this one again")
    return path


def latest_whole(root: Path) -> Path | None:
    """The newest checkpoint under `root` whose files are whole; damaged newer ones are named in the log."""
    for path in reversed(checkpoint_dirs(root)):
        wrong = problem(path)
        if wrong is None:
            return path
        log.warning("skipping %s: %s; falling back to an earlier checkpoint", path, wrong)
    return None
