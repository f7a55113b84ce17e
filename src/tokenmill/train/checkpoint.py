"""Checkpoints: everything that decides the next batch, saved together and atomically.

What a checkpoint folder holds is described in tokenmill/checkpoints.py, its one home. A checkpoint is built
in a `.partial` folder and renamed when whole, so a killed save never replaces a good checkpoint; only the
newest `keep_last` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tokenmill.checkpoints import (EMA_FILE, QUANTIZED_BASE, checkpoint_dirs, latest_whole, load_weights,
                                   require_whole, save_weights, step_dir)
from tokenmill.model.quantize import is_quantized
from tokenmill.train.distributed import World, is_fsdp, unwrap


def resume_point(out_dir: Path, resume_from: Path | None = None) -> Path | None:
    """The checkpoint a run continues from: the one asked for (refused unless whole), else the newest whole
    one in its own folder."""
    if resume_from is None:
        return latest_whole(out_dir)
    resume_from = require_whole(resume_from)
    later = [p.name for p in checkpoint_dirs(out_dir) if p.name > resume_from.name]
    if later:
        # They belong to the timeline being abandoned; saving over them would mix two runs in one folder.
        raise ValueError(f"{out_dir} holds checkpoints after {resume_from.name} ({', '.join(later)}): resume "
                         f"into another output folder (-o), or move them away first")
    return resume_from


def save_checkpoint(root: Path, model, optimizer, state: dict, keep_last: int, world: World = World(),
                    sharded: bool = False, ema=None) -> Path:
    """`sharded` (train.parallel: fsdp) saves with torch.distributed.checkpoint even on one rank, so that the
    run can resume on any number of ranks through its resharding."""
    final = step_dir(root, state["step"])
    tmp = final.with_name(f".{final.name}.partial")
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    if sharded or is_fsdp(model):
        _save_sharded(tmp, model, optimizer)
    elif world.is_main:  # a 4-bit base is made again from the base model: only what trains is saved
        save_weights(unwrap(model), tmp / "model.safetensors", trainable_only=is_quantized(unwrap(model)))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if ema is not None and world.is_main:  # train/ema.py; DDP's ranks hold the same average
        ema.save(tmp / EMA_FILE)
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / f"rng-{world.rank}.pt")
    world.barrier()
    if world.is_main:
        _save_model_description(unwrap(model), tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old)
    world.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, world: World = World(), ema=None) -> dict:
    """Restore model, optimizer, RNG and the weights' moving average in place; returns the loop state."""
    path = Path(path)
    if (path / "dcp").is_dir():
        _load_sharded(path, model, optimizer)
    else:
        load_weights(unwrap(model), path / "model.safetensors")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if ema is not None:
        if (path / EMA_FILE).is_file():
            ema.load(path / EMA_FILE)
        else:  # a checkpoint of a run without train.ema (resumed from with --resume-from)
            ema.restart()
            if world.is_main:
                print(f"[train] {path} holds no moving average: train.ema starts from its weights", flush=True)
    rng_file = path / f"rng-{world.rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: those start from the seed
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def _save_model_description(model, folder: Path) -> None:
    model.config.save_pretrained(folder)
    if hasattr(model, "peft_config"):
        model.peft_config["default"].save_pretrained(folder)
    if is_quantized(model):  # the full-precision base the adapters go on when the checkpoint is exported
        config = json.loads((folder / "config.json").read_text())
        config.pop("quantization_config", None)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        (folder / QUANTIZED_BASE).write_text(json.dumps({"init_from": model.peft_config["default"].base_model_name_or_path}))


def _save_sharded(folder: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))


def _load_sharded(folder: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(folder / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
