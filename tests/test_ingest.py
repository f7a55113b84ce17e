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
