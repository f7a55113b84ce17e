"""Documents, characters and tokens in each data stage's output and each filter's dropped documents.

The run's tokenizer (`30_shards/tokenizer`) exists only after the tokenize stage, so tokens are counted
when the report is rendered, with that tokenizer (without EOS), and cached in `stats/tokens.json` under
the stage key and the tokenizer's hash: the next report of an unchanged run reads them back.
"""

from __future__ import annotations

import hashlib
import json
from itertools import islice
from pathlib import Path

from tokenmill.atomic import atomic_write_json
from tokenmill.documents import read_documents
from tokenmill.stage import read_manifest

DATA_FOLDERS = {"ingest": "00_raw", "filter": "10_filtered", "dedup": "20_dedup"}


def data_folders(run_dir: Path) -> dict[str, tuple[Path, str]]:
    """{label: (document folder, the key of the stage that wrote it)}: stage outputs and dropped sets."""
    folders = {}
    for stage, name in DATA_FOLDERS.items():
        manifest = read_manifest(run_dir / name)
        if manifest:
            folders[stage] = (run_dir / name, manifest["key"])
            dropped = run_dir / name / "dropped"
            for folder in sorted(dropped.iterdir()) if dropped.is_dir() else []:
                folders[f"dropped/{folder.name}"] = (folder, manifest["key"])
    return folders


def stage_sizes(run_dir: Path) -> dict[str, dict[str, int]]:
    """{label: {docs, chars, tokens}} for `data_folders`; empty before the tokenize stage has run."""
    tokenizer_file = run_dir / "30_shards" / "tokenizer" / "tokenizer.json"
    if not tokenizer_file.is_file():
        return {}
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer_hash = hashlib.blake2b(tokenizer_file.read_bytes(), digest_size=8).hexdigest()
    cache_file = run_dir / "stats" / "tokens.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    counts = {}
    for label, (folder, stage_key) in data_folders(run_dir).items():
        key = f"{stage_key}:{tokenizer_hash}"
        if cache.get(label, {}).get("key") != key:
            cache[label] = {"key": key, **measure(tokenizer, folder)}
        counts[label] = {k: v for k, v in cache[label].items() if k != "key"}
    atomic_write_json(cache_file, cache)
    return counts


def measure(tokenizer, folder: Path, batch_docs: int = 256) -> dict[str, int]:
    docs, size = read_documents(folder), {"docs": 0, "chars": 0, "tokens": 0}
    while batch := [doc.text for doc in islice(docs, batch_docs)]:
        size["docs"] += len(batch)
        size["chars"] += sum(map(len, batch))
        size["tokens"] += sum(len(e.ids) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
    return size
