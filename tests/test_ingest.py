import gzip
import json

import pytest

from tokenmill.documents import read_documents
from tokenmill.ingest import IngestConfig, run


def ingest(paths, tmp_path, **kw):
    out = tmp_path / "out"
    counts = run(IngestConfig(paths=[str(p) for p in paths], **kw), out)
    return counts, {d.id: d for d in read_documents(out)}


def test_reads_text_markdown_and_jsonl_with_stable_ids(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("plain text")
    (src / "sub" / "b.md").write_text("# Title\nbody")
    (src / "c.jsonl").write_text(json.dumps({"content": "first", "lang": "en"}) + "\n" + json.dumps({"content": "second"}) + "\n")
    with gzip.open(src / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"content": "zipped", "uid": "X1"}) + "\n")
    (src / "ignored.bin").write_bytes(b"\0\1")
    counts, docs = ingest([src], tmp_path, text_field="content", id_field="uid")
    assert set(docs) == {"a.txt", "sub/b.md", "c.jsonl:1", "c.jsonl:2", "X1"}
    assert docs["c.jsonl:1"].metadata == {"lang": "en"} and docs["X1"].text == "zipped"
    assert docs["sub/b.md"].source.endswith("sub/b.md")
    assert counts["docs_out"] == 5 and counts["files"] == 4


def test_globs_and_package_paths(tmp_path):
    (tmp_path / "x1.txt").write_text("one")
    (tmp_path / "x2.txt").write_text("two")
    _, docs = ingest([tmp_path / "x*.txt"], tmp_path)
    assert sorted(d.text for d in docs.values()) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="no installed package"):
        ingest(["pkg://no_such_package_here/*.txt"], tmp_path)


def test_bad_records_are_counted_and_named(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "good"}\n{not json\n{"other": 1}\n{"text": "caf\xe9"}\n{"text": "   "}\n')
    counts, docs = ingest([path], tmp_path)
    assert counts["bad_records"] == 2 and counts["decode_errors"] == 1 and counts["empty"] == 1
    assert [d.text for d in docs.values()] == ["good", "caf\ufffd"]
    assert f"{path}:2: malformed JSON" in caplog.text and f"{path}:3: no string field 'text'" in caplog.text
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        ingest([path], tmp_path, strict=True)


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    payload = gzip.compress("".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(200)).encode())
    path.write_bytes(payload[: len(payload) // 2])
    counts, docs = ingest([path], tmp_path)
    assert counts["bad_records"] == 1 and 0 < len(docs) < 200


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest([tmp_path / "nowhere"], tmp_path)


def test_csv_tsv_json_parquet_and_zstd(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text('id,body,lang\nr1,"first, with comma",en\nr2,"multi\nline",fr\n')
    (src / "b.tsv").write_text("body\tlang\ntab separated\tde\n")
    (src / "c.json").write_text(json.dumps([{"body": "in an array", "lang": "en"}]))
    (src / "d.json").write_text(json.dumps({"k1": {"body": "in an object"}}))
    pq.write_table(pa.table({"body": ["from parquet", "second row"], "lang": ["en", "nl"]}), src / "e.parquet")
    (src / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"body": "zstd line"}\n'))
    counts, docs = ingest([src], tmp_path, text_field="body", id_field="id", metadata_fields=["lang"])
    texts = {d.text: d for d in docs.values()}
    assert set(texts) == {"first, with comma", "multi\nline", "tab separated", "in an array", "in an object",
                          "from parquet", "second row", "zstd line"}
    assert "r1" in docs and texts["multi\nline"].metadata == {"lang": "fr"}
    assert "d.json:k1" in docs and "e.parquet#1" in docs
    assert counts["bad_records"] == 0


def test_html_extraction_drops_boilerplate_and_keeps_title(tmp_path):
    body = " ".join(f"The castle stood on the hill for a hundred years, sentence {i}." for i in range(20))
    (tmp_path / "page.html").write_text(
        f"<html><head><title>Castle history</title></head><body><nav><a href='/'>Home</a> | <a href='/x'>Login"
        f"</a></nav><article><h1>Castle history</h1><p>{body}</p></article><footer>Copyright 2024 Cookie "
        f"settings</footer></body></html>")
    _, docs = ingest([tmp_path / "page.html"], tmp_path)
    doc = docs["page.html"]
    assert "hundred years, sentence 19" in doc.text
    assert "Login" not in doc.text and "Cookie settings" not in doc.text
    assert doc.metadata["title"] == "Castle history"


def test_bad_csv_json_and_parquet_are_named(tmp_path, caplog):
    (tmp_path / "no_text.csv").write_text("title,author\nx,y\n")
    (tmp_path / "broken.json").write_text('[{"text": "a"},\n {"text": ')
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "ok.txt").write_text("still read")
    counts, docs = ingest([tmp_path], tmp_path)
    assert [d.text for d in docs.values()] == ["still read"] and counts["bad_records"] == 3
    assert "no_text.csv: no column 'text'" in caplog.text
    assert "broken.json:2: malformed JSON" in caplog.text
    assert "corrupt.parquet: not a readable Parquet file" in caplog.text
