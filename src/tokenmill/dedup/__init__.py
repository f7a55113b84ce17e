"""Dedup: exact duplicates, MinHash-LSH near-duplicates, repeated sentence spans (datatrove), boilerplate lines,
and text that overlaps the evaluation sets (tokenmill/decontaminate/).

    tokenmill dedup runs/x/10_filtered -o runs/x/20_dedup [--set dedup.minhash.num_buckets=20]

Output: `20_dedup/`, shard by shard like the input. Steps run in this order, each optional: exact → minhash →
sentences → lines → decontaminate. Results do not depend on the order of the input or on the executor's tasks and workers:
exact dedup keeps the smallest id of each group, line dedup counts lines over the whole corpus before
removing any, and MinHash and sentence dedup name documents by (input shard, index), so datatrove resolves
them the same way on any machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field

from tokenmill import decontaminate, engine
from tokenmill.dedup.exact import exact_dedup, normalise
from tokenmill.dedup.lines import LineDedupConfig, line_dedup
from tokenmill.dedup.minhash import MinhashConfig, minhash_dedup
from tokenmill.dedup.sentences import SentenceDedupConfig, sentence_dedup
from tokenmill.decontaminate import DecontaminateConfig
from tokenmill.documents import read_documents
from tokenmill.schema import StrictModel

__all__ = ["DedupConfig", "normalise", "run"]


class DedupConfig(StrictModel):
    exact: bool = Field(True, description="drop exact duplicates of normalised text")
    minhash: MinhashConfig | None = Field(default_factory=MinhashConfig, description="near-duplicates; null disables")
    sentences: SentenceDedupConfig | None = Field(
        None, description="remove repeated spans of sentences (C4's dedup); null (the default) disables")
    lines: LineDedupConfig | None = Field(None, description="remove lines repeated across many documents")
    decontaminate: DecontaminateConfig | None = Field(
        default_factory=DecontaminateConfig, description="remove what overlaps the evaluation text (last, on the "
        "deduplicated documents); does nothing without evaluation sets or tasks; null disables")
    executor: engine.ExecutorConfig = Field(default_factory=engine.ExecutorConfig)


def inputs(cfg: DedupConfig, in_dir: Path) -> list[Path]:
    """What the stage reads: its documents, and the evaluation text it decontaminates against."""
    return [in_dir, *(cfg.decontaminate.input_paths() if cfg.decontaminate else [])]


def run(cfg: DedupConfig, in_dir: Path, out_dir: Path) -> dict:
    decont = cfg.decontaminate if cfg.decontaminate and cfg.decontaminate.has_sources() else None
    prepared = decontaminate.prepare(decont) if decont else None  # a bad evaluation set stops us here
    counts = dict(zip(("docs_in", "chars_in"), _size(in_dir)))
    drops, clusters, current, work = {}, {}, Path(in_dir), out_dir / "work"
    steps = [("exact", cfg.exact and (lambda i, o: exact_dedup(i, o))),
             ("minhash", cfg.minhash and (lambda i, o: minhash_dedup(cfg.minhash, cfg.executor, i, o, work / "minhash"))),
             ("sentences", cfg.sentences and (lambda i, o: sentence_dedup(cfg.sentences, cfg.executor, i, o,
                                                                           work / "sentences"))),
             ("lines", cfg.lines and (lambda i, o: line_dedup(cfg.lines, i, o))),
             ("decontaminate", decont and (lambda i, o: decontaminate.run(decont, i, o, prepared)))]
    enabled = [(name, fn) for name, fn in steps if fn]
    for index, (name, fn) in enumerate(enabled):
        target = out_dir if index == len(enabled) - 1 else work / name
        step_counts = fn(current, target)
        drops.update(step_counts.pop("drops"))
        if "cluster_sizes" in step_counts:
            clusters[name] = step_counts.pop("cluster_sizes")
        counts.update(step_counts)
        current = target
    if not enabled:
        shutil.copytree(in_dir, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json", "logs"))
    shutil.rmtree(work, ignore_errors=True)
    docs_out, chars_out = _size(out_dir)
    return {**counts, "docs_out": docs_out, "chars_out": chars_out, "drops": dict(sorted(drops.items())),
            "cluster_sizes": clusters}


def _size(folder: Path) -> tuple[int, int]:
    """Documents and characters in a document folder, streamed (never the whole corpus in memory)."""
    docs = chars = 0
    for doc in read_documents(folder):
        docs, chars = docs + 1, chars + len(doc.text)
    return docs, chars
