"""datatrove's word splitting (`split_into_words`), memoised: the same words, several times faster.

datatrove splits words with spaCy, run on every document from scratch (its `memory_zone` frees spaCy's cache
after each document), at ~50 µs per whitespace-delimited chunk on real web text. Its Gopher repetition filter
and its MinHash signatures both spend most of their time there. `MemoisedWordSplitter` gives the same words:

- spaCy splits each whitespace-delimited chunk on its own (its cache is keyed by the chunk); only its
  special cases (emoticons, abbreviations) look across a space, and chunks where that can happen are found
  from spaCy's own pattern table and tokenized together (`straddling_pairs`). So we memoise chunk → words
  across documents and run spaCy only on chunks not seen before, all of a document's new ones in one call,
  without the sentencizer and lexical attributes that datatrove's tokenizer computes and never reads.

Tested against datatrove's words on generated and real text (tests/test_gopher_repetition.py,
tests/test_minhash.py). Languages whose datatrove word tokenizer is not spaCy's rule-based one fall back to
datatrove's word splitting.
"""

from __future__ import annotations

import re
from itertools import accumulate, pairwise

from datatrove.utils.text import split_into_words

SPACE_RUNS = re.compile(r"(\s+)")


class MemoisedWordSplitter:
    """datatrove's `split_into_words(text, language)` for spaCy languages, memoised per chunk."""

    def __init__(self, language: str, max_entries: int = 1_000_000):
        from datatrove.utils.word_tokenizers import SpaCyTokenizer, load_word_tokenizer
        words = load_word_tokenizer(language)
        # Custom spaCy configs (zh, ja) segment across whitespace: memoising chunks would change the words.
        memoisable = isinstance(words, SpaCyTokenizer) and words.config is None
        self.language, self.max_entries = language, max_entries
        self.chunks: dict[str, tuple[str, ...]] = {}  # chunk → its words
        self.segments: dict[str, tuple[str, ...]] = {}  # chunks that may interact, with their gaps → words
        # a chunk's suffixes that can open a special-case match across a space / prefixes that can close one
        # chunk → the pair ends that may follow it across a space / the pair ends it begins with
        self.opens: dict[str, frozenset[str]] = {}
        self.closes: dict[str, frozenset[str]] = {}
        self.tokenizer = self._fresh_tokenizer() if memoisable else None
        self.pairs = straddling_pairs(self.tokenizer, language) if memoisable else None
        if self.pairs is None:
            self.tokenizer = None
            return
        self.left, self.right = {a for a, _ in self.pairs}, {b for _, b in self.pairs}
        self.followers: dict[str, set[str]] = {}
        for a, b in self.pairs:
            self.followers.setdefault(a, set()).add(b)
        self.max_left, self.max_right = max(map(len, self.left), default=0), max(map(len, self.right), default=0)

    def _fresh_tokenizer(self):
        """datatrove's spaCy tokenizer (`spacy.blank`) without the lexical attributes (word shape, …) it
        computes for every new token string: the words do not depend on them, and they cost about a third
        of spaCy's time."""
        nlp = _spacy_without_torch().blank(self.language)
        nlp.vocab.lex_attr_getters = {}
        return nlp.tokenizer

    def __call__(self, text: str) -> list[str]:
        if self.tokenizer is None:
            return split_into_words(text, self.language)
        # [chunk, gap, chunk, …, chunk]: re's \s and spaCy split at the same characters (str.isspace)
        parts = SPACE_RUNS.split(text.strip())
        chunks = parts[::2] if parts[0] else []
        try:
            self._learn(chunks)
        except Exception:  # spaCy chokes on a few strings; datatrove has its own workaround for them
            return split_into_words(text, self.language)
        joins = [i for i, (left, right) in enumerate(pairwise(chunks))
                 if left in self.opens and right in self.closes and not self.opens[left].isdisjoint(self.closes[right])]
        if not joins:
            return [word for chunk in chunks for word in self.chunks[chunk]]
        words, start = [], 0
        for first, last in runs(joins):  # chunks first..last+1 may interact: tokenize them as one text
            words += [word for chunk in chunks[start:first] for word in self.chunks[chunk]]
            words += self._segment("".join(parts[2 * first:2 * last + 3]))
            start = last + 2
        return words + [word for chunk in chunks[start:] for word in self.chunks[chunk]]

    def _learn(self, chunks: list[str]) -> None:
        new = [chunk for chunk in dict.fromkeys(chunks) if chunk not in self.chunks]
        # bounded memory on an endless stream
        if len(self.chunks) + len(new) > self.max_entries or len(self.segments) > self.max_entries:
            for memo in (self.chunks, self.segments, self.opens, self.closes):
                memo.clear()
            self.tokenizer = self._fresh_tokenizer()  # its vocabulary grows with the memo: renew both
            new = list(dict.fromkeys(chunks))
        if not new:
            return
        # One spaCy call for all new chunks; the newline between them is a token of its own that no
        # special-case pattern contains, so each chunk is tokenized exactly as on its own.
        starts = list(accumulate((len(c) + 1 for c in new), initial=0))
        words: list[list[str]] = [[] for _ in new]
        i = 0
        for token in self.tokenizer("\n".join(new)):
            while token.idx >= starts[i + 1]:
                i += 1
            if not token.text.isspace():
                words[i].append(token.text)
        for chunk, chunk_words in zip(new, words):
            self.chunks[chunk] = tuple(chunk_words)
            ends = {chunk[-k:] for k in range(1, min(self.max_left, len(chunk)) + 1)} & self.left
            begins = {chunk[:k] for k in range(1, min(self.max_right, len(chunk)) + 1)} & self.right
            # Two chunks may join when a special-case pair straddles the space between them (conservative).
            if ends:
                self.opens[chunk] = frozenset(b for a in ends for b in self.followers[a])
            if begins:
                self.closes[chunk] = frozenset(begins)

    def _segment(self, segment: str) -> tuple[str, ...]:
        """Chunks that may interact, tokenized together with their original whitespace, as spaCy would."""
        if segment not in self.segments:
            tokens = [token.text.strip() for token in self.tokenizer(segment)]
            self.segments[segment] = tuple(t for t in tokens if t)
        return self.segments[segment]


