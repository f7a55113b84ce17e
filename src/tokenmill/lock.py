"""One writer per folder: a run folder or stage output is held by one tokenmill process at a time.

    with hold(Path("runs/x")):   # raises FolderInUse naming the holder (host, PID, since when, command)
        ...

The lock is an advisory `flock` on a file beside the folder (`runs/.x.lock`, so a stage folder replaced by
its staging folder keeps it). The kernel drops a flock when its process dies, however it dies, so a killed
run never blocks the next one; the holder's record stays in the file, which is how a lock left by a dead
process is told apart from a free one: it is taken over with a line saying whose it was, never silently.
Linux emulates flock on NFS with byte-range locks, so holders on other nodes of a shared filesystem (a Slurm
requeue, a `--submit` chain) exclude each other too. On a filesystem without locks the run goes on, warned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

_held: dict[Path, int] = {}  # lock files this process holds, and how many times (a nested hold is free)


class FolderInUse(RuntimeError):
    """Another live process holds the folder."""


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} since {since}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def read_holder(path: Path) -> dict | None:
    try:
        text = Path(path).read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold(folder: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold `folder` for writing while the block runs; refuse (FolderInUse) when a live process holds it."""
    path = lock_path(folder)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = _acquire(path, folder, log)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        if fd is not None:
            _release(path, fd)


def _acquire(path: Path, folder: Path, log: Callable[[str], None]) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = read_holder(path)
                who = describe(holder) if holder else "a process that is starting"
                raise FolderInUse(f"{folder} is in use by another tokenmill: {who}. One process writes a folder at a "
                                  "time: wait for it to finish or stop it, or write to another folder (-o)") from None
            log(f"warning: {folder}: this filesystem cannot lock files ({e.strerror}); make sure no other process "
                "writes this folder")
            return None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder before us removed the file between our open and our lock: lock the new one
    stale = _read_fd(fd)
    if stale:
        log(f"[lock] {folder}: taking over the lock of {describe(stale)}, which ended without releasing it")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_fd(fd: int) -> dict | None:
    data = os.pread(fd, 1 << 16, 0)
    try:
        return json.loads(data) if data.strip() else None
    except ValueError:
        return {"pid": "?", "host": "?", "command": f"an unreadable record: {data[:80]!r}"}


def _release(path: Path, fd: int) -> None:
    # Removed while still locked, so whoever opened the old file sees it is gone (_same_file) and retries.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)
