"""Atomic writes: a killed process never leaves a file or folder that looks complete.

Files are written to a temporary sibling and renamed into place (rename is atomic on POSIX).
Stage folders are built in a `.partial` sibling and renamed when whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def staging_dir(final: Path, key: str | None = None) -> Iterator[Path]:
    """Yield a folder beside `final`; on success it replaces `final`.

    Without a key the folder starts empty and is removed on failure. With a key, a partial folder left by
    an interrupted run of the same key is kept, so work split into tasks with completion markers (the
    datatrove executors) resumes where it stopped; any other partial folder is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial")
    key_file = staging / ".stage_key"
    if key is None or not key_file.is_file() or key_file.read_text() != key:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(exist_ok=True)
    if key is not None:
        key_file.write_text(key)
    try:
        yield staging
    except BaseException as e:
        if key is None or type(e).__name__ == "ConfigError":
            shutil.rmtree(staging, ignore_errors=True)
        raise
    key_file.unlink(missing_ok=True)
    # The old output goes first; a kill between the two calls leaves no output, which reads as "not done".
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
