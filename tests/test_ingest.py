import gzip
import json
import pathlib

import pytest

from tokenmill.documents import read_documents
from tokenmill.ingest import IngestConfig, run


def ingest(paths, tmp_path, **kw):
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"  # a fresh folder: a stage's folder holds its markers
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


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_html_extraction_drops_boilerplate_and_keeps_title(tmp_path, extractor):
    body = " ".join(f"The castle stood on the hill for a hundred years, sentence {i}." for i in range(20))
    (tmp_path / "page.html").write_text(
        f"<html><head><title>Castle history</title><link rel='canonical' href='https://example.org/castle'></head>"
        f"<body><nav><a href='/'>Home</a> | <a href='/x'>Login</a></nav><article><h1>Castle history</h1><p>{body}"
        f"</p></article><footer>Copyright 2024 Cookie settings</footer></body></html>")
    _, docs = ingest([tmp_path / "page.html"], tmp_path, html_extractor=extractor)
    doc = docs["page.html"]
    assert "hundred years, sentence 19" in doc.text
    assert "Login" not in doc.text and "Cookie settings" not in doc.text
    assert doc.metadata["title"] == "Castle history" and doc.metadata["url"] == "https://example.org/castle"


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


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one Helvetica text line per page (built by hand, offsets computed)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [" + " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages))) + f"] /Count {len(pages)} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_pages_are_joined_and_a_corrupt_pdf_is_counted(tmp_path):
    (tmp_path / "book.pdf").write_bytes(make_pdf(["First page of the book.", "Second page follows here."]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    counts, docs = ingest([tmp_path], tmp_path)
    assert docs["book.pdf"].text == "First page of the book.\n\nSecond page follows here."
    assert docs["book.pdf"].metadata["pages"] == 2 and counts["bad_records"] == 1


def test_warc_html_records_without_identified_type_are_kept(tmp_path):
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    body = " ".join(f"The castle library holds old maps and letters, shelf {i}." for i in range(30))
    page = f"<html><head><title>Library</title></head><body><nav>Menu Login</nav><p>{body}</p></body></html>"
    with open(tmp_path / "crawl.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)

        def response(url, payload, content_type):
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=headers))

        response("https://example.org/library", page.encode(), "text/html")
        response("https://example.org/sniffed", page.replace("Library", "Sniffed").encode(), "application/octet-stream")
        response("https://example.org/logo.png", b"\x89PNG\r\n binary", "image/png")
        writer.write_record(writer.create_warc_record("https://example.org/", "request", payload=io.BytesIO(b"GET /")))
    counts, docs = ingest([tmp_path / "crawl.warc.gz"], tmp_path)
    urls = sorted(d.metadata["url"] for d in docs.values())
    assert urls == ["https://example.org/library", "https://example.org/sniffed"]
    assert counts["skipped_not_html"] == 1
    assert all("shelf 29" in d.text and "Login" not in d.text for d in docs.values())


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"content": ["first row", "second row"], "lang": ["en", "fr"]}),
        "test": datasets.Dataset.from_dict({"content": ["held out"], "lang": ["en"]})})
    data.save_to_disk(str(tmp_path / "ds"))
    counts, docs = ingest([f"hf://{tmp_path / 'ds'}:train"], tmp_path, text_field="content")
    assert sorted(d.text for d in docs.values()) == ["first row", "second row"]
    assert {d.metadata["lang"] for d in docs.values()} == {"en", "fr"}
    with pytest.raises(ValueError, match="no split 'validation'"):
        ingest([f"hf://{tmp_path / 'ds'}:validation"], tmp_path)
    with pytest.raises(ValueError, match="expected hf://NAME"):
        ingest(["hf://just-a-name"], tmp_path)


def test_hf_spec_parsing():
    from tokenmill.ingest.hf_datasets import parse
    spec = parse("hf://HuggingFaceFW/fineweb-edu/sample-10BT@v1.2:train")
    assert (spec.name, spec.config, spec.revision, spec.split) == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "v1.2", "train")
    assert parse("hf://wikitext:test").name == "wikitext" and parse("hf://wikitext:test").config is None


def test_a_50_mb_single_line_and_an_empty_file(tmp_path):
    (tmp_path / "huge.txt").write_text("word " * 10_000_000)
    (tmp_path / "empty.txt").write_text("")
    counts, docs = ingest([tmp_path], tmp_path)
    assert len(docs["huge.txt"].text) == 50_000_000 and counts["empty"] == 1


def test_source_code_files_keep_their_language(tmp_path):
    src = tmp_path / "repo"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "util.py").write_text("def add(a, b):\n    return a + b\n")
    (src / "main.rs").write_text("fn main() { println!(\"hi\"); }\n")
    (src / "lib.h").write_text("int add(int a, int b);\n")
    (src / "page.html").write_text("<html><body><p>" + "An HTML page, not code. " * 20 + "</p></body></html>")
    (src / "empty.go").write_text("")
    counts, docs = ingest([src], tmp_path)
    assert {k: d.metadata.get("language") for k, d in docs.items()} == {
        "pkg/util.py": "Python", "main.rs": "Rust", "lib.h": "C", "page.html": None}
    assert docs["pkg/util.py"].text == "def add(a, b):\n    return a + b\n"  # code is kept byte for byte
    assert docs["pkg/util.py"].metadata["path"] == "pkg/util.py"
    assert counts["empty"] == 1


def test_an_installed_packages_python_source_is_a_corpus(tmp_path):
    counts, docs = ingest(["pkg://json/*.py"], tmp_path)
    assert {"__init__.py", "decoder.py", "encoder.py"} <= set(docs)
    assert {d.metadata["language"] for d in docs.values()} == {"Python"}
    assert "def dumps(" in docs["__init__.py"].text


