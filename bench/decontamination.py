"""A labelled contamination benchmark from real text, in English and Japanese: precision and recall by style
of injection, and speed, for tokenmill's decontaminate step and datatrove's n-gram decontamination filter.

    apt-get install debian-handbook
    .venv/bin/python bench/decontamination.py [--per-style 50]

The Debian Administrator's Handbook, in English and in Japanese (a script without spaces): its pages are
shuffled (seeded); a third become the evaluation set, whose documents are paragraphs; the rest are cut into
training documents of five paragraphs. Evaluation paragraphs are injected into training documents in four
styles, as Marin labelled its own (marin#7051):
- verbatim: the paragraph is a training document of its own;
- own_paragraph: it sits between two paragraphs of a training document;
- short_line: a short excerpt of it (20 words / 60 characters) is a line of a training document;
- embedded: a 40-word / 120-character excerpt sits in the middle of one of a document's paragraphs.
Every other training document is a hard negative: the same book, the same vocabulary and commands, no
passage of the evaluation set. A negative that shares a 60-character normalised substring with the evaluation
text (a real overlap of the book with itself) is left out of the labels, and counted.

A document counts as flagged when the step dropped it or cut anything out of it. Writes
bench/results/decontamination.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_decontamination"
HANDBOOK = Path("/usr/share/doc/debian-handbook/html")
LANGUAGES = {"en": ("en-US", 200, "words"), "ja": ("ja-JP", 80, "chars")}
STYLES = ("verbatim", "own_paragraph", "short_line", "embedded")


def pages(folder: Path) -> list[str]:
    from tokenmill.ingest import IngestConfig, iter_documents
    return [d.text for d in iter_documents(IngestConfig(paths=[str(folder)])) if d.text.strip()]


def excerpt(text: str, size: int, unit: str, rng: random.Random) -> str:
    """A run of `size` words (or characters) from inside the paragraph."""
    if unit == "words":
        words = text.split()
        start = rng.randint(0, max(0, len(words) - size))
        return " ".join(words[start:start + size])
    start = rng.randint(0, max(0, len(text) - size))
    return text[start:start + size]


def own_script_share(text: str) -> float:
    """The share of a text's letters written in a script without spaces (kana, kanji)."""
    from tokenmill.decontaminate.ngrams import has_no_space_script
    letters = [c for c in text if c.isalnum()]
    return sum(has_no_space_script(c) for c in letters) / max(len(letters), 1)


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).casefold())


def shingles(text: str, k: int = 60) -> set[str]:
    s = _norm(text)
    return {s[i:i + k] for i in range(0, max(1, len(s) - k + 1))}


