"""The n-grams of the evaluation text, and what in a training document matches them.

An `EvalIndex` holds every word and character n-gram hash of the evaluation sets, each owned by the first
set that holds it. `matches` finds a document's n-grams in it; `spans` turns the matches into character
ranges of the document to remove (with a margin), merged where they touch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tokenmill.decontaminate.ngrams import CHAR_SALT, Tokenizer, Tokens, ngram_hashes


@dataclass
class SetReport:
    documents: int = 0
    ngrams: int = 0
    too_short: int = 0  # documents with fewer words and characters than one n-gram: they cannot be matched


@dataclass
class EvalIndex:
    names: list[str]
    keys: np.ndarray            # sorted unique n-gram hashes (uint64)
    owner: np.ndarray           # the set each key belongs to (index into names)
    n_words: int
    n_chars: int
    reports: dict[str, SetReport] = field(default_factory=dict)

    @classmethod
    def build(cls, sources: dict[str, object], n_words: int, n_chars: int, tokenizer: Tokenizer) -> EvalIndex:
        """`sources`: {set name: iterable of document texts}."""
        keys, owners, reports = [], [], {}
        for i, (name, texts) in enumerate(sources.items()):
            report = reports[name] = SetReport()
            for text in texts:
                hashes = document_ngrams(tokenizer.tokens(text), n_words, n_chars)
                report.documents, report.ngrams = report.documents + 1, report.ngrams + len(hashes)
                report.too_short += not len(hashes)
                keys.append(hashes)
                owners.append(np.full(len(hashes), i, dtype=np.int32))
        all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
        all_owners = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32)
        # The first set that holds an n-gram owns it: a stable sort keeps the sets' order among equal keys.
        order = np.argsort(all_keys, kind="stable")
        unique, first = np.unique(all_keys[order], return_index=True)
        return cls(list(sources), unique, all_owners[order][first], n_words, n_chars, reports)

    def without(self, common: np.ndarray) -> EvalIndex:
        """The index less the n-grams in `common` (text many training documents share)."""
        keep = ~np.isin(self.keys, common)
        return EvalIndex(self.names, self.keys[keep], self.owner[keep], self.n_words, self.n_chars, self.reports)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash, the index of its key, or -1. Almost every training n-gram is in no evaluation set: a
        table of the keys' top bits turns those away with one gather each, and only the rest are searched."""
        found = np.full(len(hashes), -1)
        if not len(self.keys) or not len(hashes):
            return found
        shift, table = self._top_bits
        maybe = np.flatnonzero(table[hashes >> shift])
        if len(maybe):
            candidates = hashes[maybe]
            at = np.searchsorted(self.keys, candidates).clip(max=len(self.keys) - 1)
            found[maybe] = np.where(self.keys[at] == candidates, at, -1)
        return found

    @cached_property
    def _top_bits(self) -> tuple[np.uint64, np.ndarray]:
        """(shift, table): table[key >> shift] holds for every key; ~16 slots a key (at most 2^26: 64 MB), so
        about 1 in 16 of the other hashes passes to the search."""
        bits = int(np.clip(np.ceil(np.log2(max(len(self.keys), 1) * 16)), 16, 26))
        table = np.zeros(1 << bits, dtype=bool)
        table[self.keys >> np.uint64(64 - bits)] = True
        return np.uint64(64 - bits), table


def document_ngrams(tokens: Tokens, n_words: int, n_chars: int) -> np.ndarray:
    """The word n-grams, then the (salted) character n-grams, of a document."""
    return np.concatenate([ngram_hashes(tokens.words, n_words), ngram_hashes(tokens.chars, n_chars) ^ CHAR_SALT])


def matched_spans(tokens: Tokens, index: EvalIndex, margin_chars: int, text_length: int) -> list[tuple[int, int, int]]:
    """[(start, end, owning set)] character ranges to remove: each matched n-gram's extent, widened by the
    margin, merged where they overlap (the merged range keeps its first match's set)."""
    ranges = []
    for stream, spans, n, salt in ((tokens.words, tokens.word_spans, index.n_words, np.uint64(0)),
                                   (tokens.chars, tokens.char_spans, index.n_chars, CHAR_SALT)):
        found = index.lookup(ngram_hashes(stream, n) ^ salt)
        for i in np.flatnonzero(found >= 0):
            start, end = spans[i, 0] - margin_chars, spans[i + n - 1, 1] + margin_chars
            ranges.append((max(0, int(start)), min(text_length, int(end)), int(index.owner[found[i]])))
    ranges.sort()
    merged: list[list[int]] = []
    for start, end, owner in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, owner])
    return [tuple(r) for r in merged]
