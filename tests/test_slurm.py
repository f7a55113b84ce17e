"""On a real Slurm cluster (the `slurm` fixture): the data stages as job arrays give the local executor's
output, a failed task is reported with its log and redone alone, and a training job requeued by
`scontrol requeue` resumes exactly."""

import gzip
import json
import subprocess
import sys
import time

import pytest
import yaml

from conftest import tiny_pipeline, wait_for_rows
from tokenmill.cli import main


def texts(folder):
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(folder.glob("docs-*.jsonl.gz"))}


def run_until_collected(slurm, argv, capsys, timeout=300):
    """Run a stage command on the Slurm executor until it is collected (submit, wait, run again)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert main(argv) == 0
        out = capsys.readouterr().out
        if "pending:" not in out:
            return out
        job = out.split("Slurm job ")[1].split()[0]
        slurm.wait([job])
    raise TimeoutError(argv)


def test_filter_on_slurm_equals_local_and_only_a_failed_task_is_redone(slurm, corpus, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["ingest", str(corpus), "-o", str(raw), "--set", "ingest.chars_per_shard=10000"]) == 0
    shards = sorted(raw.glob("docs-*.jsonl.gz"))
    assert len(shards) >= 3
    assert main(["filter", str(raw), "-o", str(tmp_path / "local")]) == 0
    capsys.readouterr()

    good = shards[1].read_bytes()
    shards[1].write_bytes(good[:40])  # one task's input is cut short: that task fails, the others finish
    argv = ["filter", str(raw), "-o", str(tmp_path / "on_slurm"), "--executor", "slurm", "--no-wait"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pending: submitted Slurm job" in out and "#SBATCH --partition" not in \
        (tmp_path / ".on_slurm.partial" / "logs" / "launch_script.slurm").read_text()
    slurm.wait([out.split("Slurm job ")[1].split()[0]])
    shards[1].write_bytes(good)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 task(s) of job" in out and "failed: rank 1 (" in out and "slurm_logs" in out
    logs = tmp_path / ".on_slurm.partial" / "logs"
    assert json.loads((logs / "ranks_to_run.json").read_text()) == [1]  # only the failed task resubmitted
    assert not (tmp_path / "on_slurm").exists()  # not marked done while a task is missing
    run_until_collected(slurm, argv, capsys)
    assert texts(tmp_path / "on_slurm") == texts(tmp_path / "local")


def test_a_training_job_requeued_by_scontrol_resumes_exactly(slurm, shards, corpus, tmp_path):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=150, save_every=1000, log_every=1, eval_every=75, loggers=["jsonl"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "tokenmill", "train", str(shards), "--config", str(config)]
    assert subprocess.run([*command, "-o", str(tmp_path / "straight")], capture_output=True).returncode == 0
    script = tmp_path / "train.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --requeue\n#SBATCH --cpus-per-task=1\n#SBATCH --open-mode=append\n"
                      f"#SBATCH --output={tmp_path / 'job-%j.out'}\n"
                      f"exec {' '.join(command)} -o {tmp_path / 'requeued'}\n")
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                         env=slurm.env).stdout.strip()
    metrics = tmp_path / "requeued" / "metrics.jsonl"
    wait_for_rows(metrics, 20)
    assert subprocess.run(["scontrol", "requeue", job], env=slurm.env).returncode == 0
    slurm.start_now_when_requeued(job)  # Slurm holds a requeued job ~2 minutes (BeginTime)
    slurm.wait([job], timeout=300)
    assert (tmp_path / "requeued" / "final" / "config.json").is_file()
    log = (tmp_path / f"job-{job}.out").read_text()
    assert "stopped by SIGTERM at step" in log and "resuming from" in log
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    losses = lambda rs: [(r["step"], r["train/loss"]) for r in rs if "train/loss" in r]  # noqa: E731
    assert [s for s, _ in losses(rows)] == [s for s, _ in losses(straight)]
    assert [v for _, v in losses(rows)] == pytest.approx([v for _, v in losses(straight)], rel=1e-6)


@pytest.mark.slow  # training on the cluster stays in the default suite: test_a_training_job_requeued_by_scontrol...
def test_the_example_sbatch_runs_torchrun_on_the_cluster_with_the_losses_of_one_rank(slurm, shards, corpus, tmp_path):
    """examples/slurm/train.sbatch as users submit it (on a CPU node: no GPUs, 2 processes, gloo)."""
    from pathlib import Path
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=6, save_every=3, log_every=1, eval_every=3, loggers=["jsonl"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    one = subprocess.run([sys.executable, "-m", "tokenmill", "train", str(shards), "-o", str(tmp_path / "one"),
                          "--config", str(config), "--set", "train.micro_batch_size=4"], capture_output=True)
    assert one.returncode == 0, one.stderr[-2000:]
    script = Path(__file__).parents[1] / "examples" / "slurm" / "train.sbatch"
    job = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                          f"--output={tmp_path / 'job-%j.out'}",
                          f"--export=ALL,NPROC_PER_NODE=2,OMP_NUM_THREADS=1,PYTHON={sys.executable}",
                          str(script), str(shards), str(tmp_path / "on_slurm"), str(config),
                          "--set", "train.micro_batch_size=2"], capture_output=True, text=True, env=slurm.env)
    assert job.returncode == 0, job.stderr
    slurm.wait([job.stdout.strip()], timeout=300)
    log = (tmp_path / f"job-{job.stdout.strip()}.out").read_text()
    assert "2 rank(s)" in log, log[-3000:]

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}
    expected, got = losses(tmp_path / "one"), losses(tmp_path / "on_slurm")
    assert sorted(got) == list(range(1, 7))
    assert got == pytest.approx(expected, rel=1e-4)
    assert (tmp_path / "on_slurm" / "final" / "model.safetensors").is_file()


@pytest.mark.slow  # ~100 s: seven job arrays, each a job's start-up
def test_tokenmill_run_with_every_data_stage_on_slurm_finishes_in_one_command(slurm, corpus, tmp_path, capsys):
    """Each data stage's job arrays (MinHash's four included) are submitted and waited for with a bar, one
    after the other: no re-run per stage. The shards equal a local run's."""
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=4, eval_every=4, save_every=4)
    raw["ingest"]["chars_per_shard"] = 10000
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(raw))
    on_slurm = {"kind": "slurm", "slurm": {"poll_s": 0.5}}
    for section in ("ingest", "filter", "dedup", "tokenize"):
        raw.setdefault(section, {})["executor"] = on_slurm
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(local), "-o", str(tmp_path / "run-local")]) == 0
    assert main(["run", str(config), "-o", str(tmp_path / "run-slurm")]) == 0
    out = capsys.readouterr().out
    assert "pending" not in out and out.count("[slurm] job ") >= 7  # ingest, filter, 4 MinHash, tokenize
    for split in ("train", "val"):
        got = sorted((tmp_path / "run-slurm" / "30_shards" / split).glob("tokens*.bin"))
        want = sorted((tmp_path / "run-local" / "30_shards" / split).glob("tokens*.bin"))
        assert [p.read_bytes() for p in got] == [p.read_bytes() for p in want] and got
    assert (tmp_path / "run-slurm" / "60_export" / "config.json").is_file()


