"""At train time: how much of each evaluation set is also in the training shards.

The data stages decontaminate, but a run may start from shards made elsewhere, or evaluate on a set added
later. Before the first step the trainer decodes (up to `max_chars` of) its training shards and reports, per
evaluation set, the share of the set's documents with an n-gram found there (common text left out, as in the
dedup step); above the threshold it warns, naming the set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tokenmill.decontaminate.index import EvalIndex, document_ngrams
from tokenmill.decontaminate.ngrams import Tokenizer

N_WORDS, N_CHARS, COMMON_DOCS = 13, 40, 10  # the dedup step's defaults


def decoded(split: Path, tokenizer) -> Iterator[str]:
    """The documents of a token split as text."""
    from tokenmill.tokenize.shards import open_split
    for shard in open_split(split):
        for ids in shard.documents():
            yield tokenizer.decode(ids.tolist(), skip_special_tokens=True)


def overlap(eval_texts: dict[str, Iterable[str]], training_texts: Iterable[str]) -> dict[str, dict]:
    """{set: {"documents", "overlapping", "share"}}: evaluation documents with an n-gram in the training text."""
    tokenizer = Tokenizer()
    per_doc = {name: list(texts) for name, texts in eval_texts.items()}
    index = EvalIndex.build({f"{name}\0{i}": [text] for name, texts in per_doc.items()
                             for i, text in enumerate(texts)}, N_WORDS, N_CHARS, tokenizer)
    found = np.zeros(len(index.keys), dtype=np.int64)  # training documents holding each evaluation n-gram
    for text in training_texts:
        at = index.lookup(document_ngrams(tokenizer.tokens(text), N_WORDS, N_CHARS))
        found[np.unique(at[at >= 0])] += 1
    hit_docs = {index.names[o] for o in index.owner[(found > 0) & (found <= COMMON_DOCS)]}
    out = {}
    for name, texts in per_doc.items():
        overlapping = sum(f"{name}\0{i}" in hit_docs for i in range(len(texts)))
        out[name] = {"documents": len(texts), "overlapping": overlapping,
                     "share": overlapping / len(texts) if texts else 0.0}
    return out


def describe(result: dict[str, dict], threshold: float, sampled_chars: int | None) -> list[str]:
    """Warning lines for the sets above the threshold."""
    scope = f"the first {sampled_chars:,} characters of the training shards" if sampled_chars else "the training shards"
    return [f"[train] warning: {r['overlapping']:,} of {r['documents']:,} documents of evaluation set {name!r} "
            f"({r['share']:.1%}) share a {N_WORDS}-word / {N_CHARS}-character passage with {scope}: its figures "
            "may measure memorisation. Decontaminate (dedup.decontaminate) or choose another set"
            for name, r in result.items() if r["share"] > threshold]
