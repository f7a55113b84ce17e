"""Running a GGUF file in real llama.cpp, and llama.cpp's quantizer for k-quants.

The runner is the prebuilt `xllamacpp` wheel (llama.cpp's server as a Python object: no compiler, no
network): `tokenmill generate model.gguf` and the export tests use it. K-quants need llama.cpp's C++
quantizer: llama-cpp-python's `llama_model_quantize` (an optional extra that compiles for ~10 minutes) or a
`llama-quantize` binary on PATH.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
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


# llama.cpp's LLAMA_FTYPE values (llama.h) and its quantizer's type names.
K_QUANT_FTYPES = {"q4_k_m": (15, "Q4_K_M"), "q5_k_m": (17, "Q5_K_M"), "q6_k": (18, "Q6_K")}


def quantize(source: Path, target: Path, outtype: str) -> None:
    """`source` (an f32/f16 GGUF) → `target` in a k-quant, with llama.cpp's own quantizer."""
    ftype, name = K_QUANT_FTYPES[outtype]
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {source} to {name}")
        return
    binary = shutil.which("llama-quantize")
    if binary is None:
        raise RuntimeError(f"--outtype {outtype} needs llama.cpp's quantizer: pip install 'tokenmill[llama-cpp]' "
                           f"(llama-cpp-python, compiles for ~10 minutes) or put a llama-quantize binary on PATH. "
                           f"Without either: f32, f16, bf16, q8_0, q4_0")
    subprocess.run([binary, str(source), str(target), name], check=True)