@pytest.mark.slow  # ~1-2 minutes: five jobs, each a tokenmill start-up on the node
def test_tokenmill_run_submit_queues_one_job_per_stage_at_once_and_collects(slurm, corpus, tmp_path, capsys):
    """--submit queues the whole chain at once (each job after the one before: --dependency=afterok) and
    returns; when the jobs have run, the same command without --submit finds every stage up to date."""
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=4, eval_every=4, save_every=4)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config), "-o", str(tmp_path / "run-local")]) == 0
    capsys.readouterr()
    run = tmp_path / "run-slurm"
    assert main(["run", str(config), "-o", str(run), "--submit"]) == 0
    assert "[slurm] submitted 5 jobs" in capsys.readouterr().out
    chain = json.loads((run / "slurm" / "chain.json").read_text())
    assert [c["step"] for c in chain] == ["ingest", "filter", "dedup", "tokenize", "train"]
    jobs = [c["job"] for c in chain]
    queued = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %r"], capture_output=True, text=True,
                            env=slurm.env).stdout
    assert "Dependency" in queued  # all queued at once, the later ones waiting on the earlier
    slurm.wait(jobs, timeout=600)
    assert main(["run", str(config), "-o", str(run)]) == 0
    out = capsys.readouterr().out
    for stage in ("ingest", "filter", "dedup", "tokenize", "train", "eval", "export"):
        assert f"[{stage}] up to date" in out, (stage, out[-3000:])
    for split in ("train", "val"):
        got = sorted((run / "30_shards" / split).glob("tokens*.bin"))
        want = sorted((tmp_path / "run-local" / "30_shards" / split).glob("tokens*.bin"))
        assert got and [p.read_bytes() for p in got] == [p.read_bytes() for p in want]
    assert sorted(p.name.split("-")[0] for p in (run / "slurm").glob("*.out")) == \
        ["dedup", "filter", "ingest", "tokenize", "train"]


@pytest.mark.slow  # ~55 s: three jobs, the array's tasks two at a time; one array task by bash in test_plan.py
def test_plan_submit_trains_the_proxies_as_one_job_array_and_answers(slurm, tmp_path, capsys):
    """`tokenmill plan --submit --wait` on a real cluster: the data job, one array with a task per share (each
    task's log names its share only), the fit; then the answer printed, and every proxy found done again."""
    from test_plan import plan_config
    raw = plan_config(tmp_path, shares={"domain": [0.3, 0.6, 1.0]}, budgets=[0.1, 0.15, 0.2])
    raw["plan"]["slurm"] = {"poll_s": 0.5}
    raw["ingest"] = {"executor": {"slurm": {"poll_s": 0.5}}}
    config, run = tmp_path / "plan.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(raw))
    code = main(["plan", str(config), "-o", str(run), "--submit", "--wait"])
    out = capsys.readouterr().out
    chain = json.loads((run / "slurm" / "chain.json").read_text())
    assert [c["step"] for c in chain] == ["data", "proxies", "fit"]
    assert f"proxies {chain[1]['job']} (an array of 3)" in out
    logs = {p.name: p.read_text() for p in (run / "slurm").glob("proxies-*.out")}
    assert sorted(logs) == [f"proxies-{chain[1]['job']}_{i}.out" for i in range(3)]
    for i, share in enumerate(("0.30", "0.60", "1.00")):
        log = logs[f"proxies-{chain[1]['job']}_{i}.out"]
        assert f"[plan] proxy domain {share}, 20 steps" in log and log.count("[plan] proxy domain") == 3, log[-2000:]
        assert "[train] running" in log
    result = json.loads((run / "plan" / "plan.json").read_text())
    assert len(result["points"]) == 9 and {p["share"] for p in result["points"]} == {0.3, 0.6, 1.0}
    assert "[plan] 9 points from 3 shares of domain" in out and out.count("[train] up to date") == 9
    assert code in (0, 2)  # 2: the honest "no recommendation" of a tiny model's noisy curves (test_plan.py)
