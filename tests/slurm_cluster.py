"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm,
configured in a folder of the test's, started as root, and stopped by PID.

    with SlurmCluster(tmp_path) as cluster:   # or the `slurm` fixture in conftest
        subprocess.run(["sbatch", ...], env=cluster.env)

Needs root and `apt-get install slurm-wlm munge` (`make test` installs them where it can); `unavailable()`
says why not, for a skip. One cluster per machine at a time: its ports (6817/6818) are fixed, and a cluster
that an interrupted test run left behind (its daemons in REGISTRY) is stopped before a new one starts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
REGISTRY = Path("/run/tokenmill-test-slurm.json")  # the running cluster's daemons, for the next run to stop


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the Slurm cluster runs as root"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").is_file()]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge"
    return None


class SlurmCluster:
    def __init__(self, root: Path, partition: str = "debug"):
        self.root, self.partition = Path(root), partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: dict[str, int] = {}

    def _write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        self.conf.write_text("\n".join([
            "ClusterName=tokenmill-test", f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=1024", "DependencyParameters=kill_invalid_depend",
            "MailProg=/bin/true", "ReturnToService=2", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            "MinJobAge=300",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))

    def __enter__(self) -> SlurmCluster:
        _stop_leftovers()  # a test run stopped part-way (a timeout) left its daemons running: they hold the ports
        self._write_config()
        run = Path("/run/munge")
        run.mkdir(exist_ok=True)
        shutil.chown(run, "munge", "munge")
        munge_pid = run / "tokenmill-test-munged.pid"  # where the munge user may write
        munge_pid.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--pid-file", str(munge_pid),
                        "--socket", "/run/munge/munge.socket.2", "-f"], check=True)
        self.pids["munged"] = int(_wait_for(munge_pid).read_text())
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([f"/usr/sbin/{daemon}"], check=True, env=self.env)
            self.pids[daemon] = int(_wait_for(self.root / pid_file).read_text())
        REGISTRY.write_text(json.dumps(self.pids))
        deadline = time.time() + 20
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout
            if "idle" in state:
                return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the Slurm node did not come up: {state!r}; see {self.root / 'log'}")

    def __exit__(self, *exc) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        for pid in self.pids.values():
            while time.time() < deadline and _alive(pid):
                time.sleep(0.05)
        REGISTRY.unlink(missing_ok=True)

    def wait(self, job_ids: list[str], timeout: float = 300) -> None:
        """Until none of the jobs is queued or running."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i"], capture_output=True,
                                 text=True, env=self.env).stdout
            if not out.strip():
                return
            time.sleep(0.5)
        raise TimeoutError(f"Slurm jobs {job_ids} still queued after {timeout} s")


    def start_now_when_requeued(self, job_id: str, timeout: float = 60) -> None:
        """A requeued job waits ~2 minutes (its BeginTime); once it is pending again, let it start now."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                   env=self.env).stdout.strip()
            if state == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=self.env, check=True)
                return
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} was not requeued")


def _stop_leftovers() -> None:
    """Stop the daemons an earlier cluster of these tests left running (its registry names them; a PID is only
    signalled while its command line is still that daemon's, so a reused PID is left alone)."""
    if not REGISTRY.is_file():
        return
    left = {daemon: pid for daemon, pid in json.loads(REGISTRY.read_text()).items() if _is_daemon(pid, daemon)}
    for pid in left.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 15
    for pid in left.values():
        while time.time() < deadline and _alive(pid):
            time.sleep(0.05)
    REGISTRY.unlink(missing_ok=True)


def _is_daemon(pid: int, daemon: str) -> bool:
    try:
        return daemon in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _wait_for(path: Path, timeout: float = 10) -> Path:
    deadline = time.time() + timeout
    while not path.is_file() or not path.read_text().strip():
        if time.time() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
