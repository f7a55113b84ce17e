"""MinHash dedup: tokenmill's memoised signatures vs datatrove's own blocks, in one run, on the same input.

    apt-get install linux-doc-6.1 python3.11-doc     # two real corpora of long documents
    .venv/bin/python bench/minhash_vs_datatrove.py [--corpora kernel python-docs generated] [--generated-docs 1000000]

Both run the full four-stage pipeline (signatures → buckets → clusters → filter) through `minhash_dedup` with
the same executor (one task per input shard, every core). The decisions are compared byte for byte: the
signature files, the removal ids, the cluster sizes, and the ids of the documents kept. Prints a table and
writes bench/results/minhash_vs_datatrove.json.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_minhash"
CORPORA = {"kernel": Path("/usr/share/doc/linux-doc-6.1/Documentation"),
           "python-docs": Path("/usr/share/doc/python3.11/html")}


def ingest(name: str, n_generated: int) -> Path:
    from tokenmill.documents import Document, write_documents
    from tokenmill.ingest import IngestConfig, run
    folder = WORK / name / "docs"
    if any(folder.glob("docs-*.jsonl.gz")):
        return folder
    if name == "generated":  # the seeded text of the tests, as in data_stage_vs_datatrove.py's MinHash section
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_text
        rng = random.Random(n_generated)
        write_documents((Document(f"d{i}", make_text(rng, 12)) for i in range(n_generated)), folder,
                        chars_per_shard=16_000_000)
        return folder
    if not any(CORPORA[name].iterdir()):
        raise SystemExit(f"{CORPORA[name]} is empty: apt-get install linux-doc-6.1 python3.11-doc")
    run(IngestConfig(paths=[str(CORPORA[name])], html_extractor="resiliparse"), folder)
    return folder


def dedup(docs: Path, implementation: str) -> tuple[float, Path, dict]:
    from tokenmill.dedup.minhash import MinhashConfig, minhash_dedup
    from tokenmill.engine import ExecutorConfig
    out = docs.parent / implementation
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    counts = minhash_dedup(MinhashConfig(implementation=implementation), ExecutorConfig(), docs, out / "kept",
                           out / "work")
    return time.perf_counter() - started, out, counts


def same_files(a: Path, b: Path, pattern: str) -> bool | str:
    """True when both sides wrote the same files, byte for byte; "none" when neither wrote any."""
    files_a = sorted(p.relative_to(a) for p in a.rglob(pattern))
    files_b = sorted(p.relative_to(b) for p in b.rglob(pattern))
    if not files_a and not files_b:
        return "none"
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def kept_ids(folder: Path) -> list[str]:
    from tokenmill.documents import read_documents
    return [d.id for d in read_documents(folder)]


def compare(name: str, n_generated: int) -> dict:
    from tokenmill.documents import read_documents
    docs = ingest(name, n_generated)
    n_docs = n_chars = 0
    for doc in read_documents(docs):
        n_docs, n_chars = n_docs + 1, n_chars + len(doc.text)
    t_dt, out_dt, counts_dt = dedup(docs, "datatrove")
    t_ours, out_ours, counts_ours = dedup(docs, "memoised")
    row = {"docs": n_docs, "mb": round(n_chars / 1e6, 1), "shards": len(list(docs.glob("docs-*.jsonl.gz"))),
           "datatrove_s": round(t_dt, 1), "memoised_s": round(t_ours, 1), "speedup": round(t_dt / t_ours, 2),
           "removed": counts_ours["drops"].get("minhash/near_duplicate", 0),
           "same_signatures": same_files(out_dt / "work" / "signatures", out_ours / "work" / "signatures", "*.sig"),
           "same_removals": same_files(out_dt / "work" / "remove_ids", out_ours / "work" / "remove_ids", "*.remove"),
           "same_cluster_sizes": counts_dt["cluster_sizes"] == counts_ours["cluster_sizes"],
           "same_kept_ids": kept_ids(out_dt / "kept") == kept_ids(out_ours / "kept")}
    shutil.rmtree(out_dt, ignore_errors=True)
    shutil.rmtree(out_ours, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="*", default=["kernel", "python-docs", "generated"],
                        choices=[*CORPORA, "generated"])
    parser.add_argument("--generated-docs", type=int, default=1_000_000)
    args = parser.parse_args()
    results_path = ROOT / "bench" / "results" / "minhash_vs_datatrove.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    import os
    print(f"{os.cpu_count()} cores")
    print("| corpus | docs | MB | shards | datatrove s | memoised s | speedup | removed | identical "
          "(signatures, removals, cluster sizes, kept ids) |")
    for name in args.corpora:
        row = compare(name, args.generated_docs)
        label = f"generated ({row['docs']:,})" if name == "generated" else name
        results[label] = row
        same = all(row[k] for k in ("same_signatures", "same_removals", "same_cluster_sizes", "same_kept_ids"))
        print(f"| {label} | {row['docs']:,} | {row['mb']} | {row['shards']} | {row['datatrove_s']} | "
              f"{row['memoised_s']} | {row['speedup']}x | {row['removed']:,} | {'yes' if same else row} |", flush=True)
        results_path.parent.mkdir(exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
