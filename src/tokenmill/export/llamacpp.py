"""Running a GGUF file in real llama.cpp: the prebuilt `xllamacpp` wheel (llama.cpp's server as a Python
object: no compiler, no network). `tokenmill generate model.gguf` and the export tests use it.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path


class LlamaCpp:
    """One GGUF file loaded in llama.cpp."""

    def __init__(self, path: Path, n_ctx: int = 512, threads: int | None = None):
        try:
            import xllamacpp
        except ImportError as e:
            raise ImportError("running a GGUF file needs llama.cpp: pip install 'tokenmill[gguf]' (xllamacpp)") from e
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.warmup = False
        params.verbosity = 0  # llama.cpp's load and server logs otherwise fill stderr
        params.cpuparams.n_threads = threads or min(8, os.cpu_count() or 1)
        params.cpuparams_batch.n_threads = params.cpuparams.n_threads
        self.server = xllamacpp.Server(params)
        self.path = Path(path)

    def eos_token(self) -> str:
        from gguf import GGUFReader
        fields = GGUFReader(self.path).fields
        eos = int(fields["tokenizer.ggml.eos_token_id"].contents())
        return fields["tokenizer.ggml.tokens"].contents()[eos]

    def complete(self, request: dict) -> dict:
        return self.server.handle_completions(request)

    def next_token_logprobs(self, ids: list[int], top: int) -> dict[int, float]:
        """log p(next token | ids) of the `top` most likely tokens (all of them when top = vocab size)."""
        out = self.complete({"prompt": list(ids), "max_tokens": 1, "temperature": 0, "n_probs": top})
        first = out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return {entry["id"]: entry["logprob"] for entry in first}

    def token_logprobs(self, ids: list[int], vocab_size: int) -> list[float]:
        """log p(ids[i] | ids[:i]) for i >= 1, one position at a time (llama.cpp reuses the cached prefix)."""
        return [self.next_token_logprobs(ids[:i], vocab_size)[ids[i]] for i in range(1, len(ids))]

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own token ids for `text` (no special tokens added)."""
        request = urllib.request.Request(f"{self.server.listening_address}/tokenize",
                                         data=json.dumps({"content": text}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["tokens"]

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0) -> str:
        out = self.complete({"prompt": prompt, "max_tokens": max_new_tokens, "temperature": temperature,
                             "top_k": top_k, "top_p": top_p, "seed": seed})
        return out["choices"][0]["text"]
