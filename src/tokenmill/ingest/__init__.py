"""Ingest: files, folders and globs of raw text → document shards (`00_raw/`).

Formats: .txt .md .rst .tex .adoc .org, .jsonl, .json (array or object of records), .csv .tsv, .parquet, .html .htm
(main text extracted with trafilatura), .pdf (pages joined), .warc(.gz) (HTML response records), .urls
(a list of URLs, scraped politely: see scrape.py), source code (.py .js .c .rs ... with the language in
metadata: see code.py); any of the text formats compressed (.gz .zst .bz2 .xz); and hf://NAME[/CONFIG]:SPLIT
datasets (hf_datasets.py). Hidden and version-control folders are skipped. Bad records are counted and named
(file, line or row); --strict stops.

Reading runs on the datatrove executors: the input files, in their sorted order, are cut into units of about
`bytes_per_unit` on disk, smaller when the input is too small to make `min_units` units of that size (each
dataset spec, and all `.urls` lists together, are one unit: politeness to a host is kept in one process), one
task per unit, writing `docs-UUUUU-NNNNN.jsonl.gz`. The units depend on the
files alone, so the shards, and the order of the documents, do not depend on the task or worker count.

    tokenmill ingest corpus/ 'more/*.jsonl.gz' -o runs/x/00_raw
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from datatrove.pipeline.base import PipelineStep

from tokenmill import engine, storage
from tokenmill.atomic import atomic_write_json
from tokenmill.documents import Document, write_documents
from tokenmill.ingest.hf_datasets import is_dataset_spec, parse, read_dataset
from tokenmill.ingest.readers import DECOMPRESSORS, READERS, ReadStats, _record, read_file, reader_for
from tokenmill.ingest.scrape import ScrapeConfig
from tokenmill.ingest.sources import Source, name_of, resolve_inputs, size_of
from tokenmill.schema import StrictModel

log = logging.getLogger(__name__)


class IngestConfig(StrictModel):
    paths: list[str] = Field(default_factory=list, description="files, folders, globs or pkg://PACKAGE/sub/glob")
    text_field: str = Field("text", description="JSON key holding a record's text")
    records: Literal["text", "chat"] = Field("text", description="chat: each JSON record is a conversation, "
                                             "{messages: [{role, content}, ...]} or {prompt, completion}")
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
    bytes_per_unit: int = Field(32_000_000, gt=0, description="input bytes (on disk) read by one task, at most about")
    min_units: int = Field(64, gt=0, description="cut a small or medium input into at least this many units (one "
                                                 "file at least each, 64 KB at least) so that HTML extraction uses "
                                                 "every core; a fixed number, not the machine's, so the output is "
                                                 "the same everywhere")
    executor: engine.ExecutorConfig = Field(default_factory=engine.ExecutorConfig)


def input_files(cfg: IngestConfig) -> list[tuple[Source, str]]:
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
    for unit in work_units(cfg):
        yield from read_unit(unit, cfg, stats)


MIN_UNIT_BYTES = 64_000  # below this a task's start-up costs more than its work
Unit = list[tuple[Source, str]] | str  # files (path or URL, id), or a dataset spec


def read_unit(unit: Unit, cfg: IngestConfig, stats: ReadStats) -> Iterator[Document]:
    if isinstance(unit, str):
        yield from read_dataset(unit, cfg, stats, _record)
        return
    for source, doc_id in unit:
        if isinstance(source, str):  # a storage URL: read through the local cache, named by its URL
            for doc in read_file(storage.local_file(source), doc_id, cfg, stats):
                doc.source = source
                yield doc
        else:
            yield from read_file(source, doc_id, cfg, stats)


def work_units(cfg: IngestConfig) -> list[Unit]:
    """The input cut into units of work, from the sorted file list alone (not from the machine)."""
    units: list[Unit] = []
    files = input_files(cfg)
    lists = [f for f in files if name_of(f[0]).endswith(".urls")]
    read = [(path, doc_id, size_of(path)) for path, doc_id in files if not name_of(path).endswith(".urls")]
    unit_bytes = min(cfg.bytes_per_unit, max(sum(size for *_, size in read) // cfg.min_units, MIN_UNIT_BYTES))
    current, size = [], 0
    for path, doc_id, file_size in read:
        current.append((path, doc_id))
        size += file_size
        if size >= unit_bytes:
            units.append(current)
            current, size = [], 0
    units += [u for u in (current, lists) if u]
    return units + dataset_specs(cfg)


def save_units(units: list[Unit], folder: Path) -> None:
    """One JSON file per unit, for the tasks to read their own: the step the executor sends to every task then
    holds the folder, not every file name (datatrove pickles the pipeline once per task, with dill; a list of
    109,403 pages made that the parent's main work, on a core the workers needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, unit in enumerate(units):
        record = unit if isinstance(unit, str) else [[str(s), isinstance(s, str), doc_id] for s, doc_id in unit]
        atomic_write_json(folder / f"{index:05d}.json", record)


def load_unit(folder: Path, index: int) -> Unit:
    record = json.loads((folder / f"{index:05d}.json").read_text())
    return record if isinstance(record, str) else [(s if is_url else Path(s), doc_id) for s, is_url, doc_id in record]


class ReadUnits(PipelineStep):
    """Reads the units dealt to this task, each into its own shards; counts what the readers skipped."""

    type = "📥 - INGEST"
    name = "read"

    def __init__(self, cfg: IngestConfig, n_units: int, units_dir: Path, out_dir: Path):
        super().__init__()
        self.cfg, self.n_units, self.units_dir, self.out_dir = cfg, n_units, Path(units_dir), Path(out_dir)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for index in range(rank, self.n_units, world_size):
            stats = ReadStats()
            written = write_documents(read_unit(load_unit(self.units_dir, index), self.cfg, stats), self.out_dir,
                                      self.cfg.docs_per_shard, self.cfg.chars_per_shard, prefix=f"docs-{index:05d}")
            self.stat_update("docs_out", value=written)
            for key, value in vars(stats).items():
                self.stat_update(key, value=value)
        yield from ()


def run(cfg: IngestConfig, out_dir: Path) -> dict:
    units = work_units(cfg)
    save_units(units, out_dir / "logs" / "units")
    engine.run_pipeline(engine.with_default_tasks(cfg.executor, len(units)),
                        [ReadUnits(cfg, len(units), out_dir / "logs" / "units", out_dir)], out_dir / "logs")
    stats = engine.step_stats(out_dir / "logs")[0]["stats"]
    counted = {key: engine.total(stats, key) for key in ("docs_out", *vars(ReadStats()))}
    return {"files": sum(len(u) for u in units if not isinstance(u, str)), "units": len(units),
            **{("chars_out" if k == "chars" else k): v for k, v in counted.items()}}
