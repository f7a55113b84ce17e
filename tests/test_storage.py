"""Object storage on a real S3 server (SeaweedFS on 127.0.0.1, tests/s3_server.py): a WARC set and a JSONL
set through ingest → filter → dedup → tokenize with every output on s3://, the shards identical to a local
run's, training from s3:// shards, checksums, half-published folders, and credentials written nowhere."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import pytest
import yaml

from conftest import make_text
from tokenmill.cli import main


def write_crawl(root: Path, n_pages: int = 12, seed: int = 1) -> Path:
    """A WARC of HTML pages and a JSONL file of records: what a crawl and a curated set look like."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    rng = random.Random(seed)
    root.mkdir(parents=True)
    with open(root / "crawl-00000.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i in range(n_pages):
            paragraphs = "".join(f"<p>{line}</p>" for line in make_text(rng, 18).splitlines())
            page = f"<html><head><title>Page {i}</title></head><body>{paragraphs}</body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"https://example.org/{i}", "response",
                                                          payload=io.BytesIO(page), http_headers=headers))
    with gzip.open(root / "books.jsonl.gz", "wt") as f:
        for i in range(20):
            f.write(json.dumps({"id": f"book-{i}", "text": make_text(rng, 20)}) + "\n")
    return root


def upload(fs, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{prefix}/{path.relative_to(local)}")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TOKENMILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def storage_config(s3, tmp_path) -> Path:
    """A config whose storage section holds the endpoint and the credentials (no AWS_* variables are set)."""
    import fsspec.config
    saved = {k: dict(v) for k, v in fsspec.config.conf.items()}
    path = tmp_path / "storage.yaml"
    path.write_text(yaml.safe_dump({"storage": s3.options(), "tokenize": {"vocab_size": 320, "val_fraction": 0.15},
                                    "filter": {"steps": [{"name": "length", "min_chars": 100}]}}))
    yield path
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved)


def data_stages(source: str, out: str, config: Path) -> None:
    """ingest → filter → dedup → tokenize, each its own command, as a user runs them."""
    assert main(["ingest", source, "-o", f"{out}/00_raw", "--config", str(config)]) == 0
    assert main(["filter", f"{out}/00_raw", "-o", f"{out}/10_filtered", "--config", str(config)]) == 0
    assert main(["dedup", f"{out}/10_filtered", "-o", f"{out}/20_dedup", "--config", str(config)]) == 0
    assert main(["tokenize", f"{out}/20_dedup", "-o", f"{out}/30_shards", "--config", str(config)]) == 0


def token_bytes(shards: Path) -> dict[str, bytes]:
    return {str(p.relative_to(shards)): p.read_bytes() for p in sorted(shards.rglob("tokens*.bin"))}


def test_data_stages_on_s3_give_the_local_shards_and_train_reads_them(s3, storage_config, cache, tmp_path, monkeypatch):
    fs = s3.filesystem()
    crawl = write_crawl(tmp_path / "crawl")
    upload(fs, crawl, f"{s3.bucket}/crawl")
    bucket = f"s3://{s3.bucket}"

    data_stages(str(crawl), str(tmp_path / "local"), storage_config)
    data_stages(f"{bucket}/crawl/*", f"{bucket}/run", storage_config)

    for stage in ("00_raw", "10_filtered", "20_dedup", "30_shards"):
        manifest = json.loads(fs.cat_file(f"{s3.bucket}/run/{stage}/manifest.json"))
        assert manifest["files"] and all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    local = json.loads((tmp_path / "local" / "30_shards" / "manifest.json").read_text())
    assert local["counts"]["train_n_tokens"] > 0
    assert manifest["counts"] == local["counts"]

    # A fresh machine (an empty cache) reads the published shards and finds the local run's bytes.
    from tokenmill import storage
    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("TOKENMILL_CACHE", str(fresh))
    copy = storage.local_stage(f"{bucket}/run/30_shards")
    assert copy.is_relative_to(fresh)
    assert token_bytes(copy) == token_bytes(tmp_path / "local" / "30_shards")

    train = ["--set", "model.preset=tiny", "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64",
             "--set", "model.num_hidden_layers=2", "--set", "model.num_attention_heads=2",
             "--set", "model.num_key_value_heads=1", "--set", "train.seq_len=32", "--set", "train.max_steps=4",
             "--set", "train.warmup_steps=1", "--set", "train.eval_tokens=256", "--config", str(storage_config)]
    assert main(["train", f"{bucket}/run/30_shards", "-o", str(tmp_path / "ck-s3"), *train]) == 0
    assert main(["train", str(tmp_path / "local" / "30_shards"), "-o", str(tmp_path / "ck-local"), *train]) == 0

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [row["train/loss"] for row in rows if "train/loss" in row]
    assert losses(tmp_path / "ck-s3") == losses(tmp_path / "ck-local") and losses(tmp_path / "ck-s3")

    # Run again: every stage is up to date on s3, nothing is recomputed.
    manifests = {stage: fs.cat_file(f"{s3.bucket}/run/{stage}/manifest.json") for stage in ("00_raw", "30_shards")}
    data_stages(f"{bucket}/crawl/*", f"{bucket}/run", storage_config)
    assert {stage: fs.cat_file(f"{s3.bucket}/run/{stage}/manifest.json") for stage in manifests} == manifests

    # Credentials from the config are written nowhere: not in the run folders, the cache, or the bucket.
    written = [p for root in (tmp_path / "local", tmp_path / "ck-s3", cache, fresh) for p in root.rglob("*") if p.is_file()]
    assert written and not [p for p in written if s3.secret.encode() in p.read_bytes()]
    objects = fs.find(f"{s3.bucket}/run")
    assert objects and not [o for o in objects if s3.secret.encode() in fs.cat_file(o)]


def test_a_changed_object_and_a_half_published_folder_are_refused(s3, storage_config, cache, tmp_path, monkeypatch,
                                                                   capsys):
    from tokenmill import storage
    fs = s3.filesystem()
    corpus = write_crawl(tmp_path / "crawl")
    bucket = f"s3://{s3.bucket}"
    data_stages(str(corpus), f"{bucket}/checked", storage_config)
    monkeypatch.setenv("TOKENMILL_CACHE", str(tmp_path / "other-cache"))  # another machine, which must download
    shard = next(p for p in fs.find(f"{s3.bucket}/checked/30_shards") if p.endswith(".bin"))
    data = bytearray(fs.cat_file(shard))
    data[64] ^= 0xFF  # the first token, just after the 64-byte header
    fs.pipe_file(shard, bytes(data))
    with pytest.raises(ValueError, match=r"tokens.*\.bin: its content does not match the sha256"):
        storage.local_stage(f"{bucket}/checked/30_shards")
    assert not (tmp_path / "other-cache" / "stages").exists() or not any(
        (p / "manifest.json").is_file() for p in (tmp_path / "other-cache" / "stages").iterdir())

    fs.rm_file(f"{s3.bucket}/checked/20_dedup/manifest.json")  # an upload that stopped before its manifest
    assert main(["tokenize", f"{bucket}/checked/20_dedup", "-o", str(tmp_path / "shards"),
                 "--config", str(storage_config)]) == 2
    assert "20_dedup: no manifest.json there, so it is not a finished tokenmill stage output" in capsys.readouterr().err
