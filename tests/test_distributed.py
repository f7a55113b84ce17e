"""Two processes on gloo (torchrun): DDP and FSDP2 give the loss curve of one process with the same global
batch, and an FSDP checkpoint (torch.distributed.checkpoint) resumes on a different number of ranks."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_pipeline

STEPS = 6


def launch(tmp_path, corpus, shards, out, nproc, **train):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=STEPS, save_every=3, log_every=1, eval_every=3, **train)
    config = tmp_path / f"{out}.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = ["train", str(shards), "-o", str(tmp_path / out), "--config", str(config)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "tokenmill"]
           if nproc > 1 else [sys.executable, "-m", "tokenmill"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / out


def rewind_to_step_3(run) -> int:
    """As if the run had stopped after its step-3 checkpoint; returns that checkpoint's state.json mtime."""
    shutil.rmtree(run / "step-00000006")
    shutil.rmtree(run / "final")
    (run / "manifest.json").unlink()
    return (run / "step-00000003" / "state.json").stat().st_mtime_ns


def train_losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture
def single(tmp_path, corpus, shards):
    return launch(tmp_path, corpus, shards, "single", 1, micro_batch_size=4)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_rank(tmp_path, corpus, shards, single, parallel):
    run = launch(tmp_path, corpus, shards, parallel, 2, micro_batch_size=2, parallel=parallel)
    one, two = train_losses(single), train_losses(run)
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    assert (run / "final" / "model.safetensors").is_file() and (run / "manifest.json").is_file()
    if parallel == "fsdp":
        assert (run / "step-00000006" / "dcp").is_dir()
        # Resume the 2-rank FSDP checkpoint of step 3 on one process: the rest of the curve is unchanged.
        saved = rewind_to_step_3(run)
        resumed = launch(tmp_path, corpus, shards, parallel, 1, micro_batch_size=4, parallel=parallel, grad_accum_steps=1)
        assert resumed == run
        assert (run / "step-00000003" / "state.json").stat().st_mtime_ns == saved  # resumed from it, not re-run
        after = train_losses(run)
        for step in (4, 5, 6):
            assert after[step] == pytest.approx(one[step], rel=1e-4), step


@pytest.mark.slow  # another launcher of the same two-rank run as test_two_ranks_match_one_rank
def test_accelerate_launch_gives_the_losses_of_one_rank(tmp_path, corpus, shards, single):
    """`accelerate launch --multi_gpu --num_processes 2` starts its processes through torchrun, on a CPU
    machine too (gloo). Its `--cpu` flag starts a single process whatever --num_processes says; tokenmill
    says so."""
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=STEPS, save_every=3, log_every=1, eval_every=3, micro_batch_size=2)
    config = tmp_path / "accelerate.yaml"
    config.write_text(yaml.safe_dump(raw))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision",
                  "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    train = ["-m", "tokenmill", "train", str(shards), "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*accelerate, "--multi_gpu", "--num_processes", "2", *train, "-o", str(tmp_path / "acc")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout
    one, two = train_losses(single), train_losses(tmp_path / "acc")
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    proc = subprocess.run([*accelerate, "--cpu", "--num_processes", "2", *train, "-o", str(tmp_path / "acc-cpu"),
                           "--set", "train.max_steps=3"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 rank(s)" in proc.stdout and "`accelerate launch --cpu` starts one process" in proc.stdout


@pytest.mark.slow
def test_fsdp_with_cpu_offload_matches_one_rank(tmp_path, corpus, shards, single):
    run = launch(tmp_path, corpus, shards, "offload", 2, micro_batch_size=2, parallel="fsdp", fsdp_cpu_offload=True)
    assert train_losses(run) == pytest.approx(train_losses(single), rel=1e-4)


@pytest.mark.slow  # another launch of the same two-rank run as test_two_ranks_match_one_rank
def test_two_nodes_on_this_machine_match_one_rank(tmp_path, corpus, shards, single):
    """Two torchrun launches (--nnodes=2, c10d rendezvous on 127.0.0.1), one process each, as two nodes
    would run them: the loss curve of one rank, and only rank 0 writes metrics and checkpoints."""
    import socket
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=STEPS, save_every=3, log_every=1, eval_every=3, micro_batch_size=2)
    config = tmp_path / "nodes.yaml"
    config.write_text(yaml.safe_dump(raw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nodes"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launches = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                                  "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                                  "--rdzv_id=tokenmill-test", "-m", "tokenmill", "train", str(shards), "-o", str(out),
                                  "--config", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for node in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    one, two = train_losses(single), train_losses(out)
    assert sorted(two) == list(range(1, STEPS + 1))  # one row per step: rank 0 alone logs
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000003", "step-00000006"]
    assert sum("[train] done" in o for o in outputs) == 1  # only rank 0 manages the stage


@pytest.mark.parametrize("parallel, first, then", [pytest.param("ddp", 2, 1, marks=pytest.mark.slow),
                                                   pytest.param("ddp", 1, 2, marks=pytest.mark.slow),
                                                   ("fsdp", 1, 2)])
def test_a_run_resumes_on_another_number_of_ranks(tmp_path, corpus, shards, single, parallel, first, then):
    """A run checkpointed at step 3 with `first` ranks continues with `then` ranks (the same global batch:
    micro_batch_size x ranks): the data position and the losses are the same. FSDP's 2 → 1 is in
    test_two_ranks_match_one_rank; its checkpoints are torch.distributed.checkpoint's, resharded on load."""
    micro = {1: 4, 2: 2}
    run = launch(tmp_path, corpus, shards, "resume", first, micro_batch_size=micro[first], parallel=parallel)
    if parallel == "fsdp":
        assert (run / "step-00000003" / "dcp").is_dir()
    saved = rewind_to_step_3(run)
    assert launch(tmp_path, corpus, shards, "resume", then, micro_batch_size=micro[then], parallel=parallel) == run
    assert (run / "step-00000003" / "state.json").stat().st_mtime_ns == saved  # resumed from it, not re-run
    one, after = train_losses(single), train_losses(run)
    for step in range(1, STEPS + 1):
        assert after[step] == pytest.approx(one[step], rel=1e-4), step
