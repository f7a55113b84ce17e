"""Serve a model over an OpenAI-compatible HTTP API, with llama.cpp's own server (the xllamacpp wheel).

    tokenmill serve runs/x                       # the run's GGUF (exported once from final/ when it has none)
    tokenmill serve model.gguf --port 8080 --api-key KEY --ctx-size 4096 --parallel 4

Endpoints are llama.cpp's: /v1/completions and /v1/chat/completions (both stream), /v1/models, /health.
A chat uses the GGUF's `tokenizer.chat_template` (written at export from the HF tokenizer). The server binds
to 127.0.0.1 unless told otherwise; SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from pydantic import Field

from tokenmill.schema import StrictModel

# Which GGUF of an export folder to serve when it holds several: quality first, then size.
PREFERENCE = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "f16", "bf16", "f32", "q4_0")


class ServeConfig(StrictModel):
    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0: every interface)")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free one)")
    api_key: str | None = Field(None, description="require `Authorization: Bearer KEY` (default: "
                                                  "$TOKENMILL_API_KEY, else none)")
    ctx_size: int = Field(4096, gt=0, description="context per request slot (tokens)")
    parallel: int = Field(4, gt=0, description="requests decoded at once (slots)")
    threads: int | None = Field(None, gt=0, description="CPU threads (default: all cores, at most 8)")


def gguf_for(spec: Path | str) -> Path:
    """The GGUF file to serve: the file given, the best one of an export folder or a run's 60_export/, or
    an f16 export of a HF folder, run or checkpoint, written once beside it and reused while it is newer."""
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        return path
    for folder in (path, path / "60_export"):
        found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if found:
            ranked = sorted(found, key=lambda f: next((i for i, t in enumerate(PREFERENCE) if f.stem.endswith(t)),
                                                     len(PREFERENCE)))
            return ranked[0]
    from tokenmill.model.source import resolve_source
    source = resolve_source(path)
    cached = source.parent / f"{source.name}-f16.gguf"
    weights = [f for f in source.iterdir() if f.suffix == ".safetensors"]
    if cached.is_file() and all(cached.stat().st_mtime >= w.stat().st_mtime for w in weights):
        return cached
    from tokenmill.export import export_gguf
    from tokenmill.model.source import load_source
    model, tokenizer, _ = load_source(source)
    print(f"[serve] exporting {source} to {cached} (once)")
    export_gguf(model, tokenizer, cached, "f16", source.name)
    return cached


def start(cfg: ServeConfig, gguf: Path):
    """llama.cpp's HTTP server on cfg.host:cfg.port, running in this process (its own threads)."""
    try:
        import xllamacpp
    except ImportError as e:
        raise ImportError("serving needs llama.cpp: pip install 'tokenmill[gguf]' (xllamacpp)") from e
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.model_alias = {gguf.stem}
    params.hostnames = [cfg.host]
    params.port = cfg.port
    params.n_ctx = cfg.ctx_size * cfg.parallel  # llama.cpp splits the context among the slots
    params.n_parallel = cfg.parallel
    params.use_jinja = True  # the GGUF's chat template, as transformers' apply_chat_template renders it
    params.warmup = False
    params.verbosity = 0
    key = cfg.api_key or os.environ.get("TOKENMILL_API_KEY")
    if key:
        params.api_keys = [key]
    params.cpuparams.n_threads = cfg.threads or min(8, os.cpu_count() or 1)
    params.cpuparams_batch.n_threads = params.cpuparams.n_threads
    return xllamacpp.Server(params)


def serve(cfg: ServeConfig, model: Path | str) -> None:
    """Serve until SIGTERM or SIGINT, then stop the server and return."""
    gguf = gguf_for(model)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = start(cfg, gguf)
        print(f"[serve] {gguf} at {server.listening_address}/v1 (OpenAI API; model name {gguf.stem!r}); "
              "Ctrl-C stops", flush=True)
        stop.wait()
        print("[serve] stopping", flush=True)
        del server  # joins llama.cpp's HTTP and decoding threads
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