def build(lang: str, per_style: int, seed: int) -> tuple[list[str], list[dict], int]:
    """(evaluation paragraphs, labelled training documents [{id, text, style}], negatives left out)."""
    folder, min_chars, unit = LANGUAGES[lang]
    rng = random.Random(seed)
    book = pages(HANDBOOK / folder)
    rng.shuffle(book)
    cut = len(book) // 3
    paragraphs = [p.strip() for page in book[:cut] for p in page.split("\n") if len(p.strip()) >= min_chars
                  and (unit == "words" or own_script_share(p) >= 0.8)]  # the Japanese edition keeps some English
    rng.shuffle(paragraphs)
    evaluation = paragraphs[:max(4 * per_style, 240)]
    chunks = []
    for page in book[cut:]:
        lines = [p for p in page.split("\n") if p.strip()]
        chunks += ["\n".join(lines[i:i + 5]) for i in range(0, len(lines), 5)]
    rng.shuffle(chunks)
    docs, used = [], iter(evaluation[:4 * per_style])
    hosts = iter(chunks)
    for style in STYLES:
        for k in range(per_style):
            para, host = next(used), next(hosts)
            lines = host.split("\n")
            at = rng.randint(0, len(lines))
            if style == "verbatim":
                text = para
            elif style == "own_paragraph":
                text = "\n".join(lines[:at] + [para] + lines[at:])
            elif style == "short_line":
                text = "\n".join(lines[:at] + [excerpt(para, 20 if unit == "words" else 60, unit, rng)] + lines[at:])
            else:
                inner = max(range(len(lines)), key=lambda i: len(lines[i]))
                target = lines[inner]
                pos = target.find(" ", len(target) // 2) if unit == "words" else len(target) // 2
                pos = len(target) // 2 if pos < 0 else pos
                piece = excerpt(para, 40 if unit == "words" else 120, unit, rng)
                lines[inner] = target[:pos] + (" " if unit == "words" else "") + piece + \
                    (" " if unit == "words" else "") + target[pos:]
                text = "\n".join(lines)
            docs.append({"id": f"{lang}-{style}-{k}", "text": text, "style": style})
    eval_shingles = set().union(*(shingles(p) for p in evaluation))
    left_out = 0
    for i, chunk in enumerate(hosts):
        if shingles(chunk) & eval_shingles:
            left_out += 1
            continue
        docs.append({"id": f"{lang}-negative-{i}", "text": chunk, "style": "negative"})
    return evaluation, docs, left_out


def run_tokenmill(evaluation: list[str], docs: list[dict], work: Path, n_chars: int = 40) -> tuple[set[str], float]:
    """The decontaminate step on the documents; seconds without building the index (as for datatrove)."""
    from tokenmill.decontaminate import DecontaminateConfig, prepare, run
    from tokenmill.documents import Document, read_documents, write_documents
    shutil.rmtree(work, ignore_errors=True)
    (work / "eval").mkdir(parents=True)
    for i, text in enumerate(evaluation):
        (work / "eval" / f"{i:04d}.txt").write_text(text)
    write_documents((Document(d["id"], d["text"]) for d in docs), work / "in")
    # max_share raised: the benchmark contaminates on purpose, far past what a real dataset holds.
    cfg = DecontaminateConfig(sets={"eval": str(work / "eval")}, max_share=0.9, n_chars=n_chars)
    prepared = prepare(cfg)
    start = time.perf_counter()
    run(cfg, work / "in", work / "out", prepared)
    seconds = time.perf_counter() - start
    kept = {d.id: d.text for d in read_documents(work / "out")}
    flagged = {d["id"] for d in docs if kept.get(d["id"]) != d["text"]}
    return flagged, seconds


def run_datatrove(evaluation: list[str], docs: list[dict], lang: str, work: Path) -> tuple[set[str] | None, float, str]:
    """datatrove's NGramsDecontFilter (12-grams, whole document), its index written the way its indexer writes
    it (the indexer itself needs lighteval, whose task loading needs the network)."""
    try:
        import numpy as np
        from datatrove.data import Document as DtDocument
        from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
        from datatrove.utils.hashing import create_hash_func
        from datatrove.utils.word_tokenizers import load_word_tokenizer
        language = {"en": "eng", "ja": "jpn"}[lang]
        config = NGramsDecontConfig()
        indexer = type("Index", (), {})()
        indexer.config, indexer.hash_func = config, create_hash_func(config.hash_config)
        indexer.tokenizer = load_word_tokenizer(language)
        hashes = set()
        for text in evaluation:
            hashes.update(NGramsDecontIndexer.compute_hashes(indexer, text))
        index_dir = work / "datatrove_index"
        shutil.rmtree(index_dir, ignore_errors=True)
        index_dir.mkdir(parents=True)
        np.array(sorted(hashes), dtype=config.hash_config.np_descr).tofile(index_dir / "eval.index.hashes")
        block = NGramsDecontFilter(str(index_dir), config=config, language=language)
        start = time.perf_counter()
        flagged = {d["id"] for d in docs if block.filter(DtDocument(text=d["text"], id=d["id"])) is not True}
        return flagged, time.perf_counter() - start, ""
    except Exception as e:  # noqa: BLE001 (report why it could not run, and go on)
        return None, 0.0, f"{type(e).__name__}: {e}"


def scores(flagged: set[str], docs: list[dict]) -> dict:
    by_style = {}
    for style in STYLES:
        ids = [d["id"] for d in docs if d["style"] == style]
        by_style[style] = {"recall": sum(i in flagged for i in ids) / len(ids), "n": len(ids)}
    negatives = [d["id"] for d in docs if d["style"] == "negative"]
    false_pos = sum(i in flagged for i in negatives)
    true_pos = sum(d["id"] in flagged for d in docs if d["style"] != "negative")
    positives = len(docs) - len(negatives)
    return {"precision": true_pos / max(true_pos + false_pos, 1), "recall": true_pos / positives,
            "false_positives": false_pos, "negatives": len(negatives), "by_style": by_style}


def speed(evaluation: dict[str, list[str]]) -> dict:
    """Speed on the whole handbook, all of its languages, against both evaluation sets (no labels)."""
    docs = [{"id": f"{folder.name}-{i}", "text": text, "style": "negative"}
            for folder in sorted(p for p in HANDBOOK.iterdir() if p.is_dir()) for i, text in enumerate(pages(folder))]
    everything = [p for paragraphs in evaluation.values() for p in paragraphs]
    megabytes = sum(len(d["text"].encode()) for d in docs) / 1e6
    _, ours = run_tokenmill(everything, docs, WORK / "speed")
    theirs, theirs_s, why = run_datatrove(everything, docs, "en", WORK / "speed")
    result = {"megabytes": round(megabytes, 1), "documents": len(docs),
              "tokenmill_mb_per_s_per_core": round(megabytes / ours, 2),
              "datatrove_mb_per_s_per_core": round(megabytes / theirs_s, 2) if theirs is not None else None,
              "datatrove": why or "English word tokenizer on every language"}
    if theirs is not None:
        result["ratio"] = round(theirs_s / ours, 2)
    print(f"speed on {megabytes:.1f} MB (26 languages): tokenmill {result['tokenmill_mb_per_s_per_core']} MB/s per core, "
          f"datatrove {result['datatrove_mb_per_s_per_core']} MB/s per core ({result.get('ratio')}x)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-style", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not HANDBOOK.is_dir():
        sys.exit(f"{HANDBOOK}: apt-get install debian-handbook")
    from tokenmill.engine import datatrove_logs_to_files
    datatrove_logs_to_files()
    results = {}
    for lang in LANGUAGES:
        evaluation, docs, left_out = build(lang, args.per_style, args.seed)
        megabytes = sum(len(d["text"].encode()) for d in docs) / 1e6
        ours, ours_s = run_tokenmill(evaluation, docs, WORK / lang)
        theirs, theirs_s, why = run_datatrove(evaluation, docs, lang, WORK / lang)
        results[lang] = {"evaluation_paragraphs": len(evaluation), "training_documents": len(docs),
                         "negatives_left_out": left_out, "megabytes": round(megabytes, 2),
                         "tokenmill": {**scores(ours, docs), "seconds": round(ours_s, 2),
                                       "mb_per_s_per_core": round(megabytes / ours_s, 2)},
                         "datatrove": {**scores(theirs, docs), "seconds": round(theirs_s, 2),
                                       "mb_per_s_per_core": round(megabytes / theirs_s, 2)} if theirs is not None
                         else {"did_not_run": why}}
        for tool in ("tokenmill", "datatrove"):
            r = results[lang][tool]
            if "did_not_run" in r:
                print(f"{lang} {tool}: did not run ({r['did_not_run']})")
                continue
            styles = ", ".join(f"{s} {v['recall']:.2f}" for s, v in r["by_style"].items())
            print(f"{lang} {tool:<9} precision {r['precision']:.3f} recall {r['recall']:.3f} ({styles}); "
                  f"{r['false_positives']} of {r['negatives']} negatives flagged; {r['mb_per_s_per_core']} MB/s")
    results["speed"] = speed({lang: build(lang, args.per_style, args.seed)[0] for lang in LANGUAGES})
    out = ROOT / "bench" / "results" / "decontamination.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
