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
        shutil.rmtree(run / "step-00000006")
        shutil.rmtree(run / "final")
        (run / "manifest.json").unlink()
        resumed = launch(tmp_path, corpus, shards, parallel, 1, micro_batch_size=4, parallel=parallel, grad_accum_steps=1)
        assert resumed == run
        after = train_losses(run)
        for step in (4, 5, 6):
            assert after[step] == pytest.approx(one[step], rel=1e-4), step


def test_fsdp_with_cpu_offload_matches_one_rank(tmp_path, corpus, shards, single):
    run = launch(tmp_path, corpus, shards, "offload", 2, micro_batch_size=2, parallel="fsdp", fsdp_cpu_offload=True)
    assert train_losses(run) == pytest.approx(train_losses(single), rel=1e-4)
