"""One writer per folder (tokenmill/lock.py), with real processes: a second writer is refused naming the
first, and a lock left by a killed process is taken over with a line saying so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_pipeline, wait_for_rows

from tokenmill import lock
from tokenmill.cli import main

HOLDER = "import sys, time; from pathlib import Path; from tokenmill.lock import hold\n" \
         "with hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)"


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_folder_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        with pytest.raises(lock.FolderInUse, match=f"PID {proc.pid} on .* since .*-c"):
            with lock.hold(folder):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads(lock.lock_path(folder).read_text())["pid"] == proc.pid  # the dead holder's record is left
    said = []
    with lock.hold(folder, log=said.append):
        assert json.loads(lock.lock_path(folder).read_text())["pid"] == os.getpid()
        with lock.hold(folder):  # a nested hold of the same folder by the same process
            pass
    assert len(said) == 1 and f"taking over the lock of PID {proc.pid}" in said[0]
    assert not lock.lock_path(folder).exists()  # released: nothing left to take over
    with lock.hold(folder, log=said.append):
        pass
    assert len(said) == 1, "a released lock was reported as a dead holder's"


def test_a_second_tokenmill_run_on_a_run_folder_in_use_is_refused(tmp_path, corpus, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline(corpus)))
    proc = _holder(tmp_path / "run")
    try:
        assert main(["run", str(config), "-o", str(tmp_path / "run")]) == 2
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait()
    assert f"PID {proc.pid}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "00_raw").exists(), "the refused run wrote into the folder"


def test_two_tokenmill_train_on_one_folder_one_is_refused_and_a_killed_one_is_taken_over(shards, corpus, tmp_path):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=100_000, save_every=0, eval_every=0, log_every=5, loggers=["jsonl"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "tokenmill", "train", str(shards), "-o", str(out), "--config", str(config)]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rows(out / "metrics.jsonl", 2)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another tokenmill: PID {first.pid}" in second.stderr
        time.sleep(0.5)
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(steps) == len(set(steps)) and first.poll() is None, "the second run wrote metrics too"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    third = subprocess.run([*argv, "--set", "train.max_steps=10"], capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock of PID {first.pid}" in third.stdout
    assert (out / "final" / "config.json").is_file()
