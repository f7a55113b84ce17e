"""Ingest of a medium input: one 32 MB unit (the old cut) vs at least `min_units` units, in one run.

    apt-get install python3.11-doc
    .venv/bin/python bench/ingest_units.py [--corpus /usr/share/doc/python3.11/html/library]

The Python library reference (317 HTML pages, 25 MB) once ran as a single task on a 2-core machine: HTML
extraction is CPU-bound. Both runs use the local executor with every core; the documents (ids and texts, in
order) must be identical. Prints the times and their ratio and writes bench/results/ingest_units.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_ingest_units"


def ingest(corpus: Path, min_units: int) -> tuple[float, dict, list]:
    from tokenmill.documents import document_shards, read_shard
    from tokenmill.engine import datatrove_logs_to_files
    from tokenmill.ingest import IngestConfig, run
    datatrove_logs_to_files()
    out = WORK / f"min_units_{min_units}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    counts = run(IngestConfig(paths=[str(corpus)], min_units=min_units), out)
    seconds = time.perf_counter() - start
    docs = [(d.id, d.text) for shard in document_shards(out) for d in read_shard(shard)]
    return seconds, counts, docs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=Path("/usr/share/doc/python3.11/html/library"))
    args = parser.parse_args()
    from tokenmill.ingest import IngestConfig
    default_units = IngestConfig().min_units
    one_s, one_counts, one_docs = ingest(args.corpus, 1)
    many_s, many_counts, many_docs = ingest(args.corpus, default_units)
    result = {"corpus": str(args.corpus), "files": one_counts["files"], "cores": os.cpu_count(),
              "one_unit": {"seconds": round(one_s, 2), "units": one_counts["units"]},
              f"min_units_{default_units}": {"seconds": round(many_s, 2), "units": many_counts["units"]},
              "speedup": round(one_s / many_s, 2), "identical_documents": one_docs == many_docs}
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "ingest_units.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
