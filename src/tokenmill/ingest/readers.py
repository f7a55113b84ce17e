"""One reader per file type. Each yields Documents and counts what it had to skip, naming file and line."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tokenmill.documents import Document
from tokenmill.ingest.code import LANGUAGES, language_of

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    chars: int = 0
    bad_records: int = 0
    decode_errors: int = 0
    empty: int = 0
    skipped_not_html: int = 0  # WARC response records whose payload is not HTML


def _decode(raw: bytes, where: str, stats: ReadStats, strict: bool) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise ValueError(f"{where}: not UTF-8 ({e}); re-encode the file or drop --strict") from e
        stats.decode_errors += 1
        log.warning("%s: not valid UTF-8 (%s); bad bytes replaced with U+FFFD", where, e.reason)
        return raw.decode("utf-8", errors="replace")


def _bad(where: str, problem: str, stats: ReadStats, strict: bool) -> None:
    if strict:
        raise ValueError(f"{where}: {problem}")
    stats.bad_records += 1
    log.warning("%s: %s; record skipped", where, problem)


def _emit(doc: Document, stats: ReadStats) -> Iterator[Document]:
    if not doc.text.strip():
        stats.empty += 1
        return
    stats.chars += len(doc.text)
    yield doc


def read_text(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    text = _read_text(path, stats, cfg.strict)
    if text is not None:
        yield from _emit(Document(id=doc_id, text=text, source=str(path)), stats)


def read_code(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """One document per source file, with its language and its path (relative to the input spec)."""
    text = _read_text(path, stats, cfg.strict)
    metadata = {"language": language_of(Path(uncompressed_name(path.name))), "path": doc_id}
    if text is not None:
        yield from _emit(Document(id=doc_id, text=text, source=str(path), metadata=metadata), stats)


def _open_zstd(path: Path):
    import zstandard
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))


# Any text format may come compressed (Debian ships its docs as .rst.gz and .txt.gz, corpora come as .jsonl.zst).
DECOMPRESSORS = {".gz": lambda p: gzip.open(p, "rb"), ".zst": _open_zstd, ".zstd": _open_zstd,
                 ".bz2": lambda p: bz2.open(p, "rb"), ".xz": lambda p: lzma.open(p, "rb")}
# What a truncated or corrupt archive raises while it is read.
CORRUPT = (EOFError, gzip.BadGzipFile, OSError, lzma.LZMAError)


def uncompressed_name(name: str) -> str:
    """`notes.rst.gz` → `notes.rst`; other names as they are."""
    return next((name[:-len(s)] for s in DECOMPRESSORS if name.endswith(s)), name)


def _open_binary(path: Path):
    """Plain or compressed (gzip, zstd, bz2, xz), transparently."""
    opener = next((open_ for suffix, open_ in DECOMPRESSORS.items() if path.name.endswith(suffix)), None)
    return opener(path) if opener else open(path, "rb")


def read_bytes(path: Path) -> bytes:
    with _open_binary(path) as f:
        return f.read()


def _is_corrupt(e: Exception) -> bool:
    return isinstance(e, CORRUPT) or type(e).__name__ == "ZstdError"  # zstandard's own type for corrupt frames


def _read_text(path: Path, stats: ReadStats, strict: bool) -> str | None:
    """A whole file as text, decompressed; a corrupt archive is counted (or raised under --strict) as None."""
    try:
        raw = read_bytes(path)
    except Exception as e:
        if not _is_corrupt(e):
            raise
        _bad(str(path), f"unreadable compressed data ({e})", stats, strict)
        return None
    return _decode(raw, str(path), stats, strict)


def _record(record, where: str, default_id: str, source: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """A JSON/CSV/Parquet record → Document: the text field, an id, the other fields as metadata."""
    if cfg.records == "chat":
        yield from _chat_record(record, where, default_id, source, cfg, stats)
        return
    if not isinstance(record, dict) or not isinstance(record.get(cfg.text_field), str):
        _bad(where, f"no string field {cfg.text_field!r} (set ingest.text_field)", stats, cfg.strict)
        return
    text = record.pop(cfg.text_field)
    rid = str(record.pop(cfg.id_field)) if cfg.id_field and record.get(cfg.id_field) is not None else default_id
    if cfg.metadata_fields is not None:
        record = {k: record[k] for k in cfg.metadata_fields if k in record}
    yield from _emit(Document(id=rid, text=text, source=source, metadata=record), stats)


def _chat_record(record, where: str, default_id: str, source: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """A conversation ({messages: [{role, content}, ...]}) or a prompt/completion pair → a Document whose
    metadata holds the messages and whose text is their contents (what filters and dedup read); the id
    names where it came from, so a later problem with it can name the file and line."""
    from tokenmill.chat import check_messages
    if isinstance(record, dict) and "messages" not in record and isinstance(record.get("prompt"), str) \
            and isinstance(record.get("completion"), str):
        record = {**record, "messages": [{"role": "user", "content": record.pop("prompt")},
                                         {"role": "assistant", "content": record.pop("completion")}]}
    if not isinstance(record, dict) or "messages" not in record:
        _bad(where, "neither messages [{role, content}, ...] nor prompt and completion", stats, cfg.strict)
        return
    problem = check_messages(record["messages"])
    if problem:
        _bad(where, problem, stats, cfg.strict)
        return
    messages = [{"role": m["role"], "content": m["content"]} for m in record.pop("messages")]
    rid = str(record.pop(cfg.id_field)) if cfg.id_field and record.get(cfg.id_field) is not None else default_id
    text = "\n\n".join(m["content"] for m in messages)
    yield from _emit(Document(id=rid, text=text, source=source, metadata={"messages": messages, "where": where}),
                     stats)


def read_jsonl(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(_decode(raw, where, stats, cfg.strict))
                except json.JSONDecodeError as e:
                    _bad(where, f"malformed JSON ({e.msg})", stats, cfg.strict)
                    continue
                yield from _record(record, where, f"{doc_id}:{line_no}", str(path), cfg, stats)
    except Exception as e:
        if not _is_corrupt(e):
            raise
        # A truncated or corrupt archive: keep what was read, count the rest as one bad record.
        _bad(str(path), f"unreadable compressed data ({e})", stats, cfg.strict)


def read_json(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """A JSON array of records, or an object whose values are records (keys become ids)."""
    text = _read_text(path, stats, cfg.strict)
    if text is None:
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        _bad(f"{path}:{e.lineno}", f"malformed JSON ({e.msg})", stats, cfg.strict)
        return
    if isinstance(data, list):
        items = ((f"{doc_id}[{i}]", f"{path}[{i}]", r) for i, r in enumerate(data))
    elif isinstance(data, dict):
        items = ((f"{doc_id}:{k}", f"{path}[{k!r}]", r) for k, r in data.items())
    else:
        _bad(str(path), "top level is neither an array nor an object of records", stats, cfg.strict)
        return
    for rid, where, record in items:
        yield from _record(record, where, rid, str(path), cfg, stats)


def read_csv(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    csv.field_size_limit(sys.maxsize)  # real documents are longer than csv's 128 KB default
    text = _read_text(path, stats, cfg.strict)
    if text is None:
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.name.endswith(".tsv") else ",")
    if reader.fieldnames is None or (cfg.records == "text" and cfg.text_field not in reader.fieldnames):
        _bad(str(path), f"no column {cfg.text_field!r} (columns: {reader.fieldnames}); set ingest.text_field",
             stats, cfg.strict)
        return
    for row_no, row in enumerate(reader, 2):  # line 1 is the header
        yield from _record(dict(row), f"{path}:{row_no}", f"{doc_id}:{row_no}", str(path), cfg, stats)


def read_parquet(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    import pyarrow.parquet as pq
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and OSError subclasses for broken files
        _bad(str(path), f"not a readable Parquet file ({e})", stats, cfg.strict)
        return
    if cfg.records == "text" and cfg.text_field not in table.schema_arrow.names:
        _bad(str(path), f"no column {cfg.text_field!r} (columns: {table.schema_arrow.names}); set ingest.text_field",
             stats, cfg.strict)
        return
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield from _record(record, f"{path}#row{row}", f"{doc_id}#{row}", str(path), cfg, stats)
            row += 1


def extract_html(html: str, extractor: str = "trafilatura") -> tuple[str, dict]:
    """Main text without navigation and boilerplate, and the page's title and URL: trafilatura (the
    quality option) or resiliparse (~30x faster on the Python docs; see docs/benchmarks.md)."""
    if extractor == "resiliparse":
        return _extract_with_resiliparse(html)
    import trafilatura
    result = trafilatura.bare_extraction(html, with_metadata=True, include_comments=False)
    fields = result if isinstance(result, dict) or result is None else vars(result)  # a dict before trafilatura 2
    if not fields:
        return "", {}
    return fields.get("text") or "", {k: fields[k] for k in ("title", "url") if fields.get(k)}


def _extract_with_resiliparse(html: str) -> tuple[str, dict]:
    try:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree
    except ImportError as e:
        raise ImportError("ingest.html_extractor: resiliparse needs `pip install resiliparse` "
                          "(or tokenmill[fast-html])") from e
    tree = HTMLTree.parse(html)
    canonical = tree.head.query_selector('link[rel="canonical"]') if tree.head else None
    metadata = {"title": tree.title.strip() if tree.title else "",
                "url": canonical.getattr("href") if canonical else ""}
    return extract_plain_text(tree, main_content=True), {k: v for k, v in metadata.items() if v}


def read_html(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    html = _read_text(path, stats, cfg.strict)
    if html is None:
        return
    text, metadata = extract_html(html, cfg.html_extractor)
    yield from _emit(Document(id=doc_id, text=text, source=str(path), metadata=metadata), stats)


def read_pdf(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """One document per PDF, its pages' text joined by blank lines; an unreadable PDF is counted and skipped."""
    from pypdf import PdfReader
    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as e:  # pypdf raises many types for broken, truncated or encrypted files
        _bad(str(path), f"unreadable PDF ({type(e).__name__}: {e})", stats, cfg.strict)
        return
    title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    metadata = {"pages": len(pages), **({"title": str(title)} if title else {})}
    yield from _emit(Document(id=doc_id, text="\n\n".join(p.strip() for p in pages if p.strip()), source=str(path),
                              metadata=metadata), stats)