def _spacy_without_torch():
    """spaCy, imported so that its thinc does not import torch: thinc only offers torch as a model backend, which a
    tokenizer never uses, and importing it was 1.7 of a word-splitting worker's 2.7 s of start-up. torch is
    importable again afterwards (thinc has recorded that it is absent)."""
    import sys
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy
        return spacy
    sys.modules["torch"] = None  # `import torch` raises ImportError: thinc's `has_torch = False`
    try:
        import spacy
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return spacy


def runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive values: [1, 2, 5] → [(1, 2), (5, 5)]."""
    out = []
    for i in indices:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def straddling_pairs(tokenizer, language: str) -> frozenset[tuple[str, str]] | None:
    """Adjacent token pairs inside spaCy's multi-token special-case patterns.

    spaCy applies special cases (emoticons such as ":p", abbreviations such as "p.") in a last pass over
    the whole document, and a match that straddles a space, although never applied, can hide an
    overlapping one inside a chunk ("try: p.Parse" gives "p" "." where "p.Parse" alone gives "p."). Only
    chunks joined by one of these pairs can interact; they are tokenized together.
    """
    import spacy
    bare = spacy.blank(language).tokenizer
    bare.rules = {}  # affix splitting alone: how spaCy builds the patterns of its special-case matcher
    patterns = [[t.text for t in bare(rule)] for rule in tokenizer.rules]
    if any(t.isspace() for p in patterns if len(p) > 1 for t in p):
        return None  # a pattern could match across a newline: chunks cannot be tokenized apart
    return frozenset((p[i], p[i + 1]) for p in patterns for i in range(len(p) - 1))
