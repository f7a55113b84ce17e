"""Extending a model's context with continued pre-training: the demo's model (trained at 256 tokens) to 1024,
with a new RoPE base, with YaRN, and with no change (the control), on the same long documents and budget.

    make demo                                       # the base: runs/demo/60_export, its shards runs/demo/30_shards
    .venv/bin/python bench/context_extension.py [--steps 200] [--variants control theta yarn]

For each variant: the model at step 0 (the base with the variant's RoPE and length) and after --steps of
CPT at seq_len 1024 are evaluated the same way, on the same 1024-token windows of the demo's validation
plays: the loss by position bucket, and passkey retrieval (tokenmill make-passkey) by length and depth.
Writes bench/results/context_extension.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_context"
LONG = 1024
VARIANTS = {
    "control": {},
    # NTK-aware base for a 4x longer context: 10000 x 4^(d / (d - 2)), head dim d = 32 (bloc97, 2023)
    "theta": {"rope": {"theta": 44_000.0}},
    "yarn": {"rope": {"scaling": "yarn", "factor": 4, "original_max_position_embeddings": 256}},
}


def config(base: Path, variant: dict, steps: int, passkey: Path) -> dict:
    return {"model": {"preset": None, "init_from": str(base), "max_position_embeddings": LONG, **variant},
            "tokenize": {"tokenizer": str(base)},
            "train": {"seq_len": LONG, "micro_batch_size": 4, "max_steps": steps, "lr_max": 3e-4, "lr_min": 3e-5,
                      "warmup_steps": 10, "eval_every": steps, "save_every": steps, "log_every": 10,
                      "eval_tokens": 16384, "eval_at_start": True, "loggers": ["jsonl"]},
            "eval": {"seq_len": LONG, "max_tokens": 65536, "tasks": [str(passkey)]}}


def run_variant(name: str, base: Path, shards: Path, steps: int, passkey: Path) -> dict:
    from tokenmill import evaluation, train
    from tokenmill.config import validate
    from tokenmill.model import base_config
    cfg = validate(config(base, VARIANTS[name], steps, passkey))
    out = WORK / name
    start = time.perf_counter()
    train.run(cfg.model, cfg.train, shards, out / "ck")
    train_s = time.perf_counter() - start
    results = evaluation.run(cfg.eval, out / "ck", {"val": shards}, out / "eval", LONG, before=base,
                             base_changes=base_config(cfg.model))
    after, before = results["sets"]["val"], results["before"]["sets"]["val"]
    task, task_before = results["tasks"]["passkey"], results["before"]["tasks"]["passkey"]
    return {"train_s": round(train_s, 1), "tokens": steps * 4 * LONG,
            "loss": {"before": before["loss"], "after": after["loss"]},
            "loss_by_position": {"before": before["loss_by_position"], "after": after["loss_by_position"]},
            "passkey_acc": {"before": task_before["acc"], "after": task["acc"]},
            "passkey_by_depth": {"before": task_before["acc_by"]["depth"], "after": task["acc_by"]["depth"]},
            "passkey_by_length": {"before": task_before["acc_by"]["length"], "after": task["acc_by"]["length"]}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / "demo" / "60_export")
    parser.add_argument("--shards", type=Path, default=ROOT / "runs" / "demo" / "30_shards")
    args = parser.parse_args()
    from tokenmill.cli import main as cli
    WORK.mkdir(parents=True, exist_ok=True)
    passkey = WORK / "passkey.jsonl"
    assert cli(["make-passkey", "-o", str(passkey), "--tokenizer", str(args.base), "--lengths", "256", "512",
                str(LONG), "--depths", "0", "0.25", "0.5", "0.75", "1", "--per-cell", "8"]) == 0
    results = {"base": str(args.base), "seq_len": LONG, "steps": args.steps,
               "variants": {name: run_variant(name, args.base, args.shards, args.steps, passkey)
                            for name in args.variants}}
    out = ROOT / "bench" / "results" / "context_extension.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    from tokenmill.evaluation.positions import in_order
    for name, r in results["variants"].items():
        print(f"{name:8} loss {r['loss']['before']:.3f} → {r['loss']['after']:.3f}  by position (after): "
              + ", ".join(f"{k} {v:.2f}" for k, v in in_order(r["loss_by_position"]["after"]).items())
              + f"  passkey {r['passkey_acc']['before']:.2f} → {r['passkey_acc']['after']:.2f}")


if __name__ == "__main__":
    main()
