"""Storage URLs: any fsspec URL (s3://, gs://, az://, ...) where tokenmill takes a path.

Stages compute on local folders. This module is the one place that moves them to and from object storage:
- a remote **input file** (ingest's `s3://bucket/crawl/*.warc.gz`) is read through a local cache, one
  download per object version (its ETag and size);
- a remote **stage output** is built in the local cache, then published: every file first, `manifest.json`
  last, with each file's size and sha256 added to it. The manifest is the completion marker there as here,
  so a half-uploaded folder never reads as whole;
- a remote **stage input** (`tokenmill train s3://.../30_shards`) is copied once into the cache, under its
  manifest's key, and each file is checked against the manifest's sha256 before it is used.

Credentials come from where fsspec's backends look (AWS_* variables, ~/.aws, instance roles) or from the
config's `storage:` section (fsspec options per protocol), which is applied to fsspec's own config and never
written anywhere. The cache is $TOKENMILL_CACHE, else ~/.cache/tokenmill.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

LOCAL_PROTOCOLS = {"file", "local", "pkg", "hf"}  # pkg:// and hf:// have their own resolvers
MANIFEST = "manifest.json"


class StorageConfig(BaseModel):
    """fsspec options per protocol, e.g. `storage: {s3: {endpoint_url: "http://127.0.0.1:8333"}}`; keys and
    secrets are better left to AWS_* variables or ~/.aws. The section is never saved with the config."""
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _mappings(self):
        bad = [name for name, value in (self.model_extra or {}).items() if not isinstance(value, dict)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: each storage entry is a protocol (s3, gcs, az, ...) mapped to its "
                             "fsspec options, e.g. s3: {endpoint_url: ...}")
        return self

    def options(self) -> dict[str, dict]:
        return dict(self.model_extra or {})


def is_remote(path) -> bool:
    text = str(path)
    return "://" in text and text.split("://", 1)[0] not in LOCAL_PROTOCOLS


def configure(options: dict[str, dict]) -> None:
    """Apply the config's `storage:` options (e.g. {"s3": {"endpoint_url": ...}}) to every filesystem this
    process opens, datatrove's included."""
    import fsspec.config
    for protocol, values in options.items():
        fsspec.config.conf.setdefault(protocol, {}).update(values)


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL."""
    from fsspec.core import url_to_fs
    return url_to_fs(url)


def _url(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def cache_root() -> Path:
    return Path(os.environ.get("TOKENMILL_CACHE") or Path.home() / ".cache" / "tokenmill")


# ---- remote input files -------------------------------------------------------------------------------

def expand(spec: str) -> tuple[str, list[str]]:
    """(base URL for relative ids, file URLs) of a remote file, folder or glob, as sources._expand does locally."""
    fs, path = filesystem(spec)
    if any(ch in path for ch in "*?["):
        matches = [p for p in fs.glob(path) if fs.isfile(p)]
        base = path.split("*")[0].split("?")[0].split("[")[0]
        base = base.rstrip("/") if base.endswith("/") else base.rsplit("/", 1)[0]
    elif fs.isdir(path):
        matches, base = fs.find(path), path.rstrip("/")
    elif fs.isfile(path):
        matches, base = [path], path.rsplit("/", 1)[0]
    else:
        matches, base = [], path
    if not matches:
        raise FileNotFoundError(f"{spec}: no such object, folder or matching glob (check the URL and credentials)")
    return _url(fs, base), [_url(fs, p) for p in sorted(matches)]


def version(url: str) -> dict:
    """What identifies this object's content without reading it: size and ETag (or mtime)."""
    fs, path = filesystem(url)
    info = fs.info(path)
    return {"url": url, "bytes": int(info.get("size") or 0),
            "etag": str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or "")}


def file_key(url: str) -> str:
    return hashlib.sha256(json.dumps(version(url), sort_keys=True).encode()).hexdigest()


def local_file(url: str) -> Path:
    """A local copy of a remote file, downloaded once per version of it."""
    key = file_key(url)
    target = cache_root() / "files" / key[:32] / url.rsplit("/", 1)[-1]
    if not target.is_file():
        fs, path = filesystem(url)
        _download(fs, path, target)
    return target


def _download(fs, path: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    fs.get_file(path, str(tmp))
    os.replace(tmp, target)


# ---- stage folders ------------------------------------------------------------------------------------

def read_manifest(url: str) -> dict | None:
    fs, path = filesystem(url)
    manifest = f"{path.rstrip('/')}/{MANIFEST}"
    return json.loads(fs.cat_file(manifest)) if fs.exists(manifest) else None


def publish(local_dir: Path, url: str) -> dict:
    """Upload a finished stage folder to `url`: its old manifest is removed first (the folder reads as not
    done), files the new output lacks are deleted, then every file, then the manifest with their checksums."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    manifest = json.loads((local_dir / MANIFEST).read_text())
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest["files"] = {str(p.relative_to(local_dir)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
                         for p in files}
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm_file(f"{root}/{MANIFEST}")
    stale = {p for p in (fs.find(root) if fs.exists(root) else [])} - {f"{root}/{rel}" for rel in manifest["files"]}
    for path in sorted(stale):
        fs.rm_file(path)
    for p in files:
        fs.put_file(str(p), f"{root}/{p.relative_to(local_dir)}")
    fs.pipe_file(f"{root}/{MANIFEST}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def input_key(url: str) -> str:
    """A remote stage folder's manifest key, or a remote file's version."""
    manifest = read_manifest(url)
    if manifest:
        return manifest["key"]
    fs, path = filesystem(url)
    if fs.isfile(path):
        return file_key(url)
    raise _not_a_stage(url)


def _not_a_stage(url: str) -> FileNotFoundError:
    return FileNotFoundError(f"{url}: no {MANIFEST} there, so it is not a finished tokenmill stage output (still "
                             "being written, or the wrong URL)")


def local_stage(path) -> Path:
    """A stage folder as a local path: itself, or the checked local copy of a remote one."""
    if not is_remote(path):
        return Path(path)
    url = str(path).rstrip("/")
    manifest = read_manifest(url)
    if manifest is None:
        raise _not_a_stage(url)
    if "files" not in manifest:
        raise ValueError(f"{url}/{MANIFEST} lists no files with checksums; publish the folder with tokenmill "
                         "(any stage with -o {url}) rather than copying it there")
    copy = cache_root() / "stages" / manifest["key"]
    if (copy / MANIFEST).is_file():
        return copy
    fs, root = filesystem(url)
    staging = copy.with_name(f".{copy.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for rel, expected in sorted(manifest["files"].items()):
        target = staging / rel
        _download(fs, f"{root}/{rel}", target)
        if target.stat().st_size != expected["bytes"] or file_digest(target) != expected["sha256"]:
            raise ValueError(f"{url}/{rel}: its content does not match the sha256 in {url}/{MANIFEST}; the object "
                             "was changed or damaged after it was published: run the stage that wrote it again")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(copy, ignore_errors=True)
    os.replace(staging, copy)
    return copy


def staged_output(key: str) -> Path:
    """Where a stage bound for a remote URL builds its output first."""
    return cache_root() / "stages" / key


def file_digest(path: Path) -> str:
    """sha256 of a local file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
