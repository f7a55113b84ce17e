from tokenmill.dedup import DedupConfig, normalise
from tokenmill.dedup import run as dedup
from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.filters import FilterConfig
from tokenmill.filters import run as filter_run
from tokenmill.filters.base import Drop
from tokenmill.filters.gopher import GopherQualityFilter
from tokenmill.filters.length import LengthFilter

PROSE = ("The king and the queen have gone to the castle with their men, and that was the end of it. " * 8).strip()


def reason(step, text):
    result = step(Document("d", text))
    return result.reason if isinstance(result, Drop) else None


def test_length_reasons():
    f = LengthFilter(min_chars=5, max_chars=10)
    assert reason(f, "abc") == "too_short" and reason(f, "x" * 11) == "too_long" and reason(f, "hello") is None


def test_long_documents_are_selected_by_their_tokens_and_counted(shards, tmp_path):
    """A long-context stage's data: documents of at least N tokens of the model's tokenizer, through the
    filter stage like any filter (each drop counted by reason)."""
    import pytest
    from pydantic import ValidationError
    from tokenizers import Tokenizer
    tokenizer = shards / "tokenizer"
    count = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    texts = [PROSE[:n] for n in (60, 200, 500)] * 2
    sizes = [len(count.encode(t, add_special_tokens=False).ids) for t in texts]
    threshold = sorted(set(sizes))[1]
    write_documents((Document(f"d{i}", t) for i, t in enumerate(texts)), tmp_path / "in")
    counts = filter_run(FilterConfig(steps=[{"name": "length", "min_tokens": threshold, "tokenizer": str(tokenizer)}]),
                        tmp_path / "in", tmp_path / "out")
    kept = [d.text for d in read_documents(tmp_path / "out")]
    assert sorted(kept) == sorted(t for t, n in zip(texts, sizes) if n >= threshold) and len(kept) == 4
    assert counts["drops"] == {"length/too_few_tokens": 2}
    with pytest.raises(ValidationError, match="give tokenizer"):
        LengthFilter(min_tokens=100)


def test_gopher_rules_name_what_fired():
    g = GopherQualityFilter()
    assert reason(g, PROSE) is None
    assert reason(g, "the and of " * 5) == "too_few_words"
    assert reason(g, "zebra giraffe lion tiger " * 20) == "stop_words"
    assert reason(g, PROSE + " #hashtag" * 40) == "symbol_word_ratio"
    assert reason(g, "\n".join("- the kingdom treasury holds golden crowns with silver and jewels" for _ in range(40))) == "bullet_lines"
    assert reason(g, "\n".join("the king and the queen of the castle went home with their men at night..." for _ in range(40))) == "ellipsis_lines"
    assert reason(g, " ".join(["the", "castle", "kingdom", "12345", "67890", "24680", "13579", "11111"] * 10)) == "alpha_words_ratio"


def test_filter_stage_counts_by_reason_and_keeps_dropped_aside(tmp_path):
    docs = [Document("good", PROSE), Document("short", "tiny"), Document("animals", "zebra lion " * 60)]
    write_documents(docs, tmp_path / "in")
    counts = filter_run(FilterConfig(), tmp_path / "in", tmp_path / "out")
    assert counts["docs_in"] == 3 and counts["docs_out"] == 1
    assert counts["drops"] == {"length/too_short": 1, "gopher_quality/stop_words": 1}
    assert counts["chars_in"] == sum(len(d.text) for d in docs) and counts["chars_out"] == len(PROSE)
    assert [d.id for d in read_documents(tmp_path / "out")] == ["good"]
    dropped = {d.id: (name, d.metadata["filter_reason"])
               for name in ("length", "gopher_quality") for d in read_documents(tmp_path / "out" / "dropped" / name)}
    assert dropped == {"short": ("length", "too_short"), "animals": ("gopher_quality", "stop_words")}


def test_exact_dedup_on_normalised_text_keeps_first(tmp_path):
    docs = [Document("a", "Hello  World\n"), Document("b", "hello world"), Document("c", "Hello, world"),
            Document("d", "ＨＥＬＬＯ world")]
    write_documents(docs, tmp_path / "in")
    counts = dedup(DedupConfig(minhash=None), tmp_path / "in", tmp_path / "out")
    assert [d.id for d in read_documents(tmp_path / "out")] == ["a", "c"]
    assert counts["drops"] == {"exact/duplicate": 2} and counts["docs_out"] == 2
    assert normalise(" A\tB \n") == "a b"
