"""Ingest: files, folders and globs of raw text → document shards (`00_raw/`).

Formats: .txt .md .rst .tex .adoc .org, .jsonl, .json (array or object of records), .csv .tsv, .parquet, .html .htm
(main text extracted with trafilatura), .pdf (pages joined), .warc(.gz) (HTML response records), .urls
(a list of URLs, scraped politely: see scrape.py), source code (.py .js .c .rs ... with the language in
metadata: see code.py); any of the text formats compressed (.gz .zst .bz2 .xz); and hf://NAME[/CONFIG]:SPLIT
datasets (hf_datasets.py). Hidden and version-control folders are skipped. Bad records are counted and named
(file, line or row); --strict stops.

    tokenmill ingest corpus/ 'more/*.jsonl.gz' -o runs/x/00_raw
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from tokenmill.documents import Document, write_documents
from tokenmill.ingest.hf_datasets import is_dataset_spec, parse, read_dataset
from tokenmill.ingest.readers import DECOMPRESSORS, READERS, ReadStats, _record, read_file, reader_for
from tokenmill.ingest.scrape import ScrapeConfig
from tokenmill.ingest.sources import resolve_inputs
from tokenmill.schema import StrictModel

log = logging.getLogger(__name__)


class IngestConfig(StrictModel):
    paths: list[str] = Field(default_factory=list, description="files, folders, globs or pkg://PACKAGE/sub/glob")
    text_field: str = Field("text", description="JSON key holding a record's text")
    id_field: str | None = Field(None, description="JSON key / column holding a record's id (default: file and line)")
    metadata_fields: list[str] | None = Field(None, description="JSON keys / columns kept as metadata (default: all)")
    docs_per_shard: int = Field(50_000, gt=0, description="documents per output shard, at most")
    chars_per_shard: int = Field(16_000_000, gt=0, description="characters per output shard, about: shards are the "
                                                              "later data stages' parallel tasks")
    strict: bool = Field(False, description="stop at the first bad record instead of counting and skipping it")
    html_extractor: Literal["trafilatura", "resiliparse"] = Field(
        "trafilatura", description="main-text extraction of HTML, WARC and scraped pages: trafilatura (quality) "
                                   "or resiliparse (~30x faster; pip install resiliparse)")
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig, description="politeness of .urls fetching")


def input_files(cfg: IngestConfig) -> list[tuple[Path, str]]:
    """(file, stable id prefix) for every readable input file, in a deterministic order."""
    if not cfg.paths:
        raise ValueError("ingest.paths is empty: give files, folders, globs or hf:// datasets to read")
    file_specs = [p for p in cfg.paths if not is_dataset_spec(p)]
    known = f"{', '.join(READERS)}; text formats also compressed: {', '.join(DECOMPRESSORS)}"
    return resolve_inputs(file_specs, lambda name: reader_for(name) is not None, known) if file_specs else []


def dataset_specs(cfg: IngestConfig) -> list[str]:
    return list(dict.fromkeys(p for p in cfg.paths if is_dataset_spec(p)))  # a dataset named twice is read once


def input_keys(cfg: IngestConfig) -> list[Path | str]:
    """What the ingest stage's key hashes: the files, a saved dataset's folder, or a hub dataset's spec."""
    datasets = [str(parse(s).local_dir) if parse(s).local_dir else s for s in dataset_specs(cfg)]
    return [path for path, _ in input_files(cfg)] + datasets


def iter_documents(cfg: IngestConfig, stats: ReadStats | None = None) -> Iterator[Document]:
    """Every document the config's paths hold, in a deterministic order (bad records counted in `stats`)."""
    stats = stats if stats is not None else ReadStats()
    for path, doc_id in input_files(cfg):
        yield from read_file(path, doc_id, cfg, stats)
    for spec in dataset_specs(cfg):
        yield from read_dataset(spec, cfg, stats, _record)


def run(cfg: IngestConfig, out_dir: Path) -> dict:
    files = input_files(cfg)
    stats = ReadStats()
    n_docs = write_documents(iter_documents(cfg, stats), out_dir, cfg.docs_per_shard, cfg.chars_per_shard)
    return {"files": len(files), "docs_out": n_docs, "chars_out": stats.chars,
            "bad_records": stats.bad_records, "decode_errors": stats.decode_errors, "empty": stats.empty,
            "skipped_not_html": stats.skipped_not_html}
