"""Decontaminate: remove from the training data what overlaps the text the run evaluates on.

    tokenmill dedup runs/x/10_filtered -o runs/x/20_dedup --set dedup.decontaminate.sets.general=books/

The last step of the dedup stage (after duplicates are gone, so that "how many training documents hold this
n-gram" counts distinct documents). `tokenmill run` adds what the run evaluates on: `train.eval_sets` that are
not this run's own shards, `eval.tasks` (multiple choice, cloze, passkey), `eval.lm_eval` tasks whose documents
are on this machine. Each dataset's own val/ split is chosen later, at tokenize, which holds it out the same
way (`tokenize.decontaminate_val`: the training side loses the passages it shares with the val documents).

The rule, in order:
1. Every evaluation document becomes word n-grams (`n_words`) and, for scripts without spaces, character
   n-grams (`n_chars`), after NFKC, case folding and dropping punctuation (ngrams.py).
2. Common text is not contamination: an evaluation n-gram found in more than `common_docs` training documents
   (a licence header, a navigation bar) is set aside, as NeMo Curator does with its frequency cap.
3. A training document with any other n-gram of an evaluation set is contaminated by that set. `mode: span`
   removes each matched passage with `margin_chars` on each side; a document cut more than `max_cuts` times,
   or left with less than `min_chars`, is dropped whole. `mode: document` drops it whole (datatrove's rule).
4. Counted per evaluation set as drops (`decontaminate/<set>`) and cuts; what was removed goes to
   `dropped/decontaminate/`. A step that would touch more than `max_share` of the dataset stops before writing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from tokenmill.decontaminate import sources
from tokenmill.decontaminate.index import EvalIndex, document_ngrams, matched_spans
from tokenmill.decontaminate.ngrams import Tokenizer
from tokenmill.atomic import atomic_write_json
from tokenmill.documents import Document, document_shards, read_shard, rewrite_shards, write_documents
from tokenmill.schema import StrictModel

log = logging.getLogger(__name__)
__all__ = ["DecontaminateConfig", "run", "evaluation_texts"]


class DecontaminationTooBroad(ValueError):
    """More of the dataset matched than an evaluation set plausibly explains: usually a wrong folder."""


class DecontaminateConfig(StrictModel):
    sets: dict[str, str] = Field(default_factory=dict, description="evaluation sets, NAME: raw text or token shards")
    tasks: list[str] = Field(default_factory=list, description="multiple-choice / cloze / passkey task files (JSONL) "
                                                               "or folders")
    lm_eval: list[str] = Field(default_factory=list, description="lm-eval tasks whose documents are on this machine")
    lm_eval_include: str | None = Field(None, description="folder of extra lm-eval task YAMLs")
    run_sets: bool = Field(True, description="tokenmill run: also everything the run evaluates on (train.eval_sets, "
                                             "eval.tasks, eval.lm_eval)")
    n_words: int = Field(13, ge=3, description="words per n-gram, for scripts written with spaces")
    n_chars: int = Field(40, ge=5, description="characters per n-gram, for scripts without spaces (CJK, Thai); "
                                               "a Japanese character carries about two English letters' worth")
    mode: Literal["span", "document"] = Field("span", description="remove the matched passages, or the document")
    margin_chars: int = Field(200, ge=0, description="span: characters removed on each side of a match")
    max_cuts: int = Field(10, ge=1, description="span: a document cut more often than this is dropped whole")
    min_chars: int = Field(200, ge=0, description="span: a document left shorter than this is dropped whole")
    common_docs: int = Field(10, ge=1, description="an evaluation n-gram in more training documents than this is "
                                                   "common text (boilerplate), not contamination")
    max_share: float = Field(0.2, gt=0, le=1, description="stop, before writing, when more than this share of the "
                                                          "documents would be touched")

    def has_sources(self) -> bool:
        return bool(self.sets or self.tasks or self.lm_eval)

    def input_paths(self) -> list[Path]:
        """The files this step reads, for the stage key: a changed evaluation set re-runs the stage."""
        return [Path(p) for p in [*self.sets.values(), *self.tasks]]


def evaluation_texts(cfg: DecontaminateConfig) -> dict[str, object]:
    """{set name: iterable of its documents' text}, tasks named after their file."""
    out: dict[str, object] = {name: sources.set_texts(Path(path)) for name, path in cfg.sets.items()}
    if cfg.tasks:
        from tokenmill.evaluation.choice import task_files
        out.update({name: sources.task_texts(path) for name, path in task_files([Path(p) for p in cfg.tasks]).items()})
    if cfg.lm_eval:
        out.update(sources.lm_eval_texts(cfg.lm_eval, cfg.lm_eval_include))
    return out


def build_index(cfg: DecontaminateConfig, tokenizer: Tokenizer) -> EvalIndex:
    """The evaluation n-grams; an empty set is an error naming it, sets with documents too short to match
    are warned about with how many."""
    index = EvalIndex.build(evaluation_texts(cfg), cfg.n_words, cfg.n_chars, tokenizer)
    for name, report in index.reports.items():
        if report.ngrams == 0:
            raise ValueError(f"decontaminate: evaluation set {name!r} has no text left after normalisation "
                             f"({report.documents} documents, none with {cfg.n_words} words or {cfg.n_chars} "
                             "characters): check its path, or lower n_words / n_chars")
        if report.too_short:
            log.warning("decontaminate: %d of %d documents of %r are shorter than %d words / %d characters and "
                        "cannot be matched", report.too_short, report.documents, name, cfg.n_words, cfg.n_chars)
            print(f"[decontaminate] warning: {report.too_short:,} of {report.documents:,} documents of {name!r} are "
                  f"shorter than one n-gram ({cfg.n_words} words / {cfg.n_chars} characters) and cannot be matched")
    return index


def find(in_dir: Path, index: EvalIndex, tokenizer: Tokenizer, common_docs: int,
         considered: Callable[[Document], bool] | None = None) -> tuple[dict, np.ndarray, int]:
    """Pass 1 over in_dir's documents (those `considered`, default all): {document id: the index keys it matches,
    common n-grams left out}, the common keys, the documents read. The shards are matched in parallel, one
    worker per core (forked: the index and `considered` are shared, not copied or pickled); what they return
    is merged in shard order, so the result does not depend on the worker count."""
    shards = document_shards(in_dir)
    # A pool's own workers (daemonic) may not start processes: there, one process.
    workers = 1 if multiprocessing.current_process().daemon else min(len(shards), os.cpu_count() or 1)
    global _SHARED
    _SHARED = (index, tokenizer, considered)
    try:
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                found = pool.map(_shard_hits, shards, chunksize=1)
        else:
            found = [_shard_hits(shard) for shard in shards]
    finally:
        _SHARED = None
    hits = {doc_id: keys for shard_hits, _ in found for doc_id, keys in shard_hits.items()}
    n_docs = sum(n for _, n in found)
    frequency = np.bincount(np.concatenate(list(hits.values())), minlength=len(index.keys)) if hits else \
        np.zeros(len(index.keys), dtype=np.int64)
    common = frequency > common_docs
    contaminated = {doc_id: keys[~common[keys]] for doc_id, keys in hits.items() if (~common[keys]).any()}
    return contaminated, index.keys[common], n_docs


_SHARED = None  # (index, tokenizer, considered) for the forked workers of `find`


def _shard_hits(shard: Path) -> tuple[dict[str, np.ndarray], int]:
    """One shard's documents with the index keys each matches, and how many documents were considered."""
    index, tokenizer, considered = _SHARED
    hits, n_docs = {}, 0
    for doc in read_shard(shard):
        if considered is not None and not considered(doc):
            continue
        n_docs += 1
        found = index.lookup(document_ngrams(tokenizer.tokens(doc.text), index.n_words, index.n_chars))
        keys = np.unique(found[found >= 0])
        if len(keys):
            hits[doc.id] = keys
    return hits, n_docs


@dataclass
class Removal:
    """What pass 1 decided: the contaminated documents (by id, with the set each overlaps most) and the index
    less its common n-grams. `apply` takes a document through it; `save`/`load` carry it to data tasks."""
    cfg: DecontaminateConfig
    index: EvalIndex
    owners: dict[str, str]
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    @classmethod
    def plan(cls, cfg: DecontaminateConfig, in_dir: Path, where: str, index: EvalIndex, tokenizer: Tokenizer,
             considered: Callable[[Document], bool] | None = None) -> tuple[Removal, dict]:
        """Pass 1 over in_dir's documents (those `considered`); stops, before anything is written, when too much
        of them overlaps."""
        contaminated, common, n_docs = find(in_dir, index, tokenizer, cfg.common_docs, considered)
        owners = {doc_id: _owner_of(keys, index) for doc_id, keys in contaminated.items()}
        by_set = {name: list(owners.values()).count(name) for name in set(owners.values())}
        if n_docs and len(contaminated) > cfg.max_share * n_docs:
            worst = max(by_set, key=by_set.get)
            raise DecontaminationTooBroad(
                f"decontaminate: {len(contaminated):,} of {n_docs:,} documents of {where} overlap the evaluation "
                f"text, more than max_share {cfg.max_share:.0%}; most of them overlap {worst!r} ({by_set[worst]:,})."
                " Is it the training data given as an evaluation set? Nothing was written; fix the set, or raise "
                "max_share")
        return cls(cfg, index.without(common), owners, tokenizer), {"decontaminate_common_ngrams": int(len(common))}

    def apply(self, doc: Document) -> tuple[Document | None, list[Document]]:
        """(the document as it stays, or None when it goes whole; the removed text as documents)."""
        owner = self.owners.get(doc.id)
        if owner is None:
            return doc, []
        kept, cut = _remove(doc, self.cfg, self.index, self.tokenizer)
        removed = [Document(f"{doc.id}:{start}-{end}", text, doc.source, {"decontaminated_by": owner, "from": doc.id})
                   for start, end, text in cut]
        return kept, removed

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "index.npz", keys=self.index.keys, owner=self.index.owner)
        atomic_write_json(folder / "removal.json", {"config": self.cfg.model_dump(mode="json"), "names": self.index.names,
                                                   "owners": self.owners})

    @classmethod
    def load(cls, folder: Path) -> Removal:
        record, arrays = json.loads((folder / "removal.json").read_text()), np.load(folder / "index.npz")
        cfg = DecontaminateConfig(**record["config"])
        index = EvalIndex(record["names"], arrays["keys"], arrays["owner"], cfg.n_words, cfg.n_chars)
        return cls(cfg, index, record["owners"])