def _is_html(record, payload: bytes) -> bool:
    """HTML by the HTTP Content-Type, the WARC identified type, or the payload itself. Common Crawl marks
    pages with WARC-Identified-Payload-Type, but other crawlers often write none (datatrove's WarcReader
    then skips the page)."""
    declared = " ".join(filter(None, [record.http_headers.get_header("Content-Type") if record.http_headers else None,
                                      record.rec_headers.get_header("WARC-Identified-Payload-Type")])).lower()
    if "html" in declared:
        return True
    head = payload[:2048].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<body" in head


def read_warc(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """Response records with HTML → extracted main text; other records are counted, not read."""
    from warcio.archiveiterator import ArchiveIterator
    try:
        with open(path, "rb") as f:
            for index, record in enumerate(ArchiveIterator(f)):
                if record.rec_type != "response":
                    continue
                payload = record.content_stream().read()
                if not _is_html(record, payload):
                    stats.skipped_not_html += 1
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                text, metadata = extract_html(_decode(payload, f"{path}#record{index}", stats, cfg.strict),
                                              cfg.html_extractor)
                metadata = {**metadata, "url": url, "date": record.rec_headers.get_header("WARC-Date")}
                rid = record.rec_headers.get_header("WARC-Record-ID") or f"{doc_id}#{index}"
                yield from _emit(Document(id=rid, text=text, source=url or str(path), metadata=metadata), stats)
    except Exception as e:  # warcio's ArchiveLoadFailed and gzip errors for truncated files
        _bad(str(path), f"unreadable WARC ({type(e).__name__}: {e})", stats, cfg.strict)


def read_url_list(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    """A `.urls` file: each URL fetched politely (see scrape.py), its main text extracted."""
    from tokenmill.ingest.scrape import scrape
    for outcome in scrape(path, cfg.scrape):
        if "html" not in outcome:
            _bad(f"{path}: {outcome['url']}", outcome["error"], stats, strict=False)
            continue
        text, metadata = extract_html(outcome["html"], cfg.html_extractor)
        yield from _emit(Document(id=outcome["url"], text=text, source=outcome["url"],
                                  metadata={**metadata, "url": outcome["url"]}), stats)


Reader = Callable[[Path, str, object, ReadStats], Iterator[Document]]
TEXT_FORMATS = (".txt", ".md", ".rst", ".tex", ".adoc", ".asciidoc", ".org")
READERS: dict[str, Reader] = {
    **{suffix: read_text for suffix in TEXT_FORMATS}, ".jsonl": read_jsonl, ".json": read_json,
    ".csv": read_csv, ".tsv": read_csv, ".parquet": read_parquet, ".html": read_html, ".htm": read_html,
    ".pdf": read_pdf, ".warc": read_warc, ".warc.gz": read_warc, ".urls": read_url_list,
    **{suffix: read_code for suffix in LANGUAGES},
}
# Containers with their own compression, or read by a library from the path: never behind a decompressor.
NOT_DECOMPRESSED = {read_parquet, read_pdf, read_warc, read_url_list}


def reader_for(name: str) -> Reader | None:
    """The reader of a file name (`a.jsonl`, `a.rst.gz`, `a.warc.gz`), or None when tokenmill cannot read it."""
    for candidate in dict.fromkeys([name, uncompressed_name(name)]):
        suffix = next((s for s in sorted(READERS, key=len, reverse=True) if candidate.endswith(s)), None)
        if suffix and (candidate == name or READERS[suffix] not in NOT_DECOMPRESSED):
            return READERS[suffix]
    return None


def read_file(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    yield from reader_for(path.name)(path, doc_id, cfg, stats)
