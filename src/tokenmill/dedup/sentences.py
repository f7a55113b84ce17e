"""Sentence-level dedup, C4's practice: "we discarded all but one of any three-sentence span occurring more
than once in the data set" (Raffel et al. 2020). datatrove's three blocks: span hashes → duplicates → filter.

A document keeps its first occurrence of each span; later copies lose those sentences. A document left with
fewer than `min_doc_words` words or `min_num_sentences` sentences is dropped, and counted.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tokenmill import engine
from tokenmill.schema import StrictModel


class SentenceDedupConfig(StrictModel):
    n_sentences: int = Field(3, gt=0, description="sentences per span (C4: 3)")
    split_sentences: bool = Field(True, description="split sentences with datatrove's splitter; false: on lines")
    min_doc_words: int = Field(50, ge=0, description="drop a changed document left with fewer words")
    min_num_sentences: int = Field(3, ge=0, description="drop a changed document left with fewer sentences")
    language: str = Field("en", description="language of datatrove's sentence and word splitters")


def sentence_dedup(cfg: SentenceDedupConfig, executor: engine.ExecutorConfig, in_dir: Path, out_dir: Path,
                   work: Path) -> dict:
    from datatrove.pipeline.dedup.sentence_dedup import (SentDedupConfig, SentenceDedupFilter,
                                                         SentenceDedupSignature, SentenceFindDedups)
    dt_cfg = SentDedupConfig(n_sentences=cfg.n_sentences, split_sentences=cfg.split_sentences,
                             min_doc_words=cfg.min_doc_words, min_num_sentences=cfg.min_num_sentences)
    # Documents are named by (task, index), as in MinHash: the reading stages' layout comes from the input.
    shards = engine.for_input(executor, in_dir).tasks
    stages = [
        ([engine.reader(in_dir), SentenceDedupSignature(output_folder=str(work / "signatures"), config=dt_cfg,
                                                        language=cfg.language)], shards),
        ([SentenceFindDedups(data_folder=str(work / "signatures"), output_folder=str(work / "duplicates"),
                             config=dt_cfg)], 1),
        ([engine.reader(in_dir), engine.Tally("in"),
          SentenceDedupFilter(data_folder=str(work / "duplicates"), config=dt_cfg, language=cfg.language,
                              exclusion_writer=engine.writer(work / "removed")),
          engine.Tally("out"), engine.writer(out_dir)], shards),
    ]
    stats = engine.run_pipelines(executor, stages, work)
    dropped = engine.total(stats[1], "docs") - engine.total(stats[-2], "docs")
    return {"drops": {"sentences/too_short_after_sentence_dedup": dropped} if dropped else {},
            "sentences_removed": engine.total(stats[2], "removed_sentences")}
