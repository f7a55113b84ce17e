"""Language ID, C4, FineWeb, Gopher repetition, URL blocklist, bad words, PII: each asserts its reason."""

from datatrove.data import Document as DtDocument

from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.filters import FilterConfig, run
from tokenmill.filters.bad_words import BadWordsFilter
from tokenmill.filters.base import Drop, as_block
from tokenmill.filters.datatrove_blocks import C4Filter, FineWebFilter, GopherRepetitionFilter
from tokenmill.filters.language import LanguageFilter
from tokenmill.filters.pii import PIIRedaction
from tokenmill.filters.url import URLBlocklistFilter

ENGLISH = ("The old king walked slowly through the castle gardens, thinking about the war that was coming. "
           "His daughter had warned him many times that the northern lords could not be trusted. "
           "Now the snow was falling again, and the roads to the sea were closed for the winter. "
           "In the kitchens the cooks argued about bread, salt and the price of cheese from the valley. "
           "A messenger arrived at dusk with a sealed letter that nobody dared to open before supper. "
           "Later that night the bells of the chapel rang twice, which had not happened in many years.")
GERMAN = ("Der alte König ging langsam durch die Gärten des Schlosses und dachte an den kommenden Krieg. "
          "Seine Tochter hatte ihn oft gewarnt, dass man den Fürsten des Nordens nicht trauen könne. ") * 3


def datatrove_result(step, text, metadata=None):
    """Run one configured filter as the datatrove block the stage uses."""
    doc = DtDocument(text=text, id="d", metadata=dict(metadata or {}))
    result = as_block(step).filter(doc)
    return (result if isinstance(result, tuple) else (result, None)), doc


def test_language_keeps_english_and_records_the_language():
    keep = LanguageFilter()(Document("e", ENGLISH))
    assert keep.metadata["language"] == "en" and keep.metadata["language_score"] > 0.9
    assert LanguageFilter()(Document("g", GERMAN)) == Drop("other_language")
    assert isinstance(LanguageFilter(languages=["de"])(Document("g", GERMAN)), Document)


def test_datatrove_quality_blocks_name_their_reasons():
    assert datatrove_result(C4Filter(), ENGLISH)[0] == (True, None)
    assert datatrove_result(C4Filter(), ENGLISH + " lorem ipsum dolor sit amet.")[0] == (False, "lorem_ipsum")
    assert datatrove_result(C4Filter(), ENGLISH + " if (x) { return y; }.")[0] == (False, "curly_bracket")
    (kept, _), doc = datatrove_result(C4Filter(min_num_sentences=1), ENGLISH + "\nPlease enable javascript to view this.")
    assert kept and "javascript" not in doc.text.lower()  # the line is removed, the document kept
    repeated = "\n".join(["Buy cheap shoes now at the best price in town today."] * 30)
    assert datatrove_result(GopherRepetitionFilter(), repeated)[0] == (False, "dup_line_frac")
    listy = "\n".join(f"item number {i}" for i in range(60))
    assert datatrove_result(FineWebFilter(), listy)[0][0] is False


def test_url_blocklist_blocks_subdomains_and_words(tmp_path):
    (tmp_path / "blocked.txt").write_text("# a comment\nspam.example\n")
    f = URLBlocklistFilter(domains_file=str(tmp_path / "blocked.txt"), banned_words=["casino"])
    assert f(Document("a", "x", metadata={"url": "https://www.spam.example/page"})) == Drop("blocked_domain")
    assert f(Document("b", "x", metadata={"url": "https://news.example/casino-royale"})) == Drop("banned_word")
    assert isinstance(f(Document("c", "x", metadata={"url": "https://notspam.example/"})), Document)
    assert isinstance(f(Document("d", "no url")), Document)


def test_bad_words_from_the_users_list(tmp_path):
    (tmp_path / "words.txt").write_text("darn\nheck no\n")
    f = BadWordsFilter(words_file=str(tmp_path / "words.txt"))
    assert f(Document("a", "Well, HECK NO, said he.")) == Drop("bad_word")
    assert isinstance(f(Document("b", "The darnest thing.")), Document)  # whole words only


def test_pii_is_redacted_not_dropped():
    text = ("Mail jane.doe+news@example.co.uk or call +44 20 7946 0958 / (555) 123-4567. Server 192.168.1.20, "
            "v6 2001:db8::1:0:0:1 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334. Version 1.2.3.4567 stays.")
    out = PIIRedaction()(Document("p", text)).text
    assert "jane.doe" not in out and "7946" not in out and "123-4567" not in out and "192.168" not in out
    assert out.count("<EMAIL>") == 1 and out.count("<PHONE>") == 2 and "8a2e" not in out
    assert "1.2.3.4567" in out


def test_stage_with_every_filter_balances_its_counts(tmp_path):
    docs = [Document("en1", ENGLISH, metadata={"url": "https://good.example/a"}),
            Document("de1", GERMAN),
            Document("spam", ENGLISH, metadata={"url": "https://spam.example/x"}),
            Document("mail", ENGLISH + " Contact me at someone@example.com today."),
            Document("rep", "\n".join(["Buy cheap shoes now at the best price in town today."] * 30))]
    write_documents(docs[:3], tmp_path / "in", docs_per_shard=1)
    cfg = FilterConfig(steps=[{"name": "language"}, {"name": "url_blocklist", "domains": ["spam.example"]},
                              {"name": "gopher_repetition"}, {"name": "pii"}], executor={"tasks": 2})
    from tokenmill.documents import SHARD_GLOB  # noqa: F401
    write_documents(docs[3:], tmp_path / "more", docs_per_shard=1)
    for i, f in enumerate(sorted((tmp_path / "more").glob("docs-*"))):
        f.rename(tmp_path / "in" / f"docs-{10 + i:05d}.jsonl.gz")
    counts = run(cfg, tmp_path / "in", tmp_path / "out")
    assert counts["drops"] == {"language/other_language": 1, "url_blocklist/blocked_domain": 1,
                               "gopher_repetition/dup_line_frac": 1}
    assert counts["docs_in"] == 5 and counts["docs_out"] == 2 == counts["docs_in"] - sum(counts["drops"].values())
    assert counts["rewrites"] == {"pii": 1}
    kept = {d.id: d for d in read_documents(tmp_path / "out")}
    assert set(kept) == {"en1", "mail"} and "<EMAIL>" in kept["mail"].text
    assert kept["en1"].metadata["language"] == "en" and kept["en1"].source == ""
    assert [d.id for d in read_documents(tmp_path / "out" / "dropped" / "language")] == ["de1"]
