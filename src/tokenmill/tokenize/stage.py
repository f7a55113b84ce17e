"""Tokenize: train or load a tokenizer, split documents into train/val, pack them into token shards.

    tokenmill tokenize runs/x/20_dedup -o runs/x/30_shards --vocab-size 4096
    tokenmill tokenize runs/x/20_dedup -o runs/x/30_shards --tokenizer path/to/hf_model_dir

    tokenmill tokenize runs/x/20_dedup -o runs/x/30_shards --tokenizer BASE --set tokenize.extend.add=8000

Output: tokenizer/ (HF format), train/ and val/ (see tokenize/shards.py). With `extend`, the base's tokenizer
grows by merges learned from the documents (tokenize/extend.py), and the manifest holds the fertility of the
base and of the extended tokenizer on them. The split is by document, so
no document has tokens on both sides, and seeded by document id, so it does not depend on input order.

Encoding runs on the datatrove executors (local, Slurm, Ray), tasks as engine.grouped_tasks deals them: each
writes the token shards of its document shards (one thread each; N tasks encode N shards at once), and the
split's meta.json is merged at the end. The token ids, and the order of the documents, are those of one
process encoding the shards in order, for any task count.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path
from typing import Callable, Iterable

from datatrove.pipeline.base import PipelineStep
from pydantic import Field

from tokenmill import engine
from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.schema import StrictModel
from tokenmill.tokenize.extend import ExtendConfig, base_tokenizer, extend, read_extension
from tokenmill.tokenize.fertility import compare, fertility
from tokenmill.tokenize.shards import ShardWriter, merge_parts
from tokenmill.tokenize.tokenizer import load_tokenizer, train_bpe

SPLITS = ("train", "val")


class TokenizeConfig(StrictModel):
    tokenizer: str | None = Field(None, description="tokenizer.json or HF folder to reuse; None trains a BPE")
    extend: ExtendConfig | None = Field(None, description="grow `tokenizer` with merges learned from the text "
                                                          "(a new language); see docs/language.md")
    vocab_size: int = Field(4096, ge=260, le=1 << 20, description="BPE vocabulary size when training (tokens)")
    min_frequency: int = Field(2, ge=1, description="BPE: merges must occur at least this often")
    eos_token: str | None = Field(None, description="EOS token of a reused tokenizer, if it names none")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of documents held out for validation")
    decontaminate_val: bool = Field(True, description="training documents lose the passages they share with the val "
                                                      "split (dedup.decontaminate's rule), so its figures measure "
                                                      "what the model generalises, not what it saw")
    seed: int = Field(0, description="seed of the document-level split")
    tokens_per_shard: int = Field(1 << 28, gt=0, description="tokens per shard file")
    batch_docs: int = Field(256, gt=0, description="documents encoded per batch")
    executor: engine.ExecutorConfig = Field(default_factory=engine.ExecutorConfig)


def split_of(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, doc id)."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def validation_boundary(in_dir: Path, cfg: TokenizeConfig) -> tuple[float, str]:
    """The last (split number, id) of the validation documents: those whose split number is among the lowest
    val_fraction, at least one and never all. A document is held out when its (split number, id) is <= this."""
    ids = sorted((split_of(d.id, cfg.seed), d.id) for d in read_documents(in_dir))
    if len(ids) < 2:
        raise ValueError(f"{in_dir}: {len(ids)} document(s) left; a train/validation split needs at least 2")
    n_val = min(len(ids) - 1, max(1, round(len(ids) * cfg.val_fraction)))
    return ids[n_val - 1]


def validation_ids(in_dir: Path, cfg: TokenizeConfig) -> set[str]:
    """The ids of the documents held out for validation."""
    boundary = validation_boundary(in_dir, cfg)
    return {d.id for d in read_documents(in_dir) if _held_out(d.id, cfg.seed, boundary)}


def texts_of(paths: list[Path]) -> Iterable[str]:
    """The text of document shards (a stage's output) or of anything `tokenmill ingest` reads."""
    from tokenmill.ingest import IngestConfig, iter_documents
    for path in map(Path, paths):
        docs = read_documents(path) if path.is_dir() and any(path.glob("docs-*.jsonl*")) else \
            iter_documents(IngestConfig(paths=[str(path)]))
        yield from (d.text for d in docs)


def make_tokenizer(cfg: TokenizeConfig, in_dirs: list[Path], out_dir: Path, name: str = "tokenizer") -> dict:
    """The tokenizer that every dataset is tokenized with, saved as out_dir/NAME: the given one, the given
    one extended on in_dirs' text (document shards or raw text), or a BPE trained on it."""
    if cfg.tokenizer and cfg.extend:
        base = load_tokenizer(_tokenizer_path(cfg.tokenizer), cfg.eos_token)
        record = extend(base, cfg.tokenizer, texts_of(in_dirs), cfg.extend, out_dir / name)
        tok = load_tokenizer(out_dir / name, cfg.eos_token)
        ratio = compare(*(fertility(t, texts_of(in_dirs)) for t in (base, tok)))
        print(f"[tokenize] extended {cfg.tokenizer}: +{record['added']:,} tokens learned from "
              f"{record['corpus']['characters']:,} characters ({', '.join(record['rules']['scripts'])} letters), "
              f"{record['vocab_size']:,} in all, embedding rows padded to {record['padded_vocab_size']:,}; tokens "
              f"per byte of the corpus x{ratio['all']:.2f} (its own script x{ratio['own_script'] or 0:.2f}, "
              f"ASCII spans x{ratio['ascii'] or 1:.2f})")
        return {"vocab_size": len(tok), "added": record["added"], "padded_vocab_size": record["padded_vocab_size"],
                "tokens_per_byte_ratio": ratio["all"], "own_script_ratio": ratio["own_script"]}
    else:
        tok = load_tokenizer(_tokenizer_path(cfg.tokenizer), cfg.eos_token) if cfg.tokenizer else \
            train_bpe(texts_of(in_dirs), cfg.vocab_size, cfg.min_frequency)
        tok.save_pretrained(out_dir / name)
    return {"vocab_size": len(tok), "eos_id": tok.eos_token_id, "datasets": len(in_dirs)}


def _tokenizer_path(spec: str) -> Path:
    from tokenmill.model.resolve import resolve_model_path
    return resolve_model_path(spec)


def tokenizer_fertility(tokenizer_dir: Path, eos_token: str | None, in_dir: Path) -> dict | None:
    """For an extended tokenizer: fertility of the base and of the extended one on in_dir's documents."""
    record = read_extension(tokenizer_dir)
    if record is None:
        return None
    tok = load_tokenizer(tokenizer_dir, eos_token)
    base = base_tokenizer(tok, record)
    texts = lambda: (d.text for d in read_documents(in_dir))  # noqa: E731
    result = {"base": fertility(base, texts()), "extended": fertility(tok, texts())}
    return {**result, "ratio": compare(result["base"], result["extended"])}


def run(cfg: TokenizeConfig, in_dir: Path, out_dir: Path) -> dict:
    with _tokenizer_saved(cfg, in_dir, out_dir) as saved:  # beside the split where it can be
        boundary = validation_boundary(in_dir, cfg)
        held_out = held_out_index(cfg, in_dir, boundary) if cfg.decontaminate_val else None
        vocab_size, eos_id = saved()  # a tokenizer that cannot be used stops the stage here, before the passes
    removal = held_out_removal(cfg, in_dir, boundary, *held_out, out_dir / "logs" / "decontaminate") if held_out \
        else None
    step = EncodeShards(out_dir, boundary, cfg, removal, vocab_size, eos_id)
    engine.run_pipeline(engine.for_input(cfg.executor, in_dir), [engine.reader(in_dir), step], out_dir / "logs")
    metas = {split: merge_parts(out_dir / split, vocab_size, eos_id) for split in SPLITS}
    encoded = engine.step_stats(out_dir / "logs")[-1]["stats"]
    counts = {"vocab_size": vocab_size, "eos_id": eos_id,
              **{f"{s}_{k}": m[k] for s, m in metas.items() for k in ("n_docs", "n_tokens", "n_bytes")},
              "docs_in": engine.total(encoded, "docs"),
              "tokens_out": sum(m["n_tokens"] for m in metas.values())}
    if removal:
        counts["decontaminate"] = {"val": {key: engine.total(encoded, f"decontaminate_{key}")
                                           for key in ("documents", "cut", "chars_removed")}}
        counts["drops"] = {"decontaminate/val": counts["decontaminate"]["val"]["documents"]}
        held = counts["decontaminate"]["val"]
        print(f"[tokenize] val split held out: {held['documents']:,} training documents dropped and {held['cut']:,} "
              f"cut ({held['chars_removed']:,} characters) for sharing passages with it (dropped/decontaminate/)")
    fertile = tokenizer_fertility(out_dir / "tokenizer", cfg.eos_token, in_dir)
    return {**counts, "fertility": fertile} if fertile else counts


@contextmanager
def _tokenizer_saved(cfg: TokenizeConfig, in_dir: Path, out_dir: Path):
    """Saves the stage's tokenizer to out_dir/tokenizer; yields a function that waits for it and gives (vocab size,
    EOS id). Reusing a tokenizer is a transformers load and save (~3 s, most of it importing transformers) that
    nothing before the encoding needs, so it runs in a forked process, on another core, while this one reads the
    split. Training or extending one (parallel work of its own) runs here, first."""
    source = _tokenizer_path(cfg.tokenizer) if cfg.tokenizer else None  # a wrong path: an error before anything
    if source and not cfg.extend and (os.cpu_count() or 1) > 1 and not multiprocessing.current_process().daemon:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            yield pool.submit(_save_tokenizer, cfg, source, in_dir, out_dir, True).result
    else:
        made = _save_tokenizer(cfg, source, in_dir, out_dir)
        yield lambda: made


def _save_tokenizer(cfg: TokenizeConfig, source: Path | None, in_dir: Path, out_dir: Path,
                    forked: bool = False) -> tuple[int, int]:
    if forked:  # tokenizers' Rust threads hang in a child forked after its parent used them (see EncodeShards)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if source and not cfg.extend and read_extension(source):  # an extended one (the pipeline's shared tokenizer)
        shutil.copytree(source, out_dir / "tokenizer")          # keeps its record
    else:
        make_tokenizer(cfg, [in_dir], out_dir)
    tok = load_tokenizer(out_dir / "tokenizer", cfg.eos_token)
    return len(tok), tok.eos_token_id


def held_out_index(cfg: TokenizeConfig, in_dir: Path, val_boundary: tuple):
    """(the val documents' n-grams, the word hasher that made them)."""
    from tokenmill.decontaminate import DecontaminateConfig
    from tokenmill.decontaminate.index import EvalIndex
    from tokenmill.decontaminate.ngrams import Tokenizer
    decont, words = DecontaminateConfig(), Tokenizer()
    texts = (d.text for d in read_documents(in_dir) if _held_out(d.id, cfg.seed, val_boundary))
    return EvalIndex.build({"val": texts}, decont.n_words, decont.n_chars, words), words


def _held_out(doc_id: str, seed: int, val_boundary: tuple) -> bool:
    return (split_of(doc_id, seed), doc_id) <= tuple(val_boundary)


def held_out_removal(cfg: TokenizeConfig, in_dir: Path, val_boundary: tuple, index, words, folder: Path) -> Path | None:
    """Find the training documents that share passages with the val split's n-grams (`index`; pass 1, here); the
    encode tasks remove those passages (pass 2). None when nothing overlaps."""
    from tokenmill.decontaminate import DecontaminateConfig, DecontaminationTooBroad, Removal
    decont = DecontaminateConfig()
    try:
        removal, _ = Removal.plan(decont, in_dir, f"{in_dir} (its training side, against its own val split)", index,
                                  words, considered=lambda doc: not _held_out(doc.id, cfg.seed, val_boundary))
    except DecontaminationTooBroad as e:
        raise DecontaminationTooBroad(f"{e}.\nHere the corpus repeats itself across the split: deduplicate it "
                                      "more strictly (dedup.minhash), or set tokenize.decontaminate_val: false") from None
    if not removal.owners:
        return None
    removal.save(folder)
    return folder


class EncodeShards(PipelineStep):
    """Encodes a task's documents into the token shards of their document shard, one part per shard and split."""

    type = "🔢 - TOKENIZE"
    name = "encode"

    def __init__(self, out_dir: Path, val_boundary: tuple[float, str], cfg: TokenizeConfig,
                 removal: Path | None, vocab_size: int, eos_id: int):
        super().__init__()
        self.out_dir, self.val_boundary, self.cfg, self.removal = Path(out_dir), tuple(val_boundary), cfg, removal
        self.vocab_size, self.eos_id = vocab_size, eos_id

    def run(self, data, rank: int = 0, world_size: int = 1):
        # The tokenizer.json that transformers saved (its backend, as the model will load it), read by tokenizers
        # alone: a task needs no transformers import (~3 s and 1 GiB where the parent did not already hold it).
        from tokenizers import Tokenizer
        tok = widen_word_cache(Tokenizer.from_file(str(self.out_dir / "tokenizer" / "tokenizer.json")))
        # One thread per task: the tasks are the parallelism. It is also what keeps a forked worker alive: a
        # child forked after its parent used the Rust thread pool hangs in it when TOKENIZERS_PARALLELISM is
        # "true" (the CLI sets it), as tokenizers then skips its own after-fork guard (seen in the suite).
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            yield from self._encode_parts(tok, data)
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous

    def _encode_parts(self, tok, data):
        from tokenmill.decontaminate import Removal
        removal = Removal.load(self.removal) if self.removal else None
        for part, docs in groupby(data, key=lambda doc: doc.metadata[engine.SHARD_KEY]):
            writers = {split: ShardWriter(self.out_dir / split, self.vocab_size, self.eos_id, self.cfg.tokens_per_shard,
                                          part=part.removeprefix("docs-")) for split in SPLITS}
            removed: list[Document] = []
            kept = self._held_out(self._counted(docs), removal, removed) if removal else self._counted(docs)
            encode_documents(tok, kept, lambda doc: writers[self._split(doc.id)], self.cfg.batch_docs)
            for writer in writers.values():
                writer.close()
            if removed:
                write_documents(removed, self.out_dir / "dropped" / "decontaminate", prefix=part)
        yield from ()

    def _held_out(self, docs, removal, removed: list):
        """Training documents without the passages they share with the val split (the val side untouched)."""
        for doc in docs:
            if self._split(doc.id) == "val":
                yield doc
                continue
            kept, cut = removal.apply(Document(doc.id, doc.text, doc.metadata.get("source", ""), dict(doc.metadata)))
            if cut:
                self.stat_update("decontaminate_documents" if kept is None else "decontaminate_cut")
                self.stat_update("decontaminate_chars_removed", value=len(doc.text) - len(kept.text if kept else ""))
                removed.extend(cut)
            if kept is not None:
                yield kept

    def _split(self, doc_id: str) -> str:
        return "val" if _held_out(doc_id, self.cfg.seed, self.val_boundary) else "train"

    def _counted(self, docs):
        for doc in docs:
            self.stat_update("docs")
            yield doc


WORD_CACHE = 1 << 18


def widen_word_cache(tok):
    """tokenizers' BPE keeps the tokens of the first 10,000 distinct words it meets and then stops adding (it never
    evicts): on a corpus of many languages the first ones fill it and every later word is merged anew. A task's
    cache holds 2^18 words (tens of MB). The same ids either way; a model without the cache is left as it is."""
    resize = getattr(tok.model, "_resize_cache", None)  # tokenizers >= 0.20's BPE
    if resize is not None:
        resize(WORD_CACHE)
    return tok


def encode_documents(tok, docs: Iterable[Document], writer_of: Callable[[Document], ShardWriter],
                     batch_docs: int = 256) -> None:
    """Encode documents in batches (the Rust tokenizer's threads) and append each to its writer, in order."""
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_docs:
            _encode_batch(tok, batch, writer_of)
            batch = []
    _encode_batch(tok, batch, writer_of)


def write_split(tok, docs: Iterable[Document], out_dir: Path, batch_docs: int = 256) -> dict:
    """All documents into one token split (e.g. raw text evaluated with a model's own tokenizer)."""
    writer = ShardWriter(out_dir, len(tok), tok.eos_token_id)
    encode_documents(tok, docs, lambda doc: writer, batch_docs)
    return writer.close()


def _encode_batch(tok, docs: list[Document], writer_of) -> None:
    """`tok`: a transformers tokenizer or its `tokenizers` backend; encoded by the backend either way."""
    if not docs:
        return
    backend = getattr(tok, "backend_tokenizer", tok)
    # encode_batch_fast: the same ids without character offsets (~10% of the encoding time)
    encodings = backend.encode_batch_fast([d.text for d in docs], add_special_tokens=False)
    for doc, enc in zip(docs, encodings):
        writer_of(doc).add(enc.ids, len(doc.text.encode("utf-8")))
