"""Runs as chains of Slurm jobs, submitted at once: `tokenmill run --submit` and `tokenmill plan --submit`.

`run`: one job per data stage (`tokenmill run CONFIG -o RUN --until STAGE`), then one for the rest (training,
evaluation, export, report), each starting when the one before it succeeded (`--dependency=afterok`). Each
job runs the pipeline up to its stage: the stages before are up to date (their manifests) and skip, so a job
does exactly one stage's work, on a compute node. A data stage whose executor is `slurm` submits its job
arrays from there and waits for them (its in-process work, e.g. exact dedup or tokenizer training, also runs
on the compute node).

`plan`: the data (`tokenmill run CONFIG -o RUN --until tokenize`), then the proxies as one job array, a task
per share (or per size of a ladder: `tokenmill plan CONFIG -o RUN --proxy $SLURM_ARRAY_TASK_ID`, each task in
its own folders under RUN/plan/, locked and resumable), then the fit (`tokenmill plan CONFIG -o RUN`, which
finds every proxy done).

The submitting command returns at once, or waits with a line per job (`--wait`); the same command without
--submit afterwards collects: everything is up to date.

    RUN/slurm/chain.json        the job ids, in order
    RUN/slurm/STEP-JOBID.out    each job's log (an array's: STEP-JOBID_TASK.out)
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tokenmill.engine import SlurmConfig, slurm_job_states
from tokenmill.pipeline import UNTIL

STEPS = (*UNTIL, "train")  # train: training and everything after it
ARRAY_INDEX = "$SLURM_ARRAY_TASK_ID"  # in a Job's command: each array task's index, left for the shell


@dataclass(frozen=True)
class Job:
    step: str
    command: list[str]
    slurm: SlurmConfig
    array: int = 0                  # > 0: a job array of this many tasks (ARRAY_INDEX in the command)
    parallel: int | None = None     # an array's tasks running at once (None: as many as the cluster gives)


def job_script(job: Job, run_dir: Path) -> str:
    slurm = job.slurm
    log = f"{job.step}-%A_%a.out" if job.array else f"{job.step}-%j.out"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={slurm.job_name}-{job.step}",
             f"#SBATCH --output={run_dir / 'slurm' / log}", f"#SBATCH --time={slurm.time}",
             f"#SBATCH --cpus-per-task={slurm.cpus_per_task}", f"#SBATCH --mem-per-cpu={int(slurm.mem_per_cpu_gb * 1024)}M"]
    if job.array:
        lines.append(f"#SBATCH --array=0-{job.array - 1}" + (f"%{job.parallel}" if job.parallel else ""))
    if slurm.partition:
        lines.append(f"#SBATCH --partition={slurm.partition}")
    lines += [f"#SBATCH --{key}={value}" for key, value in slurm.sbatch_args.items()]
    command = " ".join(f'"{arg}"' if arg == ARRAY_INDEX else shlex.quote(arg) for arg in job.command)
    # The jobs run the tokenmill of the interpreter that submits them.
    lines += [f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH", f"exec {command}", ""]
    return "\n".join(lines)


def tokenmill_command(*args: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "tokenmill", *args, *[a for override in overrides for a in ("--set", override)]]


def run_jobs(config: str, run_dir: Path, overrides: list[str], slurm: SlurmConfig) -> list[Job]:
    """`tokenmill run --submit`: a job per data stage, then one for training and everything after it."""
    return [Job(step, tokenmill_command("run", config, "-o", str(run_dir),
                                        *(["--until", step] if step != "train" else []), overrides=overrides), slurm)
            for step in STEPS]


def plan_jobs(config: str, run_dir: Path, overrides: list[str], data_slurm: SlurmConfig, plan) -> list[Job]:
    """`tokenmill plan --submit`: the data, the proxies as one array (a task per share or size), the fit."""
    return [Job("data", tokenmill_command("run", config, "-o", str(run_dir), "--until", "tokenize",
                                          overrides=overrides), data_slurm),
            Job("proxies", tokenmill_command("plan", config, "-o", str(run_dir), "--proxy", ARRAY_INDEX,
                                             overrides=overrides), plan.slurm, array=len(plan.groups),
                parallel=plan.parallel),
            Job("fit", tokenmill_command("plan", config, "-o", str(run_dir), overrides=overrides), plan.slurm)]


def submit(jobs: list[Job], run_dir: Path) -> list[tuple[str, str]]:
    """Submit the chain, each job after the one before (afterok: an array's every task); returns [(step, job
    id)] in order. A failed sbatch cancels what was submitted: no half chain is left queued."""
    folder = Path(run_dir) / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    submitted: list[tuple[str, str]] = []
    for job in jobs:
        script = folder / f"{job.step}.sbatch"
        script.write_text(job_script(job, Path(run_dir)))
        after = ["--dependency", f"afterok:{submitted[-1][1]}", "--kill-on-invalid-dep=yes"] if submitted else []
        proc = subprocess.run(["sbatch", "--parsable", *after, str(script)], capture_output=True, text=True)
        if proc.returncode:
            for _, job_id in submitted:
                subprocess.run(["scancel", job_id], capture_output=True)
            raise RuntimeError(f"sbatch {script} failed: {proc.stderr.strip()}")
        submitted.append((job.step, proc.stdout.strip().split(";")[0]))
    (folder / "chain.json").write_text(json.dumps([{"step": s, "job": j} for s, j in submitted], indent=2))
    return submitted


def wait(jobs: list[tuple[str, str]], run_dir: Path, done: Path, poll_s: float = 5.0) -> None:
    """Until every job has left the queue, printing each step as it starts and ends; a chain that ended without
    `done` (a job failed, the ones after it cancelled) is an error naming the logs."""
    reported: dict[str, str] = {}
    while True:
        queued = slurm_job_states([job for _, job in jobs])
        for step, job in jobs:
            state = queued.get(job, "ENDED")
            if reported.get(step) != state:
                reported[step] = state
                print(f"[slurm] {step}: job {job} {state.lower()}")
        if not queued:
            break
        time.sleep(poll_s)
    if not Path(done).is_file():
        logs = sorted((Path(run_dir) / "slurm").glob("*.out"))
        raise RuntimeError(f"the Slurm chain of {run_dir} did not finish: see its job logs "
                           f"({', '.join(str(p) for p in logs) or Path(run_dir) / 'slurm'}); run the same command "
                           "again to submit what is left")
