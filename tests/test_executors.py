"""The datatrove executors behind the data stages: the Slurm job script, and a real local Ray cluster."""

import signal

import pytest

from tokenmill import engine
from tokenmill.cli import main
from tokenmill.documents import Document, document_shards, read_documents, read_shard, write_documents
from tokenmill.filters import FilterConfig, pipeline
from tokenmill.filters import run as filter_run

TEXT = ("The king and the queen have gone to the castle with their men, and that was the end of it. " * 8).strip()


def test_slurm_job_script(tmp_path):
    cfg = FilterConfig(executor={"kind": "slurm", "tasks": 40, "workers": 8,
                                 "slurm": {"partition": "cpu", "time": "02:00:00", "cpus_per_task": 2,
                                           "job_name": "tm-filter", "sbatch_args": {"account": "lm"}}})
    script = engine.slurm_script(cfg.executor, pipeline(cfg, tmp_path / "in", tmp_path / "out"), tmp_path / "logs")
    assert script.startswith("#!/bin/bash")
    for line in ["#SBATCH --partition=cpu", "#SBATCH --time=02:00:00", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --job-name=tm-filter", "#SBATCH --array=0-39%8", "#SBATCH --account=lm"]:
        assert line in script, line
    assert "launch_pickled_pipeline" in script and str(tmp_path / "logs" / "executor.pik") in script


def test_slurm_without_sbatch_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on this machine either way
    write_documents([Document("a", TEXT)], tmp_path / "in")
    code = main(["filter", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--executor", "slurm"])
    err = capsys.readouterr().err
    assert code == 2 and "sbatch, which is not on PATH" in err
    assert "#SBATCH --array=0-0" in (tmp_path / ".out.partial" / "logs" / "launch_script.slurm").read_text()


def test_ray_executor_on_a_local_cluster(tmp_path):
    pytest.importorskip("ray")
    docs = [Document(f"d{i}", TEXT + f" Number {i}.") for i in range(6)] + [Document("short", "tiny")]
    write_documents(docs, tmp_path / "in", docs_per_shard=2)
    cfg = FilterConfig(executor={"kind": "ray", "tasks": 2, "workers": 2})
    counts = filter_run(cfg, tmp_path / "in", tmp_path / "out")
    assert counts["docs_in"] == 7 and counts["docs_out"] == 6 and counts["drops"] == {"length/too_short": 1}
    assert sorted(d.id for d in read_documents(tmp_path / "out")) == [f"d{i}" for i in range(6)]


def test_every_core_by_default_and_the_output_does_not_depend_on_tasks_or_workers(tmp_path, monkeypatch):
    """Default: tasks from the input's size (engine.grouped_tasks), run on every core; filter and dedup (exact,
    MinHash, lines) give the same shards with the same documents in the same order for any tasks/workers."""
    import random

    from conftest import make_text
    from tokenmill.dedup import DedupConfig
    from tokenmill.dedup import run as dedup_run
    rng = random.Random(3)
    texts = [make_text(rng, 12) for _ in range(30)]
    docs = [Document(f"d{i:02d}", texts[i % 24] + ("" if i < 24 else " Extra words.")) for i in range(30)]
    docs += [Document("short", "tiny"), Document("exact", texts[5])]
    write_documents(docs, tmp_path / "in", docs_per_shard=5)  # 7 shards
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    assert engine.build_executor(engine.for_input(engine.ExecutorConfig(), tmp_path / "in"), [], tmp_path / "l") \
        .workers == 2
    outputs = {}
    for executor in ({}, {"tasks": 1}, {"tasks": 3, "workers": 2}):
        out = tmp_path / f"run{len(outputs)}"
        counts = filter_run(FilterConfig(steps=[{"name": "length", "min_chars": 20}], executor=executor),
                            tmp_path / "in", out / "filtered")
        dedup = dedup_run(DedupConfig(lines={"min_docs": 5}, executor=executor), out / "filtered", out / "dedup")
        outputs[str(executor)] = [[(d.id, d.text) for d in read_shard(shard)] for shard in document_shards(out / "dedup")]
        assert dedup["drops"].get("minhash/near_duplicate") and dedup["drops"].get("exact/duplicate") == 1
    assert counts["tasks"] == 3
    first, *others = outputs.values()
    assert len(first) > 1 and all(other == first for other in others)


def test_tasks_take_groups_of_shards_by_size_not_one_per_shard(tmp_path):
    """The default task count follows the input's bytes (8 MiB of shards a task, at least 8, at most one per
    shard); a stage over 40 small shards runs 8 tasks and still writes the 40 shards a task per shard writes."""
    def shards(n: int, size: int) -> list:
        folder = tmp_path / f"sizes-{n}-{size}"
        folder.mkdir()
        for i in range(n):
            with open(folder / f"docs-00000-{i:05d}.jsonl.gz", "wb") as f:
                f.truncate(size)  # sparse: only the size counts
        return document_shards(folder)
    mib = 2**20
    assert engine.grouped_tasks(shards(3, mib)) == 3                 # fewer shards than 8: one each
    assert engine.grouped_tasks(shards(40, 1000)) == 8               # small: 8 tasks, not 40
    assert engine.grouped_tasks(shards(20, 5 * mib)) == 13           # 100 MiB: a task per 8 MiB
    assert engine.grouped_tasks(shards(10, 20 * mib)) == 10          # never more than the shards
    docs = [Document(f"d{i:02d}", TEXT + f" Number {i}.") for i in range(40)]
    write_documents(docs, tmp_path / "in", docs_per_shard=1)
    grouped = filter_run(FilterConfig(steps=[{"name": "length", "min_chars": 20}]), tmp_path / "in", tmp_path / "a")
    one_each = filter_run(FilterConfig(steps=[{"name": "length", "min_chars": 20}], executor={"tasks": 40}),
                          tmp_path / "in", tmp_path / "b")
    assert (grouped["tasks"], one_each["tasks"]) == (8, 40)
    names = [p.name for p in document_shards(tmp_path / "in")]
    assert [p.name for p in document_shards(tmp_path / "a")] == names == [p.name for p in document_shards(tmp_path / "b")]
    assert [list(read_shard(p)) for p in document_shards(tmp_path / "a")] == \
        [list(read_shard(p)) for p in document_shards(tmp_path / "b")]


def test_a_local_pipeline_with_workers_runs_after_a_ray_one(tmp_path):
    """The Ray client is shut down after a Ray stage: a local stage forking its workers later does not hang."""
    pytest.importorskip("ray")
    import ray
    docs = [Document(f"d{i}", TEXT + f" Number {i}.") for i in range(4)]
    write_documents(docs, tmp_path / "in", docs_per_shard=2)
    filter_run(FilterConfig(executor={"kind": "ray", "workers": 2}), tmp_path / "in", tmp_path / "ray_out")
    assert not ray.is_initialized()
    # and its SIGTERM handler is gone: forked pool workers inheriting it ignored the pool's SIGTERM and hung
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    counts = filter_run(FilterConfig(executor={"workers": 2}), tmp_path / "in", tmp_path / "local_out")
    assert counts["docs_out"] == 4 and counts["tasks"] == 2
