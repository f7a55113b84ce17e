"""Gopher repetition rules (Rae et al. 2021, table A1) with datatrove's decisions, several times faster.

datatrove's GopherRepetitionFilter spends most of its time in spaCy's word tokenizer. This block makes the
same decisions from the same words:

- the words come from `tokenmill.words.MemoisedWordSplitter` (spaCy run once per distinct chunk);
- n-gram keys are slices of one joined string instead of a join per n-gram, and the greedy duplicate scan
  visits only positions whose n-gram occurs more than once (the others can never be a repeat).

Same keep/drop and reason as datatrove's block: tested on generated and real text, and checked on 5,278
real documents by bench/data_stage_vs_datatrove.py (0 differences; 2.8x faster on distinct text).
"""

from __future__ import annotations

from collections import Counter
from itertools import accumulate

from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates

from tokenmill.words import MemoisedWordSplitter

class NGrams:
    """A document's words as n-gram strings, cut from one joined string rather than joined per n-gram."""

    def __init__(self, words: list[str]):
        self.count = len(words)
        self.spaced = " ".join(words)  # datatrove's get_n_grams keys
        self.spaced_starts = list(accumulate((len(w) + 1 for w in words), initial=0))
        self.spaced_ends = [start - 1 for start in self.spaced_starts]
        self.packed = "".join(words)  # datatrove's find_all_duplicate keys
        self.packed_starts = list(accumulate(map(len, words), initial=0))

    def spaced_grams(self, n: int) -> list[str]:
        return list(map(self.spaced.__getitem__, map(slice, self.spaced_starts, self.spaced_ends[n:])))

    def packed_grams(self, n: int) -> list[str]:
        return list(map(self.packed.__getitem__, map(slice, self.packed_starts, self.packed_starts[n:])))


def top_ngram_chars(grams: NGrams, n: int) -> int | None:
    """Characters of the most frequent n-gram times its count (datatrove's find_top_duplicate over
    get_n_grams, ties to the first seen); None when the text has fewer than n words."""
    if grams.count < n:
        return None
    gram, count = Counter(grams.spaced_grams(n)).most_common(1)[0]
    return len(gram) * count


def duplicate_ngram_chars(grams: NGrams, n: int) -> int:
    """Characters in repeated n-grams, scanning left to right and skipping past each repeat (datatrove's
    find_all_duplicate: n-grams compared as their words concatenated without spaces)."""
    packed = grams.packed_grams(n)
    counts = Counter(packed)
    if len(counts) == len(packed):
        return 0
    # An n-gram seen once in the document can never be a repeat: the scan only needs the others.
    candidates = [i for i, gram in enumerate(packed) if counts[gram] > 1]
    seen, repeated, next_position = set(), 0, 0
    for i in candidates:
        if i < next_position:  # inside a repeat the scan jumped over
            continue
        if packed[i] in seen:
            repeated += len(packed[i])
            next_position = i + n
        else:
            seen.add(packed[i])
            next_position = i + 1
    return repeated


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    """datatrove's block with memoised word splitting and cheaper n-gram counting; same parameters."""

    name = "👯 Gopher Repetition (memoised)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.split_words = MemoisedWordSplitter(self.language)

    def filter(self, doc) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        reason = self._duplicated_parts(text)
        if reason:
            return False, reason
        grams = NGrams(self.split_words(text))
        for n, n_frac in self.top_n_grams:
            chars = top_ngram_chars(grams, n)
            if chars is not None and chars / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            if duplicate_ngram_chars(grams, n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True

    def _duplicated_parts(self, text: str) -> str | None:
        """The paragraph and line rules, exactly as datatrove states them."""
        paragraphs = self.paragraph_exp.split(text.strip())
        count, chars = find_duplicates(paragraphs)
        if self.dup_para_frac and count / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac and chars / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        count, chars = find_duplicates(lines)
        if self.dup_line_frac and count / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac and chars / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"
        return None
