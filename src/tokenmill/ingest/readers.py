"""One reader per file type. Each yields Documents and counts what it had to skip, naming file and line."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tokenmill.documents import Document

log = logging.getLogger(__name__)


@dataclass
class ReadStats:
    chars: int = 0
    bad_records: int = 0
    decode_errors: int = 0
    empty: int = 0


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
    text = _decode(path.read_bytes(), str(path), stats, cfg.strict)
    yield from _emit(Document(id=doc_id, text=text, source=str(path)), stats)


def read_jsonl(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(_decode(raw, where, stats, cfg.strict))
                except json.JSONDecodeError as e:
                    _bad(where, f"malformed JSON ({e.msg})", stats, cfg.strict)
                    continue
                if not isinstance(record, dict) or not isinstance(record.get(cfg.text_field), str):
                    _bad(where, f"no string field {cfg.text_field!r} (set ingest.text_field)", stats, cfg.strict)
                    continue
                text = record.pop(cfg.text_field)
                rid = str(record.pop(cfg.id_field)) if cfg.id_field and cfg.id_field in record else f"{doc_id}:{line_no}"
                yield from _emit(Document(id=rid, text=text, source=str(path), metadata=record), stats)
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        # A truncated or corrupt gzip: keep what was read, count the rest as one bad record.
        _bad(str(path), f"unreadable compressed data ({e})", stats, cfg.strict)


Reader = Callable[[Path, str, object, ReadStats], Iterator[Document]]
READERS: dict[str, Reader] = {".txt": read_text, ".md": read_text, ".jsonl": read_jsonl, ".jsonl.gz": read_jsonl}


def read_file(path: Path, doc_id: str, cfg, stats: ReadStats) -> Iterator[Document]:
    suffix = next(s for s in sorted(READERS, key=len, reverse=True) if path.name.endswith(s))
    yield from READERS[suffix](path, doc_id, cfg, stats)