def with_run_sources(cfg: DecontaminateConfig, eval_sets: dict[str, str] | None, tasks: list[str],
                     lm_eval: list[str], lm_eval_include: str | None, run_dir: Path) -> DecontaminateConfig:
    """The config with what a run evaluates on added (when `run_sets`): its evaluation sets, except this run's
    own shards (their val/ split is held out at tokenize), its tasks and its lm-eval tasks."""
    if not cfg.run_sets:
        return cfg
    inside = Path(run_dir).resolve()
    external = {name: path for name, path in (eval_sets or {}).items()
                if inside not in Path(path).resolve().parents and Path(path).resolve() != inside}
    return cfg.model_copy(update={"sets": {**external, **cfg.sets}, "tasks": [*cfg.tasks, *tasks],
                                  "lm_eval": [*cfg.lm_eval, *lm_eval],
                                  "lm_eval_include": cfg.lm_eval_include or lm_eval_include})


def prepare(cfg: DecontaminateConfig) -> tuple[EvalIndex, Tokenizer]:
    """The index, built before the stage's other work: a bad evaluation set stops the stage at its start."""
    tokenizer = Tokenizer()
    return build_index(cfg, tokenizer), tokenizer


def run(cfg: DecontaminateConfig, in_dir: Path, out_dir: Path, prepared: tuple[EvalIndex, Tokenizer] | None = None) -> dict:
    """Decontaminate the document shards of in_dir into out_dir (shard by shard); returns the counts."""
    index, tokenizer = prepared or prepare(cfg)
    removal, counts = Removal.plan(cfg, in_dir, str(in_dir), index, tokenizer)
    removed: list[Document] = []
    tally = Tally(index.names)

    def keep(doc: Document) -> Document | None:
        kept, cut = removal.apply(doc)
        tally.add(doc, kept, removal.owners.get(doc.id))
        removed.extend(cut)
        return kept

    rewrite_shards(in_dir, out_dir, keep)
    if removed:
        write_documents(removed, out_dir / "dropped" / "decontaminate")
    for name, c in tally.by_set.items():
        print(f"[decontaminate] {name}: {c['documents']:,} documents dropped, {c['cut']:,} cut "
              f"({c['chars_removed']:,} characters)")
    return {**tally.counts(), **counts, "decontaminate_index_ngrams": int(len(removal.index.keys))}


