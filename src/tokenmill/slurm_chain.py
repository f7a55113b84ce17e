"""`tokenmill run --submit`: the whole run as a chain of Slurm jobs, submitted at once.

One job per data stage (`tokenmill run CONFIG -o RUN --until STAGE`), then one for the rest (training,
evaluation, export, report), each starting when the one before it succeeded (`--dependency=afterok`). Each
job runs the pipeline up to its stage: the stages before are up to date (their manifests) and skip, so a job
does exactly one stage's work, on a compute node. A data stage whose executor is `slurm` submits its job
arrays from there and waits for them (its in-process work, e.g. exact dedup or tokenizer training, also runs
on the compute node). The submitting command returns at once, or waits with a line per stage (`--wait`);
`tokenmill run CONFIG -o RUN` afterwards collects: every stage is up to date.

    RUN/slurm/chain.json        the job ids, in order
    RUN/slurm/STAGE-JOBID.out   each job's log
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tokenmill.engine import SlurmConfig, slurm_job_states
from tokenmill.pipeline import UNTIL

STEPS = (*UNTIL, "train")  # train: training and everything after it


def job_script(step: str, command: list[str], run_dir: Path, slurm: SlurmConfig) -> str:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={slurm.job_name}-{step}",
             f"#SBATCH --output={run_dir / 'slurm' / f'{step}-%j.out'}", f"#SBATCH --time={slurm.time}",
             f"#SBATCH --cpus-per-task={slurm.cpus_per_task}", f"#SBATCH --mem-per-cpu={int(slurm.mem_per_cpu_gb * 1024)}M"]
    if slurm.partition:
        lines.append(f"#SBATCH --partition={slurm.partition}")
    lines += [f"#SBATCH --{key}={value}" for key, value in slurm.sbatch_args.items()]
    # The jobs run the tokenmill of the interpreter that submits them.
    lines += [f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH", f"exec {shlex.join(command)}", ""]
    return "\n".join(lines)


def submit(config: str, run_dir: Path, overrides: list[str], slurm: SlurmConfig) -> list[tuple[str, str]]:
    """Submit the chain; returns [(step, job id)] in order."""
    folder = Path(run_dir) / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    sets = [arg for override in overrides for arg in ("--set", override)]
    jobs: list[tuple[str, str]] = []
    for step in STEPS:
        command = [sys.executable, "-m", "tokenmill", "run", config, "-o", str(run_dir), *sets,
                   *(["--until", step] if step != "train" else [])]
        script = folder / f"{step}.sbatch"
        script.write_text(job_script(step, command, Path(run_dir), slurm))
        after = ["--dependency", f"afterok:{jobs[-1][1]}", "--kill-on-invalid-dep=yes"] if jobs else []
        proc = subprocess.run(["sbatch", "--parsable", *after, str(script)], capture_output=True, text=True)
        if proc.returncode:
            for _, job in jobs:  # no half-submitted chain left behind
                subprocess.run(["scancel", job], capture_output=True)
            raise RuntimeError(f"sbatch {script} failed: {proc.stderr.strip()}")
        jobs.append((step, proc.stdout.strip().split(";")[0]))
    (folder / "chain.json").write_text(json.dumps([{"step": s, "job": j} for s, j in jobs], indent=2))
    return jobs


def wait(jobs: list[tuple[str, str]], run_dir: Path, poll_s: float = 5.0) -> None:
    """Until every job has left the queue, printing each step as it starts and ends; a failed step (its job
    ended without the stage's manifest, the rest cancelled) is an error naming its log."""
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
    if not (Path(run_dir) / "report.html").is_file():
        logs = sorted((Path(run_dir) / "slurm").glob("*.out"))
        raise RuntimeError(f"the Slurm chain of {run_dir} did not finish: see its job logs "
                           f"({', '.join(str(p) for p in logs) or Path(run_dir) / 'slurm'}); run the same command "
                           "again to submit what is left")
