"""Running one stage: skip it when its manifest matches, else build its output atomically.

A stage's key hashes its name, its own config section and the keys of its inputs (an upstream stage's
key, or the content hash of raw files). Change either and the stage and everything after it re-run.
The manifest (`manifest.json`, written last) is the completion marker: no manifest, no output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from tokenmill import __version__, lock, storage
from tokenmill.atomic import atomic_write_json, staging_dir
from tokenmill.storage import file_digest

MANIFEST = "manifest.json"
# What a stage function does: read inputs, write into the given folder, return counts for the manifest.
StageFn = Callable[[Path], dict]


def read_manifest(out_dir: Path | str) -> dict | None:
    if storage.is_remote(out_dir):
        return storage.read_manifest(str(out_dir))
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def input_key(path: Path | str) -> str:
    """An upstream stage's key if `path` is a stage output, else a hash of the file(s) it holds; a remote
    source (hf://...) is keyed by its spec."""
    if str(path).startswith("hf://"):
        return hashlib.sha256(str(path).encode()).hexdigest()
    if storage.is_remote(path):
        return storage.input_key(str(path))
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

    `resumable` stages (training) write in place so that a killed run resumes from its checkpoints; see
    prepare_resumable for when a changed config continues and when it is refused.
    Under torchrun only rank 0 manages the folder and manifest; the other ranks run `fn`, which meets rank 0
    at the process-group rendezvous, after the folder is ready.
    """
    main_process = os.environ.get("RANK", "0") == "0"
    if not main_process:
        log = lambda message: None  # noqa: E731
    keys = {str(p): input_key(p) for p in inputs}
    key = stage_key(name, cfg, keys)
    # A finished stage is read without its lock, so that many processes may find it done at once (the tasks of
    # a plan's proxy array); its manifest is written last, atomically, so one that matches means a whole output.
    manifest = read_manifest(out_dir)
    if manifest and manifest["key"] == key and not force:
        log(f"[{name}] up to date ({out_dir})")
        return manifest
    if storage.is_remote(out_dir):
        return _run_for_remote(name, cfg, key, keys, str(out_dir), fn, force, resumable, log)
    # One writer per folder: a second process on it is refused, naming the first (lock.py).
    with lock.hold(Path(out_dir), log) if main_process else contextlib.nullcontext():
        return _run_local(name, cfg, key, keys, Path(out_dir), fn, force, resumable, log, main_process,
                          resume_despite, keep_existing)


def _run_local(name, cfg, key, keys, out_dir: Path, fn, force, resumable, log, main_process, resume_despite,
               keep_existing) -> dict:
    manifest = read_manifest(out_dir)
    if manifest and manifest["key"] == key and not force:
        log(f"[{name}] up to date ({out_dir})")
        return manifest
    started = time.time()
    log(f"[{name}] running → {out_dir}")
    if resumable:
        if main_process:
            prepare_resumable(name, cfg, keys, out_dir, resume_despite, force, keep_existing)
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


def _run_for_remote(name, cfg, key, keys, url, fn, force, resumable, log) -> dict:
    """Build the output in the local cache (where a run interrupted with this key resumes), then publish it."""
    if resumable:
        raise ValueError(f"-o {url}: the {name} stage writes checkpoints in place as it runs, which object storage "
                         "cannot hold atomically; write them to a local or shared folder (its inputs may be remote)")
    started, local = time.time(), storage.staged_output(key)
    log(f"[{name}] running → {url} (built in {local})")
    cached = read_manifest(local)  # built here before, then its upload was stopped
    counts = cached["counts"] if cached and cached["key"] == key and not force else None
    if counts is None:
        with staging_dir(local, key=None if force else key) as staging:
            counts = fn(staging)
            atomic_write_json(staging / MANIFEST, _manifest(name, key, cfg, keys, counts, started))
    manifest = storage.publish(local, url)
    log(f"[{name}] done in {time.time() - started:.1f}s: {_summary(counts)}")
    return manifest


RUN_RECORD = ".stage_record.json"  # the config and inputs that a resumable folder's checkpoints were made with


class ResumeConflict(ValueError):
    """A folder holds a run whose config differs from this one in a way it cannot be continued with."""


def prepare_resumable(name: str, cfg: StageConfig, keys: dict[str, str] | None, out_dir: Path,
                      resume_despite: tuple[str, ...] = (), force: bool = False, keep_existing: bool = False) -> None:
    """Make `out_dir` ready for a resumable stage without ever losing a run's checkpoints by accident.

    A folder holding a run continues when the config changed only in keys of `resume_despite` (dotted
    paths such as `train.max_steps`; the stage judges those itself on resume); any other change is refused
    with the keys that changed and what to do. `force` discards the run; `keep_existing` (the user named a
    checkpoint to resume from) keeps it whatever changed. `keys` None checks the config alone (before the
    inputs exist), and writes nothing.
    """
    from tokenmill.checkpoints import checkpoint_dirs, holds_run
    out_dir = Path(out_dir)
    config, record = _config_json(cfg), _read_record(out_dir)
    if force:
        shutil.rmtree(out_dir, ignore_errors=True)
    elif keep_existing:
        pass
    elif holds_run(out_dir):
        changes = _changes(record, config, keys, resume_despite) if record else \
            _legacy_changes(name, cfg, keys, out_dir, resume_despite)
        if changes:
            newest = checkpoint_dirs(out_dir)[-1] if checkpoint_dirs(out_dir) else out_dir
            raise ResumeConflict(
                f"{out_dir} holds a {name} run (newest checkpoint: {newest.name}) made with another config, which "
                "this one cannot simply continue:\n" + "\n".join(f"  - {c}" for c in changes) +
                f"\nIts checkpoints are kept. Either continue it with the new config (tokenmill train ... "
                f"--resume-from {newest}), write to another folder (-o), or add --force to discard it and start "
                "over (with tokenmill run, --force re-runs every stage)")
    elif record and record["config"] != config:
        shutil.rmtree(out_dir)  # our own folder of a run that never saved a checkpoint: nothing to keep
    if keys is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    (out_dir / ".stage_key").unlink(missing_ok=True)  # the record's predecessor
    atomic_write_json(out_dir / RUN_RECORD, {"stage": name, "config": config, "inputs": keys})


def _read_record(out_dir: Path) -> dict | None:
    path = out_dir / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        return {k: v for key, value in obj.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): obj}


def _changes(record: dict, config: dict, keys: dict[str, str] | None, resume_despite: tuple[str, ...]) -> list[str]:
    """The changed config keys (dotted) outside `resume_despite`, and a changed input."""
    old, new = _flatten(record["config"]), _flatten(config)
    allowed = lambda key: any(key == p or key.startswith(p + ".") for p in resume_despite)  # noqa: E731
    changes = [f"{key}: {json.dumps(old.get(key))} → {json.dumps(new.get(key))}"
               for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key) and not allowed(key)]
    if keys is not None and sorted(record["inputs"].values()) != sorted(keys.values()):
        changes.append(f"the input data changed ({', '.join(keys)})")
    return changes


def _legacy_changes(name, cfg, keys, out_dir: Path, resume_despite) -> list[str]:
    """Folders written before the record kept only a hash of the config with the sections it may change
    removed; when it differs, what changed cannot be told."""
    key_file = out_dir / ".stage_key"
    sections = {k: v for k, v in cfg.items() if k not in resume_despite} if isinstance(cfg, dict) else cfg
    if keys is not None and key_file.is_file() and key_file.read_text() == stage_key(name, sections, keys):
        return []
    return ["the config or the data (this folder was written by an earlier tokenmill, which kept no record of "
            "its config)"] if keys is not None else []


def _manifest(name, key, cfg, keys, counts, started) -> dict:
    return {"stage": name, "key": key, "config": _config_json(cfg), "inputs": keys,
            "counts": counts, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 3), "tokenmill_version": __version__}


def _summary(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if isinstance(v, (int, float)))