def test_compressed_text_formats_and_the_kernel_docs_suffixes(tmp_path):
    """Any text format behind gzip, zstd, bz2 or xz reads like the plain file (Debian ships docs as .rst.gz)."""
    import bz2
    import lzma

    import zstandard
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    compress = {".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress, ".bz2": bz2.compress,
                ".xz": lzma.compress}
    expected = {}
    for i, (suffix, fn) in enumerate(compress.items()):
        for kind in (".rst", ".txt", ".tex", ".adoc", ".org"):
            text = f"{kind} document number {i}, with ünïcode"
            (src / "sub" / f"doc{i}{kind}{suffix}").write_bytes(fn(text.encode()))
            expected[f"sub/doc{i}{kind}{suffix}"] = text
    (src / "lines.jsonl.bz2").write_bytes(bz2.compress(b'{"text": "bz2 line"}\n'))
    (src / "tool.py.xz").write_bytes(lzma.compress(b"print('hi')\n"))
    (src / "table.yaml.gz").write_bytes(gzip.compress(b"a: 1\n"))  # not a format tokenmill reads: skipped
    counts, docs = ingest([src], tmp_path)
    assert {k: docs[k].text for k in expected} == expected
    assert docs["lines.jsonl.bz2:1"].text == "bz2 line"
    assert docs["tool.py.xz"].metadata["language"] == "Python"
    assert counts["files"] == len(expected) + 2 and counts["bad_records"] == 0


def test_corrupt_compressed_text_is_counted_and_named(tmp_path, caplog):
    import lzma
    (tmp_path / "ok.md").write_text("fine")
    (tmp_path / "broken.rst.xz").write_bytes(lzma.compress(b"x" * 1000)[:20])
    counts, docs = ingest([tmp_path / "ok.md", tmp_path / "broken.rst.xz"], tmp_path)
    assert counts["bad_records"] == 1 and list(docs) == ["ok.md"]
    assert "broken.rst.xz: unreadable compressed data" in caplog.text
    with pytest.raises(ValueError, match="broken.rst.xz"):
        ingest([tmp_path / "broken.rst.xz"], tmp_path, strict=True)


def test_hidden_and_vcs_folders_are_skipped_and_a_path_given_twice_is_read_once(tmp_path):
    src = tmp_path / "repo"
    for folder in ("docs", ".git/objects", ".cache", "CVS", "docs/.ipynb_checkpoints"):
        (src / folder).mkdir(parents=True, exist_ok=True)
        (src / folder / "notes.md").write_text(f"text in {folder}")
    (src / ".hidden.md").write_text("a hidden file")
    counts, docs = ingest([src, src / "docs", str(src / "**/*.md"), src / "docs" / "notes.md"], tmp_path)
    assert sorted(d.text for d in docs.values()) == ["text in docs"]
    assert counts["files"] == 1
    explicit, docs = ingest([src / ".hidden.md"], tmp_path)  # named explicitly: read
    assert [d.text for d in docs.values()] == ["a hidden file"]


def test_a_linked_file_outside_the_folder_is_read_under_its_name_in_the_folder(tmp_path):
    """Debian's docs link shared files (underscore.js) from elsewhere on disk into the docs folder."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "shared.md").write_text("shared text")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "link.md").symlink_to(tmp_path / "elsewhere" / "shared.md")
    (tmp_path / "docs" / "relative.md").symlink_to(pathlib.Path("..") / "docs" / "link.md")  # a relative link to the link
    counts, docs = ingest([tmp_path / "docs", tmp_path / "elsewhere"], tmp_path)
    assert list(docs) == ["link.md"] and counts["files"] == 1  # and read once, though reached three times


def test_ingest_runs_in_units_on_the_executor_and_its_shards_do_not_depend_on_tasks(tmp_path):
    """Files are cut into units of ~bytes_per_unit by their sorted order; each unit is a task writing its
    own shards. Default (one task per unit, every core), 1 task and 2 tasks give the same shards."""
    from tokenmill.documents import document_shards, read_shard
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02d}.txt").write_text(f"file {i} " + "words " * (20 + i))
    (src / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    outputs = []
    for executor in ({}, {"tasks": 1}, {"tasks": 2, "workers": 2}):
        counts, _ = ingest([src], tmp_path, bytes_per_unit=1000, executor=executor)
        out = sorted(tmp_path.glob("out*"))[-1]
        outputs.append([(shard.name, [(d.id, d.text) for d in read_shard(shard)]) for shard in document_shards(out)])
        assert counts["units"] > 3 and counts["files"] == 31 and counts["docs_out"] == 31
        assert counts["bad_records"] == 1
    assert outputs[0] == outputs[1] == outputs[2]
    ids = [doc_id for _, docs in outputs[0] for doc_id, _ in docs]
    assert ids == sorted(ids, key=lambda i: i.split(":")[0])  # the files' sorted order, across shards


def test_a_medium_input_is_cut_into_min_units_units_with_the_same_documents(tmp_path, capfd):
    """800 KB in 20 files once made one 32 MB unit, one task on any machine; now at least min_units units of
    64 KB or more, so it uses the cores, and the documents are the same. A bar shows the tasks."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"page{i:02d}.txt").write_text(f"page {i} " + "lorem ipsum dolor " * 2200)  # ~40 KB each
    one, docs_one = ingest([src], tmp_path, min_units=1)
    many, docs_many = ingest([src], tmp_path)
    assert one["units"] == 1 and many["units"] == 10  # 800 KB / 64 units is under 64 KB: units of 2 files
    assert list(docs_one.items()) == list(docs_many.items()) and len(docs_many) == 20
    assert "tasks" in capfd.readouterr().err
