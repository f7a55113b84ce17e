"""Muon against AdamW on this CPU: tokens to reach AdamW's final validation loss, and time per token.

The demo's data (Shakespeare, its 4,096-token BPE) and two shapes: the demo's (`tiny`, 1.2M parameters) and a
~10M one (hidden 320, 8 layers). Each optimizer trains with tokenmill's trainer (`tokenmill train`, the same
config but `train.optimizer`), the same learning rate (Muon's update scaled to AdamW's RMS, so AdamW's rate
carries over), schedule, batches and seed; 3 seeds. The validation loss every 25 steps gives each run's curve;
Muon's tokens to reach the AdamW run's final loss (same seed; linear between evaluations) over AdamW's.

    .venv/bin/python bench/muon_vs_adamw.py [--steps 300] [--seeds 0 1 2]

Writes bench/results/muon_vs_adamw.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
from measure import tokens_to  # noqa: E402  (the GPU run's Muon step reads its curves the same way)
WORK = ROOT / "bench" / ".work" / "muon"
SHAPES = {
    "demo (tiny, 1.2M)": {"model.preset": "tiny", "train.micro_batch_size": 16},
    "~10M (hidden 320, 8 layers)": {"model.preset": "small", "model.hidden_size": 320, "model.intermediate_size": 864,
                                    "model.num_hidden_layers": 8, "model.num_attention_heads": 8,
                                    "model.num_key_value_heads": 4, "train.micro_batch_size": 8},
}


def tokenmill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True, stdout=subprocess.DEVNULL)


def curve(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["tokens"], r["val/val/loss"]) for r in rows if "val/val/loss" in r]


def tokens_per_s(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["perf/tokens_per_s"] for r in rows if "perf/tokens_per_s" in r][1:]  # the first window warms up
    return statistics.median(speeds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    shards = WORK / "data" / "30_shards"
    if not (shards / "train" / "meta.json").is_file():
        tokenmill("run", "demo", "-o", str(WORK / "data"), "--until", "tokenize")
    results = {"args": vars(args), "shapes": {}}
    for shape, settings in SHAPES.items():
        runs = {}
        for seed in args.seeds:
            for optimizer in ("adamw", "muon"):
                out = WORK / f"{list(SHAPES).index(shape)}-{optimizer}-{seed}"
                overrides = {**settings, "train.optimizer": optimizer, "train.seed": seed,
                             "train.max_steps": args.steps, "train.warmup_steps": args.steps // 20,
                             "train.eval_every": 25, "train.eval_tokens": 16384, "train.save_every": 0,
                             "train.log_every": 10, "train.lr_max": 3e-3, "train.lr_min": 3e-4, "train.seq_len": 256}
                started = time.time()
                if not (out / "final" / "config.json").is_file():
                    tokenmill("train", str(shards), "-o", str(out), "--config", "demo",
                              *(x for k, v in overrides.items() for x in ("--set", f"{k}={json.dumps(v)}")))
                runs[(optimizer, seed)] = {"curve": curve(out), "tokens_per_s": tokens_per_s(out),
                                           "seconds": round(time.time() - started, 1)}
                print(f"[muon] {shape} {optimizer} seed {seed}: final val {runs[(optimizer, seed)]['curve'][-1][1]:.4f}"
                      f", {runs[(optimizer, seed)]['tokens_per_s']:,.0f} tokens/s", flush=True)
        per_seed = []
        for seed in args.seeds:
            adamw, muon = runs[("adamw", seed)], runs[("muon", seed)]
            target = adamw["curve"][-1][1]
            reach = tokens_to(muon["curve"], target)
            per_seed.append({"seed": seed, "adamw_final": target, "muon_final": muon["curve"][-1][1],
                             "muon_tokens_to_adamw_final": reach, "adamw_tokens": adamw["curve"][-1][0],
                             "tokens_ratio": None if reach is None else round(reach / adamw["curve"][-1][0], 3),
                             "time_per_token_ratio": round(adamw["tokens_per_s"] / muon["tokens_per_s"], 3)})
        ratios = [s["tokens_ratio"] for s in per_seed if s["tokens_ratio"] is not None]
        results["shapes"][shape] = {
            "seeds": per_seed,
            "tokens_ratio_mean": round(statistics.mean(ratios), 3) if len(ratios) == len(per_seed) else None,
            "tokens_ratio_spread": round(statistics.stdev(ratios), 3) if len(ratios) > 1 else None,
            "time_per_token_ratio_mean": round(statistics.mean(s["time_per_token_ratio"] for s in per_seed), 3),
            "curves": {f"{o}-{s}": r["curve"] for (o, s), r in runs.items()}}
    (ROOT / "bench" / "results" / "muon_vs_adamw.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'shape':<30} {'AdamW final':>12} {'Muon final':>11} {'Muon tokens / AdamW':>20} {'time/token':>11}")
    for shape, r in results["shapes"].items():
        adamw = statistics.mean(s["adamw_final"] for s in r["seeds"])
        muon = statistics.mean(s["muon_final"] for s in r["seeds"])
        print(f"{shape:<30} {adamw:>12.4f} {muon:>11.4f} {str(r['tokens_ratio_mean']):>20} "
              f"{r['time_per_token_ratio_mean']:>11}")


if __name__ == "__main__":
    main()
