"""Hugging Face datasets as a source: `hf://ORG/NAME[/CONFIG][@REVISION]:SPLIT` in ingest.paths.

NAME is a hub dataset (streamed: nothing is downloaded whole) or a local folder written by
`Dataset.save_to_disk` / `DatasetDict.save_to_disk` (how it is tested here, offline). Pin a hub dataset's
version with `hf://NAME@REVISION:SPLIT`: its content cannot be hashed without reading it all, so the spec
itself is the stage's input key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tokenmill.documents import Document

PREFIX = "hf://"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    config: str | None
    split: str
    revision: str | None

    @property
    def local_dir(self) -> Path | None:
        path = Path(self.name)
        return path if path.is_dir() else None


def is_dataset_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse(spec: str) -> DatasetSpec:
    body = spec[len(PREFIX):]
    where, sep, split = body.rpartition(":")
    if not sep or not where or not split:
        raise ValueError(f"{spec}: expected hf://NAME[/CONFIG][@REVISION]:SPLIT, e.g. hf://HuggingFaceFW/fineweb-edu/sample-10BT:train")
    where, _, revision = where.partition("@")
    if Path(where).is_dir():
        return DatasetSpec(where, None, split, None)
    parts = where.split("/")  # ORG/NAME[/CONFIG], or a canonical NAME without an org
    name, config = ("/".join(parts[:2]), "/".join(parts[2:])) if len(parts) > 2 else (where, None)
    return DatasetSpec(name, config, split, revision or None)


def load(spec: DatasetSpec):
    try:
        import datasets
    except ImportError as e:
        raise ImportError("Hugging Face datasets as a source need the datasets package: pip install datasets") from e
    if spec.local_dir:
        data = datasets.load_from_disk(str(spec.local_dir))
        if isinstance(data, datasets.DatasetDict):
            if spec.split not in data:
                raise ValueError(f"{spec.local_dir}: no split {spec.split!r} (splits: {', '.join(data)})")
            data = data[spec.split]
        return data
    return datasets.load_dataset(spec.name, spec.config, split=spec.split, revision=spec.revision, streaming=True)


def read_dataset(spec_text: str, cfg, stats, record) -> Iterator[Document]:
    """Documents of one dataset split; `record` is readers._record (text field, id, metadata, counts)."""
    spec = parse(spec_text)
    for index, row in enumerate(load(spec)):
        yield from record(dict(row), f"{spec_text}#row{index}", f"{spec_text}#{index}", spec_text, cfg, stats)
