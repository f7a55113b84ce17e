"""Named evaluation sets: `NAME=PATH`, where PATH is token shards or raw text, and their loss,
perplexity and bits per byte.

Raw text (any file or folder `tokenmill ingest` reads: .txt, .md, .jsonl, ...) is tokenized with the
model's own tokenizer into a cached split, through the same writer as `tokenmill tokenize`, so a raw-text
set and the shards made from the same documents give the same numbers.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from tokenmill.atomic import staging_dir
from tokenmill.evaluation import intervals
from tokenmill.tokenize.shards import TokenShard, bytes_per_token, open_split, read_meta

_NAME = re.compile(r"^[\w.-]+$")


def parse_sets(specs: list[str]) -> dict[str, Path]:
    """`NAME=PATH`, or a bare PATH named after its folder (a file: its stem)."""
    sets: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not _NAME.match(name):
            path = spec
            name = Path(spec).stem if Path(spec).is_file() else Path(spec).name
        if name in sets:
            raise ValueError(f"{spec}: an evaluation set named {name!r} is given twice; name each one NAME=PATH")
        sets[name] = Path(path)
    return sets


def is_token_split(path: Path) -> bool:
    return (path / "meta.json").is_file() or (path / "val" / "meta.json").is_file()


def split_dir(path: Path) -> Path:
    """A split folder, or a tokenize output whose val/ split is meant."""
    path = Path(path)
    return path / "val" if (path / "val" / "meta.json").is_file() else path


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def same_vocabulary(a, b) -> bool:
    """Same tokens with the same ids (the EOS may differ: `tokenize.eos_token` chooses it on purpose)."""
    return a.get_vocab() == b.get_vocab()


def shards_tokenizer(split: Path, tokenizer):
    """The tokenizer the shards were made with, when it is not `tokenizer` and sits beside them (the shards'
    text can then be decoded and tokenized again); None when it is the same. Shards of another, unknown
    tokenizer would give a meaningless loss: refused with what to do."""
    from transformers import AutoTokenizer
    meta, beside = read_meta(split), split.parent / "tokenizer"
    if (beside / "tokenizer_config.json").is_file():
        theirs = AutoTokenizer.from_pretrained(beside)
        return None if same_vocabulary(theirs, tokenizer) else theirs
    if meta["vocab_size"] != len(tokenizer):
        raise _other_tokenizer(split)
    return None


def _other_tokenizer(split: Path) -> ValueError:
    return ValueError(f"{split}: these shards were made with another tokenizer than the model's (the vocabulary "
                      f"differs); evaluate the raw text instead (NAME=path/to/text), which is tokenized with the "
                      f"model's own tokenizer")


def decoded_documents(split: Path, theirs) -> Iterator:
    """The documents of a split, decoded with the tokenizer that made it (exact for byte-level BPE)."""
    from tokenmill.documents import Document
    for shard in open_split(split):
        for i, ids in enumerate(shard.documents()):
            yield Document(id=f"{shard.path.name}:{i}", text=theirs.decode(ids.tolist()), metadata={})


def token_split(path: Path, tokenizer, cache_dir: Path) -> Path:
    """The split folder to evaluate: shards as they are (their val/ split when they have one), shards of
    another tokenizer (a base model before its vocabulary was extended) decoded and tokenized again, or raw
    text; the last two are tokenized into `cache_dir`, reused while the text and the tokenizer are unchanged.
    Every model so sees the same text, and bits per byte compare across tokenizers."""
    path = Path(path)
    if is_token_split(path):
        split = split_dir(path)
        theirs = shards_tokenizer(split, tokenizer)
        if theirs is None:
            return split
        return _cached_split(split, lambda: decoded_documents(split, theirs), tokenizer, cache_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such evaluation set (give token shards, or a text file or folder)")
    from tokenmill.ingest import IngestConfig, iter_documents
    return _cached_split(path, lambda: iter_documents(IngestConfig(paths=[str(path)])), tokenizer, cache_dir)


def _cached_split(path: Path, documents, tokenizer, cache_dir: Path) -> Path:
    from tokenmill.stage import input_key
    from tokenmill.tokenize import write_split
    key = hashlib.sha256(f"{input_key(path)}:{tokenizer_fingerprint(tokenizer)}".encode()).hexdigest()[:16]
    out = Path(cache_dir) / f"{path.parent.name if path.name == 'val' else path.stem}-{key}"
    if not (out / "meta.json").is_file():
        with staging_dir(out) as staging:
            meta = write_split(tokenizer, documents(), staging)
        if meta["n_tokens"] == 0:
            raise ValueError(f"{path}: no text to evaluate")
    return out


def eval_windows(shards: list[TokenShard], seq_len: int, max_tokens: int | None) -> list:
    """Consecutive windows from the start of each shard: the same windows at every evaluation."""
    return [shard.tokens[start:start + seq_len + 1] for shard, start in _window_starts(shards, seq_len, max_tokens)]


def _window_starts(shards: list[TokenShard], seq_len: int, max_tokens: int | None):
    budget = max_tokens or float("inf")
    for shard in shards:
        for start in range(0, len(shard.tokens) - seq_len, seq_len):
            if budget < seq_len:
                return
            yield shard, start
            budget -= seq_len


def window_documents(shards: list[TokenShard], seq_len: int, max_tokens: int | None) -> np.ndarray:
    """[windows, seq_len]: the split-wide index of the document each scored token (a window's positions
    1..seq_len) belongs to, for the windows of `eval_windows`."""
    first_doc = {id(shard): n for shard, n in zip(shards, np.cumsum([0] + [len(s.doc_offsets) for s in shards]))}
    rows = [first_doc[id(shard)] + np.searchsorted(shard.doc_offsets, np.arange(start + 1, start + seq_len + 1),
                                                   side="right") - 1
            for shard, start in _window_starts(shards, seq_len, max_tokens)]
    return np.stack(rows) if rows else np.zeros((0, seq_len), dtype=np.int64)


def split_windows(split: Path, seq_len: int, max_tokens: int | None) -> list:
    return eval_windows(open_split(split), seq_len, max_tokens)


def evaluate_split(model, split: Path, seq_len: int, max_tokens: int | None, batch_size: int, device,
                   head=None, progress=None) -> tuple[dict, intervals.Units]:
    """The set's metrics with their 95% intervals, its loss by position bucket (evaluation/positions.py),
    and the per-unit sums (documents or windows) a paired before/after interval resamples."""
    shards = open_split(split)
    windows = eval_windows(shards, seq_len, max_tokens)
    if not windows:
        raise ValueError(f"{split}: fewer than {seq_len + 1} tokens, too short for one evaluation window; "
                         "lower eval.seq_len or give more text")
    documents = window_documents(shards, seq_len, max_tokens)
    from tokenmill.evaluation.positions import loss_by_position  # torch: only when a model is evaluated
    loss, by_position, units = loss_by_position(model, windows, batch_size, device, head, documents, progress)
    metrics = set_metrics(loss, read_meta(split), len(windows) * seq_len)
    return {**metrics, **set_intervals(units, read_meta(split)), "loss_by_position": by_position}, units


def set_metrics(loss: float, meta: dict, tokens: int) -> dict:
    """Loss (nats/token), perplexity, bits per byte (comparable across tokenizers: it divides by the
    split's UTF-8 bytes per token) and the tokens scored."""
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)),
            "bits_per_byte": loss / math.log(2) / bytes_per_token(meta), "tokens": tokens}


def bits_per_nat(meta: dict) -> float:
    """The factor from a split's nats per token to its bits per byte."""
    return 1 / math.log(2) / bytes_per_token(meta)


def set_intervals(units: intervals.Units, meta: dict) -> dict:
    """95% intervals of loss, perplexity and bits per byte, bootstrapped over the set's units."""
    low, high = intervals.interval(units)
    return {"loss_ci": [low, high], "perplexity_ci": [math.exp(min(low, 50)), math.exp(min(high, 50))],
            "bits_per_byte_ci": [low * bits_per_nat(meta), high * bits_per_nat(meta)],
            "interval_units": units.kind, "n_units": len(units.keys)}
