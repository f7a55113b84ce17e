"""The data engine: tokenmill's data stages run as datatrove pipelines on datatrove executors.

One module knows datatrove: our document shards as its reader/writer (adapters keep `id`, `text`, `source`,
`metadata`), the executor choice (local processes, Slurm, Ray), a tally step for the data funnel, and the
per-step stats that datatrove writes (`logs/stats.json`), which become our manifests' counts.

Work is split into `tasks`, by default one per ~32 MB of text (8 MiB of compressed shards), at least 8 and
at most one per shard (`grouped_tasks`): a task's start-up, its stats and MinHash's per-task files grow with
the data, not with the shard count, and the count comes from the input alone, never the machine. Whatever the
task count, each output shard holds what is left of the input shard of the same name, in order: a stage's
output does not depend on the machine it ran on. Each finished task leaves a completion marker, so a killed
stage re-runs only its unfinished tasks. `workers` only sets how many run at once (default: every core): the
output does not depend on it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Literal

from datatrove.data import Document as DtDocument
from datatrove.executor import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter
from pydantic import Field

from tokenmill.documents import SHARD_GLOB, document_shards
from tokenmill.schema import StrictModel


class SlurmConfig(StrictModel):
    partition: str | None = None
    time: str = Field("24:00:00", description="per job array task, HH:MM:SS")
    cpus_per_task: int = Field(1, gt=0)
    mem_per_cpu_gb: float = Field(2, gt=0)
    job_name: str = "tokenmill"
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="extra #SBATCH options")
    wait: bool = Field(True, description="wait for the jobs with a progress bar, then go on (tokenmill run: to the "
                                         "next stage); false: submit, return, and collect on the next run")
    poll_s: float = Field(5.0, gt=0, description="how often squeue is asked while waiting, seconds")


class ExecutorConfig(StrictModel):
    kind: Literal["local", "slurm", "ray"] = Field("local", description="datatrove executor")
    tasks: int | None = Field(None, gt=0, description="units of work; None: one per ~32 MB of text, at least 8 "
                                                     "(engine.grouped_tasks); the shards are dealt out to them, and "
                                                     "each output shard holds what is left of its input shard")
    workers: int = Field(-1, description="tasks run at once (local: processes; -1: one per CPU core)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray_address: str | None = Field(None, description="Ray cluster address; None starts or joins a local one")


SHARD_KEY = "tokenmill_shard"  # the input shard a document came from (its name's stem), while in a pipeline


def _from_shard(self, data: dict, path: str, id_in_file: int | str) -> dict:
    metadata = data.pop("metadata", None) or {}
    metadata["source"] = data.pop("source", "")
    metadata[SHARD_KEY] = Path(path).name.removesuffix(".jsonl.gz")
    return {"text": data["text"], "id": data["id"], "metadata": metadata}


def _to_shard(self, document: DtDocument) -> dict:
    metadata = dict(document.metadata)
    source = metadata.pop("source", "")
    metadata.pop("file_path", None)
    metadata.pop(SHARD_KEY, None)
    return {"id": document.id, "text": document.text, "source": source, "metadata": metadata}


def reader(in_dir: Path) -> PipelineStep:
    from datatrove.pipeline.readers import JsonlReader
    return JsonlReader(str(in_dir), glob_pattern=SHARD_GLOB, adapter=_from_shard, add_file_path=False)


FAST_GZIP = "gzip-level-1"


def fast_gzip() -> str:
    """The name of gzip at level 1 in fsspec's codecs, registered in this process on first use. fsspec writes
    gzip at level 9; shards are rewritten by every stage, so speed beats size, as in documents.write_documents
    (level 9 was 8% of a MinHash run's worker time)."""
    from fsspec.compression import compr, register_compression
    if FAST_GZIP not in compr:
        register_compression(FAST_GZIP, lambda f, mode="rb", **kw: gzip.GzipFile(fileobj=f, mode=mode, compresslevel=1,
                                                                                  **kw), [])
    return FAST_GZIP


class ShardByShardWriter(JsonlWriter):
    """Writes each document into the shard named like the input shard it came from."""

    def write(self, document: DtDocument, rank: int = 0, **kwargs):
        fast_gzip()  # here too: a task unpickled in a fresh process (Slurm, Ray) registers it there
        # A task reads its shards one after the other: close a shard once the task has moved on, so open
        # files stay one per task however many shards it has.
        name = self._get_output_filename(document, rank, **kwargs)
        for open_name in [n for n in self.output_mg.get_open_files() if n != name]:
            self.close_file(open_name)
        super().write(document, rank, **kwargs)


def writer(out_dir: Path) -> PipelineStep:
    return ShardByShardWriter(str(out_dir), output_filename="${%s}.jsonl.gz" % SHARD_KEY, adapter=_to_shard,
                              compression=fast_gzip())


class Tally(PipelineStep):
    """Counts documents and characters passing this point (the data funnel's in and out)."""

    type = "📊 - TALLY"

    def __init__(self, label: str):
        self.name = label  # before the base class names this step's stats
        super().__init__()

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            self.stat_update("docs")
            self.stat_update("chars", value=len(doc.text))
            yield doc


def with_default_tasks(cfg: ExecutorConfig, tasks: int) -> ExecutorConfig:
    """The executor config with its task count fixed: the user's, or `tasks`."""
    return cfg if cfg.tasks else cfg.model_copy(update={"tasks": tasks})


TASK_BYTES = 8 * 2**20  # compressed shards per task (~32 MB of text): a task's start-up and files amortized
MIN_TASKS = 8            # work for 8 cores however small the input


def grouped_tasks(shards: list[Path]) -> int:
    """The default task count for these shards: one per TASK_BYTES of them on disk, at least MIN_TASKS, at most
    one per shard. From the input alone, never the machine: MinHash and sentence dedup name documents by
    (task, index), so the same layout makes the same decisions everywhere. Each task reads every tasks-th shard
    (datatrove deals the sorted files out) and writes each into the output shard of the same name."""
    size = sum(Path(p).stat().st_size for p in shards)
    return max(1, min(len(shards), max(MIN_TASKS, math.ceil(size / TASK_BYTES))))


def for_input(cfg: ExecutorConfig, in_dir: Path) -> ExecutorConfig:
    """The executor config with its task count fixed: the user's, or grouped_tasks of `in_dir`'s shards."""
    return with_default_tasks(cfg, grouped_tasks(document_shards(in_dir)))


def build_executor(cfg: ExecutorConfig, pipeline: list, logging_dir: Path, depends=None):
    if cfg.tasks is None:
        raise ValueError("internal: fix the task count with engine.for_input before running a pipeline")
    common = {"pipeline": pipeline, "tasks": cfg.tasks, "logging_dir": str(logging_dir), "depends": depends}
    if cfg.kind == "local":
        workers = cfg.workers if cfg.workers > 0 else os.cpu_count() or 1
        return _local(common, min(workers, cfg.tasks))
    if cfg.kind == "ray":
        from datatrove.executor import RayPipelineExecutor
        _ensure_ray(cfg.ray_address)
        return RayPipelineExecutor(**common, workers=cfg.workers, cpus_per_task=cfg.slurm.cpus_per_task)
    s = cfg.slurm
    # The jobs run the datatrove and tokenmill of the interpreter that submits them.
    return SlurmExecutor(**common, time=s.time, partition=s.partition or "", cpus_per_task=s.cpus_per_task,
                         mem_per_cpu_gb=s.mem_per_cpu_gb, job_name=s.job_name, sbatch_args=s.sbatch_args,
                         workers=cfg.workers, env_command=f"export PATH={Path(sys.executable).parent}:$PATH")


class SlurmExecutor(SlurmPipelineExecutor):
    """datatrove's, without a `--partition` line when none is set, so the cluster's default partition applies
    (an empty one made sbatch fail: "invalid partition specified: --job-name=tokenmill")."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        if not args.get("partition"):
            args.pop("partition", None)
        return args


def _local(common: dict, workers: int):
    from datatrove.executor import LocalPipelineExecutor
    # fork: the tasks inherit our imports instead of re-importing torch/transformers in every worker.
    return LocalPipelineExecutor(**common, workers=workers, start_method="fork")


def _ensure_ray(address: str | None) -> None:
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray executor needs ray: pip install 'ray[default]'") from e
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)


def _shutdown_ray() -> None:
    """Leave no Ray client behind: a later local stage forks its workers, and a process forked while Ray's
    threads run hangs (seen: the next local pipeline's pool never started)."""
    import ray
    if ray.is_initialized():
        ray.shutdown()


def step_stats(logging_dir: Path) -> list[dict]:
    """The merged per-step stats of a finished pipeline, in pipeline order: [{"name", "stats": {...}}]."""
    path = Path(logging_dir) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the data pipeline left no stats; did every task finish? "
                                f"(see {Path(logging_dir) / 'logs'})")
    return json.loads(path.read_text())


def total(stats: dict, key: str) -> int:
    value = stats.get(key, 0)
    return int(value["total"] if isinstance(value, dict) else value)


def run_pipeline(cfg: ExecutorConfig, pipeline: list, logging_dir: Path) -> None:
    """Run to completion: local and Ray in this process; Slurm as a job array, waited for (or, with
    slurm.wait false, submitted with StagePending raised: run again to collect)."""
    from tokenmill.stage import StagePending
    sigterm = signal.getsignal(signal.SIGTERM)
    datatrove_logs_to_files()
    executor = build_executor(cfg, pipeline, logging_dir)
    if cfg.kind != "slurm":
        try:
            with TaskProgress(logging_dir, cfg.tasks):
                executor.run()
        finally:
            if cfg.kind == "ray":
                _shutdown_ray()
                # ray.init leaves its SIGTERM handler behind; a process forked later (a local stage's pool
                # worker) inherited it, ignored the pool's SIGTERM, and the pool hung at exit (seen in the suite).
                signal.signal(signal.SIGTERM, sigterm)
        _merge_stats(logging_dir, cfg.tasks)
        return
    if len(executor.get_incomplete_ranks()) == 0:
        _merge_stats(logging_dir, cfg.tasks)
        return
    import shutil
    if shutil.which("sbatch") is None:
        script = Path(logging_dir) / "launch_script.slurm"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(slurm_script(cfg, pipeline, logging_dir))
        raise FileNotFoundError(f"the slurm executor submits with sbatch, which is not on PATH here; run the same "
                                f"command on a Slurm login node (the job script it would submit: {script})")
    logging_dir = Path(logging_dir)
    previous = _previous_job(logging_dir)
    if previous and _queued(previous) and not cfg.slurm.wait:
        raise StagePending(f"Slurm job {previous} is still queued or running; run the same command again when it "
                           f"has finished (squeue -j {previous})")
    if not (previous and _queued(previous)):
        if previous:  # it ended, and some tasks have no completion marker: they failed
            failed = executor.get_incomplete_ranks()
            print(f"[slurm] {len(failed)} task(s) of job {previous} failed: {_failed_logs(logging_dir, previous, failed)};"
                  " resubmitting only those")
        executor.run()  # writes logs/launch_script.slurm and calls sbatch (for the incomplete ranks only)
        previous = str(executor.job_id)
        (logging_dir / "tokenmill_slurm_job").write_text(previous)
        if not cfg.slurm.wait:
            raise StagePending(f"submitted Slurm job {previous} ({len(executor.get_incomplete_ranks())} task(s)); "
                               f"script: {logging_dir / 'launch_script.slurm'}. Run the same command again when it "
                               "has finished to collect the stage.")
    _wait(previous, logging_dir, cfg)
    failed = executor.get_incomplete_ranks()
    if failed:
        raise RuntimeError(f"{len(failed)} task(s) of Slurm job {previous} failed: "
                           f"{_failed_logs(logging_dir, previous, failed)}. Run the same command again to resubmit "
                           "only those")
    _merge_stats(logging_dir, cfg.tasks)


def _wait(job_id: str, logging_dir: Path, cfg: ExecutorConfig) -> None:
    """Until the job has left the queue, with the bar of its finished tasks."""
    print(f"[slurm] job {job_id}: {cfg.tasks} task(s), waiting (squeue -j {job_id}; logs: "
          f"{logging_dir / 'slurm_logs'})")
    with TaskProgress(logging_dir, cfg.tasks):
        while _queued(job_id):
            time.sleep(cfg.slurm.poll_s)


def _previous_job(logging_dir: Path) -> str | None:
    marker = logging_dir / "tokenmill_slurm_job"
    return marker.read_text().strip() if marker.is_file() else None


SLURM_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


def slurm_job_states(job_ids: list[str]) -> dict[str, str]:
    """The jobs still queued or running, with their state (squeue); a job array by its id (%F), RUNNING while
    any of its tasks runs."""
    import subprocess
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%F %T"], capture_output=True, text=True)
    states: dict[str, str] = {}
    for job, state in (line.split() for line in out.stdout.splitlines() if line.strip()):
        if state in SLURM_ACTIVE and states.get(job) != "RUNNING":
            states[job] = state
    return states


def _queued(job_id: str) -> bool:
    return bool(slurm_job_states([job_id]))


def _failed_logs(logging_dir: Path, job_id: str, failed: list[int]) -> str:
    """Each failed rank and its Slurm log (array index i ran ranks_to_run.json[i])."""
    ranks = json.loads((logging_dir / "ranks_to_run.json").read_text())
    return ", ".join(f"rank {rank} ({logging_dir / 'slurm_logs' / f'{job_id}_{ranks.index(rank)}.out'})"
                     for rank in failed if rank in ranks)


def _quiet_dedup_bars() -> None:
    """datatrove's dedup blocks draw a bar per task while reading their duplicate lists; our TaskProgress bar
    stands for the whole stage."""
    import functools

    import datatrove.pipeline.dedup.exact_dedup as exact
    import datatrove.pipeline.dedup.minhash as minhash
    import datatrove.pipeline.dedup.sentence_dedup as sentence
    from tqdm import tqdm
    for module in (exact, minhash, sentence):
        module.tqdm = functools.partial(tqdm, disable=True)


class TaskProgress:
    """A bar of a running pipeline's finished tasks with documents/s and an ETA, read from datatrove's
    completion markers and per-task stats (logs/completions/, logs/stats/), so it works for any executor
    that writes them, without touching the tasks."""

    def __init__(self, logging_dir: Path, tasks: int, interval_s: float = 0.5):
        self.folder, self.tasks, self.interval_s = Path(logging_dir), tasks, interval_s
        self._stop, self._read = None, {}  # stats file name → documents

    def __enter__(self) -> "TaskProgress":
        import threading

        from tqdm import tqdm
        self.bar = tqdm(total=self.tasks, unit="task", desc="  tasks", leave=False, dynamic_ncols=True,
                        mininterval=1.0, initial=self._finished())
        self._stop, self._docs_before = threading.Event(), self._documents()  # tasks of an earlier, stopped run
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _finished(self) -> int:
        folder = self.folder / "completions"
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    def _documents(self) -> int:
        """Documents read by the finished tasks; a task's stats file is written once, so each is read once."""
        for path in (self.folder / "stats").glob("*.json"):
            if path.name in self._read:
                continue
            try:
                first = json.loads(path.read_text())[0]["stats"]  # the reader's step: documents read
            except (ValueError, IndexError, KeyError, OSError):
                continue  # being written
            self._read[path.name] = sum(total(first, key) for key in ("documents", "docs_out") if key in first)
        return sum(self._read.values())

    def _watch(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.interval_s):
            self._update(start)

    def _update(self, start: float) -> None:
        finished = self._finished()
        self.bar.update(finished - self.bar.n)
        elapsed = max(time.monotonic() - start, 1e-9)
        self.bar.set_postfix_str(f"{(self._documents() - self._docs_before) / elapsed:,.0f} docs/s", refresh=False)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.close()


def datatrove_logs_to_files() -> None:
    """datatrove logs every task's progress and per-block stats to stderr: hundreds of lines a run (713 for
    two small datasets). They stay in the stage's logs/ folder (logs/task_NNNNN.log, stats.json); the terminal
    gets tokenmill's line per stage and datatrove's errors. datatrove resets loguru's handlers around every
    task (`add_task_logger`, and `setup_default_logger` after it), so both are wrapped to keep stderr at ERROR:
    its task logger sends INFO to stderr only for the worker with local_rank 0, so every task is run as
    another worker (local_rank chooses nothing else)."""
    import datatrove.executor.base as executor_base
    import datatrove.utils.logging as datatrove_logging
    from loguru import logger

    def errors_only():
        logger.remove()
        logger.add(sys.stderr, level="ERROR")
    errors_only()
    if getattr(executor_base.add_task_logger, "errors_only", False):
        return
    _quiet_dedup_bars()
    original = executor_base.add_task_logger

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        return original(logging_dir, rank, 1, node_rank=node_rank)
    add_task_logger.errors_only = True
    executor_base.add_task_logger = add_task_logger
    datatrove_logging.setup_default_logger = errors_only


def run_pipelines(executor: ExecutorConfig, pipelines: list[tuple[list, int]], work: Path) -> list[dict]:
    """Run pipelines one after the other, each with its own task count (`work/logs_N`); returns the last
    one's per-step stats."""
    for index, (pipeline, tasks) in enumerate(pipelines):
        run_pipeline(executor.model_copy(update={"tasks": tasks}), pipeline, work / f"logs_{index}")
    return [s["stats"] for s in step_stats(work / f"logs_{len(pipelines) - 1}")]


def slurm_script(cfg: ExecutorConfig, pipeline: list, logging_dir: Path) -> str:
    """The sbatch script the Slurm executor would submit (for review, or to submit by hand)."""
    executor = build_executor(cfg, pipeline, logging_dir)
    return executor.get_launch_file_contents(executor.get_sbatch_args(min(cfg.tasks, executor.max_array_size)),
                                             f"srun -l launch_pickled_pipeline {Path(logging_dir) / 'executor.pik'}")


def _merge_stats(logging_dir: Path, tasks: int) -> None:
    """stats.json from the per-task files (Ray and Slurm leave merging to a separate job)."""
    from datatrove.utils.stats import PipelineStats
    files = sorted((Path(logging_dir) / "stats").glob("*.json"))
    if len(files) != tasks:
        raise RuntimeError(f"{logging_dir}: {len(files)} of {tasks} tasks left stats; the stage is incomplete")
    merged = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    (Path(logging_dir) / "stats.json").write_text(merged.to_json())
