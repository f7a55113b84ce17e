"""RoPE for a longer context: a new base (`theta`) or a scaling (linear, YaRN, Llama 3), in one place.

`model.rope` is written on the HF config as transformers 5 reads it (`rope_parameters`: a dropped
`rope_theta` took one model's perplexity from ~14 to 11,316, Unsloth#7028), so it stays in every checkpoint
and exported config.json, and `gguf_fields` writes what llama.cpp reads: `rope.freq_base`,
`rope.scaling.*`, and for Llama 3 its per-frequency factors as the `rope_freqs` tensor (as llama.cpp's
convert_hf_to_gguf.py does).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from tokenmill.schema import StrictModel


class RopeConfig(StrictModel):
    theta: float | None = Field(None, gt=0, description="RoPE base; None: the base model's (10000 from scratch)")
    scaling: Literal["none", "linear", "yarn", "llama3"] = Field("none", description="position scaling")
    factor: float | None = Field(None, gt=1, description="context extension factor (linear, yarn, llama3)")
    original_max_position_embeddings: int | None = Field(
        None, gt=0, description="the length the model was trained at (yarn, llama3); default: its "
                                "max_position_embeddings before this change")
    low_freq_factor: float = Field(1.0, gt=0, description="llama3")
    high_freq_factor: float = Field(4.0, gt=0, description="llama3")
    beta_fast: float = Field(32.0, gt=0, description="yarn")
    beta_slow: float = Field(1.0, gt=0, description="yarn")

    @model_validator(mode="after")
    def _factor_for_scaling(self):
        if self.scaling != "none" and self.factor is None:
            raise ValueError(f"scaling {self.scaling} needs a factor (new context length / original)")
        if self.scaling == "none" and self.factor is not None:
            raise ValueError("factor is for a scaling: set scaling to linear, yarn or llama3")
        return self


def rope_parameters(rope: RopeConfig, current: dict | None, original_length: int) -> dict:
    """transformers 5 `rope_parameters` for the config: the base's, with this RopeConfig laid over it."""
    theta = rope.theta or (current or {}).get("rope_theta") or 10_000.0
    if rope.scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    params = {"rope_type": rope.scaling, "rope_theta": theta, "factor": rope.factor}
    original = rope.original_max_position_embeddings or original_length
    if rope.scaling == "yarn":
        params.update(original_max_position_embeddings=original, beta_fast=rope.beta_fast, beta_slow=rope.beta_slow)
    elif rope.scaling == "llama3":
        params.update(original_max_position_embeddings=original, low_freq_factor=rope.low_freq_factor,
                      high_freq_factor=rope.high_freq_factor)
    return params


def apply(config, rope: RopeConfig | None, max_position_embeddings: int | None) -> None:
    """Lay model.rope and a new context length over a loaded base's HF config, before its weights load."""
    original = config.max_position_embeddings
    if rope is not None:
        config.rope_parameters = rope_parameters(rope, getattr(config, "rope_parameters", None), original)
    if max_position_embeddings:
        config.max_position_embeddings = max_position_embeddings


def gguf_fields(config) -> tuple[dict, dict]:
    """({key suffix: value} of llama.cpp's rope.scaling keys, {tensor name: array}) for a Llama-style config."""
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind == "default":
        return {}, {}
    if kind == "linear":
        return {"type": "linear", "factor": float(params["factor"])}, {}
    if kind == "yarn":
        return {"type": "yarn", "factor": float(params["factor"]),
                "original_context_length": int(params["original_max_position_embeddings"])}, {}
    if kind == "llama3":
        return {}, {"rope_freqs.weight": llama3_factors(config, params)}
    raise ValueError(f"rope scaling {kind!r}: not written to GGUF by tokenmill (default, linear, yarn, llama3)")


def llama3_factors(config, params: dict) -> np.ndarray:
    """Llama 3.1's per-frequency divisors of RoPE's angles: 1 for short wavelengths, `factor` for long ones,
    a smooth blend between (transformers' _compute_llama3_parameters; llama.cpp reads them as rope_freqs)."""
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (params["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, low, high = params["factor"], params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old = params["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)
