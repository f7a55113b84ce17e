"""Preemption: a launcher's stop signal becomes a checkpoint at the next step boundary and a requeue.

Slurm sends SIGTERM to a job it preempts or requeues (`scontrol requeue`, or preemption of a `--requeue`
job), or the signal that `--signal=B:USR1@120` asks for before the time limit; Kubernetes and spot instances
send SIGTERM. The trainer finishes the optimizer step it is in, saves a checkpoint, and exits with status 143
(128 + SIGTERM, what a killed process reports), so nothing takes the run as finished; a Kubernetes Job
restarts it. Slurm requeues a preempted `--requeue` job itself; a USR1 (the time limit, which Slurm does not
requeue) makes the trainer ask `scontrol requeue $SLURM_JOB_ID`. Do not also set `RequeueExit=143`: on this
Slurm (22.05) a job that Slurm requeued and that then exits with a RequeueExit status is cancelled (seen in
the tests). The requeued job runs the same command, which resumes from that checkpoint exactly.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI catches Preempted in every command: this module loads without torch
    import torch

    from tokenmill.train.distributed import World

log = logging.getLogger(__name__)
EXIT_STATUS = 143
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by the loop after it saved the checkpoint of `step` on a stop signal."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}, after saving its checkpoint; "
                         "run the same command again (or let the job be requeued) to resume")
        self.step, self.signum = step, signum


class StopSignals:
    """Records a stop signal; `requested()` tells every rank at once (one all-reduce per step with several
    ranks, since the signal may reach them at different steps)."""

    def __init__(self, world: World, device: torch.device):
        self.world, self.device, self.signum, self.previous = world, device, None, {}

    def __enter__(self) -> StopSignals:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _record(self, signum, frame) -> None:
        self.signum = signum

    def requested(self) -> bool:
        if self.world.size == 1:
            return self.signum is not None
        import torch
        flag = torch.tensor(float(self.signum or 0), device=self.device)
        got = self.world.max(flag)
        if got.item() and self.signum is None:
            self.signum = int(got.item())
        return bool(got.item())


def requeue_if_slurm(signum: int) -> None:
    """A USR1 under Slurm is the time-limit warning: ask Slurm to requeue this job (it does for preemption)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and signum == signal.SIGUSR1:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        log.info("scontrol requeue %s: %s", job, result.returncode == 0 and "ok" or result.stderr.strip())
