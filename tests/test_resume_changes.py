"""A run's checkpoints are never lost because its config changed: a compatible change (more steps)
continues from the newest checkpoint, any other is refused with what to do, and a damaged checkpoint is
named and skipped (automatic resume) or refused (named by the user)."""

import json

import pytest
import yaml

from conftest import tiny_pipeline, wait_for_rows
from tokenmill.checkpoints import checkpoint_dirs
from tokenmill.cli import main
from tokenmill.config import validate
from tokenmill.pipeline import run_pipeline
from tokenmill.stage import ResumeConflict, file_digest


def steps_and_losses(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


@pytest.fixture
def train_cli(shards, corpus, tmp_path):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=8, save_every=4, keep_last=2, log_every=1, eval_every=4)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    return lambda out, *extra: main(["train", str(shards), "--config", str(config), "-o", str(out), *extra])


def test_more_steps_continue_from_the_newest_checkpoint_without_a_flag(train_cli, tmp_path, capsys):
    run = tmp_path / "a"
    assert train_cli(run) == 0
    step8 = run / "step-00000008"
    assert train_cli(tmp_path / "reference", "--resume-from", str(step8), "--set", "train.max_steps=10") == 0
    assert train_cli(run, "--set", "train.max_steps=10") == 0  # the user extends the run: no flag
    assert [p.name for p in checkpoint_dirs(run)] == ["step-00000008", "step-00000010"]
    extended = steps_and_losses(run / "metrics.jsonl")
    assert [s for s, _ in extended] == list(range(1, 11))  # steps 1-8 kept, 9-10 added: not restarted
    reference = steps_and_losses(tmp_path / "reference" / "metrics.jsonl")
    assert [s for s, _ in reference] == [9, 10]
    assert [v for _, v in extended[-2:]] == pytest.approx([v for _, v in reference], rel=1e-6)


def test_an_incompatible_change_is_refused_and_keeps_every_checkpoint(train_cli, tmp_path, capsys):
    run = tmp_path / "a"
    assert train_cli(run) == 0
    before = {p.name: file_digest(p / "model.safetensors") for p in checkpoint_dirs(run)}
    capsys.readouterr()
    assert train_cli(run, "--set", "train.lr_max=0.001", "--set", "train.max_steps=12") == 2
    err = capsys.readouterr().err
    assert "train.lr_max: 0.01 → 0.001" in err and "max_steps" not in err  # more steps alone would continue
    assert "--resume-from" in err and "--force" in err and "step-00000008" in err
    assert {p.name: file_digest(p / "model.safetensors") for p in checkpoint_dirs(run)} == before
    assert (run / "final" / "config.json").is_file()

    assert train_cli(run, "--set", "train.micro_batch_size=2", "--set", "train.max_steps=10") == 2
    assert "took 128 tokens per optimizer step, this one 64" in capsys.readouterr().err  # the global batch halved
    assert train_cli(run, "--set", "train.max_steps=6") == 2  # fewer steps than the run already made
    assert "at step 8, past train.max_steps 6" in capsys.readouterr().err

    assert train_cli(run, "--set", "train.lr_max=0.001", "--force") == 0  # the explicit discard
    assert [s for s, _ in steps_and_losses(run / "metrics.jsonl")][0] == 1
    assert file_digest(run / "step-00000008" / "model.safetensors") != before["step-00000008"]


def test_a_truncated_checkpoint_is_skipped_when_automatic_and_refused_when_named(train_cli, tmp_path, capsys, caplog):
    run = tmp_path / "a"
    assert train_cli(run) == 0
    weights = run / "step-00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert train_cli(tmp_path / "b", "--resume-from", str(run / "step-00000008")) == 2
    err = capsys.readouterr().err
    assert "step-00000008: model.safetensors is damaged or cut short (1,000 bytes" in err
    assert "step-00000004" in err  # the earlier one it can resume from
    assert main(["export", str(run / "step-00000008"), "-o", str(tmp_path / "hf")]) == 2
    assert "model.safetensors is damaged or cut short" in capsys.readouterr().err

    assert train_cli(run, "--set", "train.max_steps=10") == 0  # falls back to step 4 and redoes 5-10
    assert "skipping" in caplog.text and "step-00000008" in caplog.text
    assert [s for s, _ in steps_and_losses(run / "metrics.jsonl")] == list(range(1, 11))
    assert [p.name for p in checkpoint_dirs(run)] == ["step-00000008", "step-00000010"]


