"""Where a model lives: a local folder, or `hf://org/name[@revision]` resolved through the hub cache."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_model_path(spec: str | Path) -> Path:
    spec = str(spec)
    if not spec.startswith("hf://"):
        return Path(spec)
    repo, _, revision = spec[len("hf://"):].partition("@")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:  # the cache first: no network when the model is already here
        return Path(snapshot_download(repo, revision=revision or None, local_files_only=True))
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
            raise FileNotFoundError(_offline_message(repo)) from None
    try:
        return Path(snapshot_download(repo, revision=revision or None))
    except Exception as e:  # connection errors come in many types; the advice is the same
        raise FileNotFoundError(f"{_offline_message(repo)} ({type(e).__name__})") from e


def _offline_message(repo: str) -> str:
    return (f"hf://{repo}: not in the Hugging Face cache and the hub cannot be reached. On a connected machine run "
            f"`huggingface-cli download {repo}` (then copy the cache, HF_HUB_CACHE), or set model.init_from to a local folder")
