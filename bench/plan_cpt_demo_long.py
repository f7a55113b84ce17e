"""`tokenmill plan` on cpt-demo with a target long enough for five shares of proxies to fit in 30% of its
compute: the built-in's 150-step target cannot (five shares at the 10-step floor are 50 steps before any
cooldown), so the same config trains 1,000 steps here, and the proxies run 20, 30 and 45 steps per share
(budgets 0.02 / 0.03 / 0.045: 275 steps in all, 0.275x). What a user runs, timed: `tokenmill plan`, then, when it
recommends a share, `tokenmill run --plan` (the target at that share, the prediction beside the measurement).
Then full 1,000-step runs at the shares given with --check (the target's own training: its mixture at that
share, its schedule, its evaluation), each beside what the plan's laws predicted there. (docs/plan.md)

    make demo                                   # the base model: runs/demo/60_export
    .venv/bin/python bench/plan_cpt_demo_long.py --check 0.5 0.7 0.85 0.95 1.0 --recipe
    .venv/bin/python bench/plan_cpt_demo_long.py --budgets 0.1 0.175 0.25 --name plan_cpt_demo_quarter \
        --check 0.5 0.7 0.85 0.95 1.0                 # proxies to 1/4 of the target, beside the same full runs
    .venv/bin/python bench/plan_cpt_demo_long.py --target 5000x4 --budgets 0.02 0.035 0.048 \
        --name plan_cpt_demo_5000x4 --check 0.5 0.7 0.85   # a target of 5,000 steps of 4 x 256 tokens (0.295x)
    .venv/bin/python bench/plan_cpt_demo_long.py --target 5000x4 --budgets 0.1 0.175 0.25 \
        --name plan_cpt_demo_5000x4_quarter --check 0.5 0.7 0.85 0.62 0.82 --seeds 3   # its 1/4 proxies
    (--read-all: the proxies read all of the Python set, plan.match_repetition=false)

Writes bench/results/NAME.json after every step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# 1,000 steps read the Python set up to 5.6 times (at share 1.0): mixture.max_epochs (4 by default) is raised so
# that the shares the plan varies are all allowed; the proxies then subsample it to the same repetition rate.
TARGETS = {  # --target: the target's overrides, and where its full runs are kept (they do not depend on the proxies)
    "1000": (["--set", "train.max_steps=1000", "--set", "mixture.max_epochs=6"], "plan_cpt_demo_long"),
    # Five times the steps at a quarter of the batch (5.1M tokens, Python read up to 6.9 times): a run as long in
    # optimizer steps as continued pre-training runs are, on what this CPU affords (14 steps a second).
    "5000x4": (["--set", "train.max_steps=5000", "--set", "train.micro_batch_size=4", "--set", "mixture.max_epochs=8",
                "--set", "train.eval_every=500"],
               "plan_cpt_demo_5000x4"),
}


def tokenmill(*args: str) -> tuple[int, float]:
    started = time.time()
    code = subprocess.run([sys.executable, "-m", "tokenmill", *args], cwd=ROOT).returncode
    return code, round(time.time() - started, 1)


def full_run(cfg, run_dir: Path, full_runs: Path, share: float | None, seed: int = 0) -> dict:
    """The target's training at `share`, as `tokenmill run --plan` would train it (None: with the config's own
    mixture, the `cpt` recipe's): its bits per byte per set at its last evaluation in training (what the plan's
    check compares)."""
    from tokenmill import plan, train
    from tokenmill.pipeline import prepare_data
    shards = prepare_data(cfg, run_dir, False)  # the plan's own data stages: up to date
    out = full_runs / ((f"full-share-{share:g}" if share is not None else "full-recipe") + (f"-seed-{seed}" if seed else ""))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    if not (out / "manifest.json").is_file():
        started = time.time()
        mixture = plan.target_mixture(cfg, share) if share is not None else cfg.mixture
        train.run(cfg.model, cfg.train, shards, out, mixture=mixture)
        (out / "manifest.json").write_text(json.dumps({"s": round(time.time() - started, 1)}))
    return plan.measured(out / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shares", type=float, nargs="+", default=None, help="plan.shares.domain (default: the config's)")
    parser.add_argument("--check", type=float, nargs="*", default=[], help="shares to train in full, beside the laws")
    parser.add_argument("--recipe", action="store_true", help="also train in full with the config's own mixture")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the run at the recommended share (the target "
                        "is seed 0; the others are full runs beside it)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.02, 0.03, 0.045], help="plan.budgets")
    parser.add_argument("--target", choices=sorted(TARGETS), default="1000", help="the target run: 1,000 steps of "
                        "16 x 256 tokens, or 5,000 of 4 x 256")
    parser.add_argument("--read-all", action="store_true", help="plan.match_repetition=false: the proxies read all of "
                        "the Python set instead of the share they repeat as often as the target")
    parser.add_argument("--name", default="plan_cpt_demo_long", help="the plan's folder under bench/.work and its "
                        "results file under bench/results (e.g. plan_cpt_demo_quarter with --budgets 0.1 0.175 0.25)")
    args = parser.parse_args()
    if not (ROOT / "runs" / "demo" / "60_export" / "config.json").is_file():
        raise SystemExit("the base model is the demo's: run `make demo` first (runs/demo/60_export)")
    target_overrides, full_runs = TARGETS[args.target]
    full_runs = ROOT / "bench" / ".work" / full_runs
    overrides = target_overrides + ["--set", f"plan.budgets={args.budgets}"] + \
        (["--set", f"plan.shares.domain={args.shares}"] if args.shares else []) + \
        (["--set", "plan.match_repetition=false"] if args.read_all else [])
    WORK, RESULTS = ROOT / "bench" / ".work" / args.name, ROOT / "bench" / "results" / f"{args.name}.json"
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(overrides=overrides)
    code, results["plan_s"] = tokenmill("plan", "cpt-demo", "-o", str(WORK), *overrides)
    found = json.loads((WORK / "plan" / "plan.json").read_text())
    rec = found["recommendation"]
    results.update(compute=found["compute"], base=found["base"], points=found["points"],
                   recommendation={k: rec.get(k) for k in ("share", "prediction", "infeasible", "poor_fit", "left_out",
                                                           "objective_unreliable", "budget_holdout_domain",
                                                           "budget_holdout_general")})
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"proxies: {found['compute']['fraction']:.3f}x the target's compute ({found['compute']['proxy_steps']} steps "
          f"against {found['compute']['target_steps']}); share {rec['share']} (plan exit code {code})")
    if rec["share"] is not None:
        _, results["target_s"] = tokenmill("run", "cpt-demo", "-o", str(WORK), "--plan", *overrides)
        results["check"] = json.loads((WORK / "plan" / "check.json").read_text())
        RESULTS.write_text(json.dumps(results, indent=2))
    import os

    from tokenmill.config import load_config, resolve_config_path
    os.chdir(ROOT)  # the config's paths (model.init_from) are relative to where tokenmill runs
    cfg = load_config(resolve_config_path("cpt-demo"), overrides[1::2])
    grid = [round(g, 4) for g in rec["grid"]]
    results.setdefault("full_runs", {})
    for share in args.check:
        measured = full_run(cfg, WORK, full_runs, share)
        at = grid.index(round(share, 4)) if round(share, 4) in grid else None
        predicted = {found["objective"]: rec["predicted_objective"][at], found["constraint"]: rec["predicted_constraint"][at]} \
            if at is not None else {}
        results["full_runs"][f"{share:g}"] = {"measured": measured, "predicted": predicted,
                                              "error_relative": {k: measured[k] / v - 1 for k, v in predicted.items()},
                                              "rise": measured[found["constraint"]] - found["base"][found["constraint"]]}
        RESULTS.write_text(json.dumps(results, indent=2))
        print(f"share {share:g}: " + ", ".join(f"{k} measured {measured[k]:.4f}" + (
            f" predicted {predicted[k]:.4f} ({measured[k] / predicted[k] - 1:+.1%})" if k in predicted else "")
            for k in measured), flush=True)
    if rec["share"] is not None and args.seeds > 1:
        values = {name: [c["measured"]] for name, c in results["check"].items()}  # seed 0: the target
        for seed in range(1, args.seeds):
            measured = full_run(cfg, WORK, full_runs, rec["share"], seed)
            for name in values:
                values[name].append(measured[name])
        results["seeds"] = {name: {"values": v, "mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))}
                            for name, v in values.items()}
        RESULTS.write_text(json.dumps(results, indent=2))
        print(f"seeds at {rec['share']}: {results['seeds']}", flush=True)
    if args.recipe:
        measured = full_run(cfg, WORK, full_runs, None)
        results["full_runs"]["recipe"] = {"measured": measured,
                                          "rise": measured[found["constraint"]] - found["base"][found["constraint"]]}
        RESULTS.write_text(json.dumps(results, indent=2))
        print(f"the recipe's mixture: {measured}", flush=True)


if __name__ == "__main__":
    main()
