"""Running one stage: skip it when its manifest matches, else build its output atomically.

A stage's key hashes its name, its own config section and the keys of its inputs (an upstream stage's
key, or the content hash of raw files). Change either and the stage and everything after it re-run.
The manifest (`manifest.json`, written last) is the completion marker: no manifest, no output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from tokenmill import __version__
from tokenmill.atomic import atomic_write_json, atomic_write_text, staging_dir

MANIFEST = "manifest.json"
# What a stage function does: read inputs, write into the given folder, return counts for the manifest.
StageFn = Callable[[Path], dict]


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_key(path: Path | str) -> str:
    """An upstream stage's key if `path` is a stage output, else a hash of the file(s) it holds; a remote
    source (hf://...) is keyed by its spec."""
    if str(path).startswith("hf://"):
        return hashlib.sha256(str(path).encode()).hexdigest()
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest:
        return manifest["key"]
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256("".join(f"{p.relative_to(path)}:{file_digest(p)}" for p in files).encode()).hexdigest()
    raise FileNotFoundError(f"{path}: input does not exist")


StageConfig = BaseModel | dict[str, BaseModel]  # a section, or several (training: model and train)


def _config_json(cfg: StageConfig) -> dict:
    if isinstance(cfg, BaseModel):
        return cfg.model_dump(mode="json")
    return {name: section.model_dump(mode="json") for name, section in cfg.items()}


def stage_key(name: str, cfg: StageConfig, inputs: dict[str, str]) -> str:
    payload = json.dumps({"stage": name, "config": _config_json(cfg), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class StagePending(Exception):
    """Raised by a stage whose work was handed to a cluster (Slurm): run the same command again to collect it."""


def run_stage(name: str, cfg: StageConfig, inputs: list[Path], out_dir: Path, fn: StageFn,
              force: bool = False, resumable: bool = False, log: Callable[[str], None] = print,
              resume_despite: tuple[str, ...] = (), keep_existing: bool = False) -> dict:
    """Run `fn` unless `out_dir` already holds this exact stage; returns the manifest.

    `resumable` stages (training) write in place so that a killed run resumes from its checkpoints; a key
    file marks whose checkpoints they are, so a changed config never resumes from another run's state,
    except for the sections named in `resume_despite`, whose changes the stage itself judges on resume
    (a mixture's future stages may change; its past ones may not). `keep_existing` keeps the folder whatever
    its key (the user named a checkpoint in it to resume from) and marks it as this config's.
    Under torchrun only rank 0 manages the folder and manifest; the other ranks run `fn`, which meets rank 0
    at the process-group rendezvous, after the folder is ready.
    """
    out_dir = Path(out_dir)
    main_process = os.environ.get("RANK", "0") == "0"
    if not main_process:
        log = lambda message: None  # noqa: E731
    keys = {str(p): input_key(p) for p in inputs}
    key = stage_key(name, cfg, keys)
    manifest = read_manifest(out_dir)
    if manifest and manifest["key"] == key and not force:
        log(f"[{name}] up to date ({out_dir})")
        return manifest
    started = time.time()
    log(f"[{name}] running → {out_dir}")
    if resumable:
        key_file = out_dir / ".stage_key"
        resume_key = stage_key(name, {k: v for k, v in cfg.items() if k not in resume_despite}, keys) \
            if isinstance(cfg, dict) else key
        if main_process:
            changed = not key_file.is_file() or key_file.read_text() != resume_key
            if force or (changed and not keep_existing):
                shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / MANIFEST).unlink(missing_ok=True)
            atomic_write_text(key_file, resume_key)
        counts = fn(out_dir)
        manifest = _manifest(name, key, cfg, keys, counts, started)
        if main_process:
            atomic_write_json(out_dir / MANIFEST, manifest)
    else:
        with staging_dir(out_dir, key=None if force else key) as staging:
            counts = fn(staging)
            manifest = _manifest(name, key, cfg, keys, counts, started)
            atomic_write_json(staging / MANIFEST, manifest)
    log(f"[{name}] done in {manifest['duration_s']:.1f}s: {_summary(counts)}")
    return manifest


def _manifest(name, key, cfg, keys, counts, started) -> dict:
    return {"stage": name, "key": key, "config": _config_json(cfg), "inputs": keys,
            "counts": counts, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 3), "tokenmill_version": __version__}


def _summary(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if isinstance(v, (int, float)))
