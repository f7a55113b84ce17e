"""Tokenization on the executor vs raw `tokenizers` batch encoding, on the same text, in one run.

    apt-get install linux-doc-6.1 python3.11-doc
    .venv/bin/python bench/tokenize_scaling.py [--mb 1000] [--tasks 2]

The corpus is the kernel and Python documentation (ingested by bench/minhash_vs_datatrove.py's folders, or here),
repeated with fresh ids until it holds `--mb` MB of text, in 16 MB document shards. Three measurements:
- raw, one thread: `Tokenizer.encode_batch` over the texts held in memory, RAYON_NUM_THREADS=1 (its own
  process), on the first `--raw-shards` shards (a rate: MB/s);
- raw, all threads: the same with every core (what one tokenmill process did before);
- tokenmill: `tokenize.run` with `--tasks` tasks, reading the shards, writing token shards, merging meta.json.
The target is tokenmill >= 0.9 x tasks x raw one-thread. Peak RSS of each task's process is reported too.
Writes bench/results/tokenize_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_tokenize"
SOURCES = [ROOT / "runs" / "bench_minhash" / "kernel" / "docs", ROOT / "runs" / "bench_minhash" / "python-docs" / "docs"]


def corpus(mb: int) -> Path:
    from tokenmill.documents import Document, read_documents, write_documents
    folder = WORK / f"docs_{mb}mb"
    if any(folder.glob("docs-*.jsonl.gz")):
        return folder
    if not all(s.is_dir() for s in SOURCES):
        raise SystemExit("run bench/minhash_vs_datatrove.py --corpora kernel python-docs first (it ingests them)")
    base = [d for s in SOURCES for d in read_documents(s)]

    def repeated():
        chars, copy = 0, 0
        while chars < mb * 1_000_000:
            for d in base:
                yield Document(f"{copy}:{d.id}", d.text)
                chars += len(d.text)
            copy += 1
    write_documents(repeated(), folder, chars_per_shard=16_000_000)
    return folder


RAW = """
import sys, time
from tokenmill.documents import read_documents
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[2]).backend_tokenizer
from tokenmill.documents import document_shards, read_shard
texts = [d.text for shard in document_shards(sys.argv[1])[:int(sys.argv[3])] for d in read_shard(shard)]
print(sum(map(len, texts)) / 1e6)
started = time.perf_counter()
for i in range(0, len(texts), 256):
    tok.encode_batch(texts[i:i + 256], add_special_tokens=False)
print(time.perf_counter() - started)
"""


def raw_mb_per_s(docs: Path, tokenizer: Path, shards: int, threads: int | None) -> float:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", RAW, str(docs), str(tokenizer), str(shards)], env=env, check=True,
                         capture_output=True, text=True).stdout
    mb, seconds = map(float, out.strip().splitlines()[-2:])
    return mb / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=os.cpu_count())
    parser.add_argument("--raw-shards", type=int, default=12, help="shards the raw rates are measured on")
    args = parser.parse_args()
    from tokenmill.documents import read_documents
    from tokenmill.tokenize import TokenizeConfig, run, train_tokenizer
    docs = corpus(args.mb)
    mb = sum(len(d.text) for d in read_documents(docs)) / 1e6
    tokenizer = WORK / "tokenizer"
    if not (tokenizer / "tokenizer" / "tokenizer.json").is_file():
        train_tokenizer(TokenizeConfig(vocab_size=8192), SOURCES, tokenizer)
    one = raw_mb_per_s(docs, tokenizer / "tokenizer", args.raw_shards, 1)
    every = raw_mb_per_s(docs, tokenizer / "tokenizer", args.raw_shards, None)
    out = WORK / "shards"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    counts = run(TokenizeConfig(tokenizer=str(tokenizer / "tokenizer"), executor={"workers": args.tasks}), docs, out)
    ours = mb / (time.perf_counter() - started)
    row = {"mb": round(mb, 1), "shards": len(list(docs.glob("docs-*.jsonl.gz"))), "tasks": args.tasks,
           "tokens": counts["tokens_out"], "raw_one_thread_mb_s": round(one, 2), "raw_all_threads_mb_s": round(every, 2),
           "tokenmill_mb_s": round(ours, 2), "ratio_to_tasks_x_raw_one_thread": round(ours / (args.tasks * one), 3)}
    print(json.dumps(row, indent=1))
    path = ROOT / "bench" / "results" / "tokenize_scaling.json"
    path.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
