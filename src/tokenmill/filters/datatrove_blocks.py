"""Filters that datatrove already has, configured by name: Gopher repetition, C4 quality, FineWeb quality.

Their parameters and defaults are datatrove's (the values of the Gopher, C4 and FineWeb papers); the
config class passes them through and returns the datatrove block.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokenmill.schema import StrictModel


class _DatatroveFilter(StrictModel):
    def _params(self) -> dict:
        return self.model_dump(exclude={"name"})


class GopherRepetitionFilter(_DatatroveFilter):
    """Drops documents whose lines, paragraphs or n-grams repeat too much (Rae et al. 2021, table A1)."""
    name: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: float | None = Field(0.3, description="share of duplicated lines")
    dup_para_frac: float | None = Field(0.3, description="share of duplicated paragraphs")
    dup_line_char_frac: float | None = Field(0.2, description="share of characters in duplicated lines")
    dup_para_char_frac: float | None = Field(0.2, description="share of characters in duplicated paragraphs")
    top_n_grams: list[tuple[int, float]] = Field(
        [(2, 0.2), (3, 0.18), (4, 0.16)], description="[n, max share of characters in the most frequent n-gram]")
    dup_n_grams: list[tuple[int, float]] = Field(
        [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        description="[n, max share of characters in repeated n-grams]")
    language: str = Field("en", description="language of datatrove's word tokenizer")
    implementation: Literal["memoised", "datatrove"] = Field(
        "memoised", description="memoised: same decisions as datatrove's block, several times faster "
                                "(tokenmill.filters.gopher_repetition); datatrove: its block as it is")

    def block(self, exclusion_writer=None):
        from datatrove.pipeline.filters import GopherRepetitionFilter as Datatrove
        from tokenmill.filters.gopher_repetition import FastGopherRepetitionFilter as Memoised
        params = self.model_dump(exclude={"name", "implementation"})
        params["top_n_grams"], params["dup_n_grams"] = tuple(self.top_n_grams), tuple(self.dup_n_grams)
        block = Memoised if self.implementation == "memoised" else Datatrove
        return block(exclusion_writer=exclusion_writer, **params)


class C4Filter(_DatatroveFilter):
    """C4's rules (Raffel et al. 2020): lines without terminal punctuation or with javascript/cookie-policy
    text are removed; documents with lorem ipsum, curly braces or too few sentences are dropped."""
    name: Literal["c4"] = "c4"
    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(5, description="-1 disables")
    min_words_per_line: int = Field(3, description="-1 disables")
    max_word_length: int = Field(1000, description="characters; -1 disables")
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def block(self, exclusion_writer=None):
        from datatrove.pipeline.filters import C4QualityFilter
        return C4QualityFilter(exclusion_writer=exclusion_writer, **self._params())


class FineWebFilter(_DatatroveFilter):
    """FineWeb's own rules (Penedo et al. 2024): line punctuation ratio, short lines, duplicated-line
    characters, list-like documents (many newlines per word)."""
    name: Literal["fineweb"] = "fineweb"
    line_punct_thr: float = Field(0.12, ge=0, le=1)
    line_punct_exclude_zero: bool = False
    short_line_thr: float = Field(0.67, ge=0, le=1)
    short_line_length: int = Field(30, gt=0, description="characters")
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1)
    new_line_ratio: float = Field(0.3, ge=0)

    def block(self, exclusion_writer=None):
        from datatrove.pipeline.filters import FineWebQualityFilter
        return FineWebQualityFilter(exclusion_writer=exclusion_writer, **self._params())
