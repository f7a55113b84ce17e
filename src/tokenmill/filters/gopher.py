"""Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1).

Defaults are the paper's thresholds; reasons name the rule that fired.
"""

from typing import Literal

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop
from tokenmill.schema import StrictModel

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "‣", "◦", "⁃")


class GopherQualityFilter(StrictModel):
    name: Literal["gopher_quality"] = "gopher_quality"
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, gt=0)
    min_mean_word_length: float = Field(3.0, ge=0, description="characters")
    max_mean_word_length: float = Field(10.0, gt=0, description="characters")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="'#' and '...' per word")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1)
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="words with at least one letter")
    min_stop_words: int = Field(2, ge=0, description="distinct English stop words required")

    def __call__(self, doc: Document) -> Document | Drop:
        words = doc.text.split()
        n = len(words)
        if n < self.min_words:
            return Drop("too_few_words")
        if n > self.max_words:
            return Drop("too_many_words")
        mean_len = sum(len(w) for w in words) / n
        if not self.min_mean_word_length <= mean_len <= self.max_mean_word_length:
            return Drop("mean_word_length")
        symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
        if symbols / n > self.max_symbol_word_ratio:
            return Drop("symbol_word_ratio")
        lines = [line.strip() for line in doc.text.splitlines() if line.strip()]
        if lines and sum(line.startswith(BULLETS) for line in lines) / len(lines) > self.max_bullet_lines_ratio:
            return Drop("bullet_lines")
        if lines and sum(line.endswith(("...", "…")) for line in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return Drop("ellipsis_lines")
        if sum(any(c.isalpha() for c in w) for w in words) / n < self.min_alpha_words_ratio:
            return Drop("alpha_words_ratio")
        if len(STOP_WORDS.intersection(w.lower() for w in words)) < self.min_stop_words:
            return Drop("stop_words")
        return doc