def test_tokenmill_run_extends_a_finished_run_and_refuses_a_change_before_the_data_stages(corpus, tmp_path):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=20, save_every=10, eval_every=10)
    run_pipeline(validate(raw), tmp_path / "run")
    filtered = (tmp_path / "run" / "10_filtered" / "manifest.json").read_text()

    raw["train"]["max_steps"] = 25
    run_pipeline(validate(raw), tmp_path / "run")
    steps = [s for s, _ in steps_and_losses(tmp_path / "run" / "metrics.jsonl")]
    assert steps[-1] == 25 and steps.count(20) == 1 and steps == sorted(steps)
    assert (tmp_path / "run" / "40_checkpoints" / "step-00000020").is_dir()

    raw["train"]["seq_len"] = 16
    raw["filter"]["steps"][0]["min_chars"] = 50  # would re-run filter and dedup, if training were not refused first
    with pytest.raises(ResumeConflict, match="train.seq_len: 32 → 16"):
        run_pipeline(validate(raw), tmp_path / "run")
    assert (tmp_path / "run" / "10_filtered" / "manifest.json").read_text() == filtered
    assert (tmp_path / "run" / "40_checkpoints" / "step-00000025").is_dir()


def test_sigterm_saves_at_the_next_step_and_the_rerun_equals_an_uninterrupted_run(shards, corpus, tmp_path):
    """What Slurm (before preemption), Kubernetes or a spot instance sends: a checkpoint at the step boundary,
    exit status 143, and the same command resumes exactly."""
    import os
    import signal
    import subprocess
    import sys
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=150, save_every=1000, log_every=1, eval_every=75, loggers=["jsonl"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = [sys.executable, "-m", "tokenmill", "train", str(shards), "--config", str(config)]
    assert subprocess.run([*argv, "-o", str(tmp_path / "straight")], capture_output=True).returncode == 0
    proc = subprocess.Popen([*argv, "-o", str(tmp_path / "stopped")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    wait_for_rows(metrics, 20)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert "stopped by SIGTERM at step" in proc.stderr.read()
    [saved] = checkpoint_dirs(tmp_path / "stopped")  # not a multiple of save_every: the step it stopped at
    assert 20 <= int(saved.name.split("-")[1]) < 150 and not (tmp_path / "stopped" / "final").exists()
    assert subprocess.run([*argv, "-o", str(tmp_path / "stopped")], capture_output=True).returncode == 0
    straight, resumed = steps_and_losses(tmp_path / "straight" / "metrics.jsonl"), steps_and_losses(metrics)
    assert [s for s, _ in resumed] == [s for s, _ in straight]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-6)


def test_a_stop_signal_during_the_last_evaluation_stops_the_command_once_the_run_is_whole(train_cli, tmp_path,
                                                                                          monkeypatch, capsys):
    """Past the last step's check, a SIGTERM used to be recorded and dropped: `tokenmill plan` went on to its next
    proxy and a pipeline to its next stage. Now the run finishes whole (its final export too), the command exits
    143 as for any stop, and the same command then finds the run done without training a step again."""
    import os
    import signal

    from tokenmill.train import loop
    evaluate = loop.log_evaluation

    def signalled_at_the_last_step(fn, model, sinks, state, *rest):
        if state["step"] == 8:
            os.kill(os.getpid(), signal.SIGTERM)  # what Slurm sends; the trainer's handler records it
        return evaluate(fn, model, sinks, state, *rest)
    monkeypatch.setattr(loop, "log_evaluation", signalled_at_the_last_step)
    out = tmp_path / "stopped"
    assert train_cli(out) == 143
    assert "stopped by SIGTERM at step 8" in capsys.readouterr().err
    assert (out / "final" / "config.json").is_file() and not (out / "manifest.json").exists()
    monkeypatch.setattr(loop, "log_evaluation", evaluate)
    rows = (out / "metrics.jsonl").read_text()
    assert train_cli(out) == 0 and (out / "manifest.json").is_file()
    assert (out / "metrics.jsonl").read_text() == rows  # nothing trained or evaluated twice
