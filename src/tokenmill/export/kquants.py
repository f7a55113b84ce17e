"""K-quant GGUF files (q2_k ... q6_k, the _s/_m mixes) with no compiler and no download.

Two parts, as in llama.cpp's `llama-quantize`:
  - the per-tensor type of each mix (`llama_tensor_get_type` and `tensor_type_fallback` in
    src/llama-quant.cpp), ported here for the dense decoder families tokenmill writes (Llama, Qwen2, GPT-2).
    It follows ggml-org/llama.cpp at commit 007dbbf (November 2026); the rules change between versions, so
    a change there is a change here, checked by the byte-identity test against a real libllama;
  - the bytes of each tensor, from ggml's own C quantizer (`ggml_quantize_chunk`), which the xllamacpp wheel
    (llama.cpp's server, already a tokenmill dependency) exports through its C ABI. Same code, same bytes.
Tensors are visited in llama.cpp's order (the model loader's `weight_name_comparer`: tensors outside the
blocks by name, then block by block, by name), because the layer counters of the mixes depend on it.
"""

from __future__ import annotations

import ctypes
import math
import re
from dataclasses import dataclass

import numpy as np

# llama.cpp's LLAMA_FTYPE_MOSTLY_* (llama.h) and each mix's default tensor type (llama_ftype_get_default_type).
MIXES = {"q2_k": (10, "Q2_K"), "q3_k_s": (11, "Q3_K"), "q3_k_m": (12, "Q3_K"), "q3_k_l": (13, "Q3_K"),
         "q4_k_s": (14, "Q4_K"), "q4_k_m": (15, "Q4_K"), "q5_k_s": (16, "Q5_K"), "q5_k_m": (17, "Q5_K"),
         "q6_k": (18, "Q6_K")}
# tensor_type_fallback: a row that is not a whole number of blocks.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _qtype(name: str):
    import gguf
    return gguf.GGMLQuantizationType[name]


def block_size(qtype) -> int:
    import gguf
    return gguf.GGML_QUANT_SIZES[qtype][0]


def llama_order(names: list[str]) -> list[str]:
    """llama.cpp's tensor order: outside the blocks first (layer -1), then by layer, then by name."""
    def key(name):
        m = _BLOCK.match(name)
        return (int(m.group(1)) if m else -1, name)
    return sorted(names, key=key)


def category(name: str) -> str:
    """tensor_get_category: the kind of a tensor, by name."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, kind in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                       ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                       ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if part in name:
            return kind
    return "other"


def allows_quantization(name: str, ndim: int) -> bool:
    """tensor_allows_quantization, for the tensors of dense decoders."""
    return (ndim >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and name not in ("position_embd.weight", "token_types.weight"))


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule for the layers that get more bits; C integer division and remainder."""
    return i < n // 8 or i >= 7 * n // 8 or int(math.fmod(i - n // 8, 3)) == 2


@dataclass
class Model:
    """What the rules read of the model: its layer count, heads and whether the head is tied."""
    n_layer: int
    n_head: int
    n_head_kv: int
    tied: bool
    is_70b: bool = False

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv


class Mix:
    """The type choice of one mix over a model's tensors, with llama.cpp's counters."""

    def __init__(self, mix: str, model: Model, names: list[str]):
        self.mix, self.model = mix, model
        self.default = _qtype(MIXES[mix][1])
        self.n_attention_wv = sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in names)
        self.i_attention_wv = self.i_ffn_down = 0
        self.fallbacks: dict[str, str] = {}

    def tensor_type(self, name: str, shape: tuple[int, ...]):
        """The GGML type of one tensor (shape in GGUF order: ne0 first); F32 for what is not quantized."""
        q = _qtype
        if not allows_quantization(name, len(shape)):
            return q("F32")
        chosen = self._mixed(name, shape[0])
        return self._fallback(name, shape[0], chosen)

    def _mixed(self, name: str, ne0: int):
        q, m, kind, mix = _qtype, self.model, category(name), self.mix
        new = self.default
        if kind == "output" or (m.tied and kind == "token_embd"):
            if ne0 % block_size(new):
                return q("Q8_0")
            return new if new == q("Q8_0") else q("Q6_K")
        if kind == "token_embd":
            return new
        if kind in ("attn_v", "attn_qkv", "attn_kv_b"):
            i, n = self.i_attention_wv, self.n_attention_wv
            if mix == "q2_k":
                new = q("Q4_K") if m.n_gqa >= 4 else q("Q3_K")
            elif mix == "q3_k_m":
                new = q("Q5_K") if i < 2 else q("Q4_K")
            elif mix == "q3_k_l":
                new = q("Q5_K")
            elif mix in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
                new = q("Q6_K")
            elif mix == "q4_k_s" and i < 4:
                new = q("Q5_K")
            if m.is_70b and new in (q("Q3_K"), q("Q4_K")):
                new = q("Q5_K")
            self.i_attention_wv += 1
            return new
        if kind == "ffn_down":
            i, n = self.i_ffn_down, m.n_layer
            if mix == "q2_k":
                new = q("Q3_K")
            elif mix == "q3_k_m":
                new = q("Q5_K") if i < n // 16 else q("Q4_K")
            elif mix == "q3_k_l":
                new = q("Q5_K")
            elif mix == "q4_k_m" and use_more_bits(i, n):
                new = q("Q6_K")
            elif mix == "q5_k_m" and use_more_bits(i, n):
                new = q("Q6_K")
            elif mix == "q4_k_s" and i < n // 8:
                new = q("Q5_K")
            self.i_ffn_down += 1
            return new
        if kind == "attn_output":
            return {"q2_k": q("Q3_K"), "q3_k_m": q("Q4_K"), "q3_k_l": q("Q5_K")}.get(mix, new)
        return new  # attn_q, attn_k, ffn_gate, ffn_up: the default for these mixes

    def _fallback(self, name: str, ne0: int, chosen):
        if ne0 % block_size(chosen) == 0:
            return chosen
        fallback = _qtype(FALLBACK[chosen.name]) if chosen.name in FALLBACK else None
        if fallback is None:
            raise ValueError(f"{name}: no fallback type for {chosen.name}")
        if ne0 % block_size(fallback):
            fallback = _qtype("F16")
        self.fallbacks[name] = f"{chosen.name} → {fallback.name} (rows of {ne0})"
        return fallback


class Ggml:
    """ggml's quantizer, from the shared object of the xllamacpp wheel (its C ABI, no compiler)."""

    def __init__(self):
        try:
            import xllamacpp
        except ImportError as e:
            raise ImportError("k-quants use ggml's quantizer from llama.cpp: pip install 'tokenmill[gguf]' "
                              "(xllamacpp)") from e
        lib = ctypes.CDLL(xllamacpp.xllamacpp.__file__)
        self.quantize_chunk = lib.ggml_quantize_chunk
        self.quantize_chunk.restype = ctypes.c_size_t
        self.quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.row_size = lib.ggml_row_size
        self.row_size.restype = ctypes.c_size_t
        self.row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    def quantize(self, w: np.ndarray, qtype) -> np.ndarray:
        """A 2-D float32 array (rows of ne0) → its bytes in `qtype`, one row per array row."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        n_per_row, nrows = w.shape[-1], w.size // w.shape[-1]
        row = self.row_size(int(qtype), n_per_row)
        out = np.empty((nrows, row), dtype=np.uint8)
        written = self.quantize_chunk(int(qtype), w.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, None)
        if written != out.nbytes:
            raise RuntimeError(f"ggml wrote {written} bytes for {nrows} rows of {qtype.name}, expected {out.nbytes}")
        return out


def quantized_tensors(tensors: dict[str, np.ndarray], mix: str, model: Model):
    """(name, data, GGML type) for every tensor, in llama.cpp's order, as `llama-quantize MIX` writes them
    from an f32 GGUF; and the fallbacks taken."""
    ggml = Ggml()
    names = llama_order(list(tensors))
    chooser = Mix(mix, model, names)
    out = []
    for name in names:
        w = tensors[name]
        qtype = chooser.tensor_type(name, tuple(reversed(w.shape)))
        data = w.astype(np.float32) if qtype.name == "F32" else ggml.quantize(w, qtype)
        out.append((name, data, qtype))
    return out, chooser.fallbacks