class Tally:
    """Per evaluation set: documents dropped whole, documents cut, characters removed."""

    def __init__(self, names: list[str]):
        self.by_set = {name: {"documents": 0, "cut": 0, "chars_removed": 0} for name in names}

    def add(self, doc: Document, kept: Document | None, owner: str | None) -> None:
        if owner is None or kept is doc:
            return
        self.by_set[owner]["documents" if kept is None else "cut"] += 1
        self.by_set[owner]["chars_removed"] += len(doc.text) - (len(kept.text) if kept else 0)

    def counts(self) -> dict:
        return {"drops": {f"decontaminate/{name}": c["documents"] for name, c in self.by_set.items() if c["documents"]},
                "decontaminate": self.by_set}


def _owner_of(keys: np.ndarray, index: EvalIndex) -> str:
    """The set most of a document's matched n-grams belong to."""
    return index.names[int(np.bincount(index.owner[keys]).argmax())]


def _remove(doc: Document, cfg: DecontaminateConfig, index: EvalIndex, tokenizer: Tokenizer):
    """(the document without its matched passages, or None when it goes whole; [(start, end, removed text)])."""
    spans = matched_spans(tokenizer.tokens(doc.text, spans=True), index, cfg.margin_chars, len(doc.text))
    if not spans:  # its matches were all common n-grams after all
        return doc, []
    if cfg.mode == "document" or len(spans) > cfg.max_cuts:
        return None, [(0, len(doc.text), doc.text)]
    pieces, cut, at = [], [], 0
    for start, end, _ in spans:
        pieces.append(doc.text[at:start])
        cut.append((start, end, doc.text[start:end]))
        at = end
    pieces.append(doc.text[at:])
    text = "\n".join(p.strip() for p in pieces if p.strip())
    if len(text) < cfg.min_chars:
        return None, [(0, len(doc.text), doc.text)]
    return Document(doc.id, text, doc.source, doc.metadata), cut
