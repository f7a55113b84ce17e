"""Models: LLaMA-style presets built with transformers' LlamaForCausalLM, or a local HF checkpoint.

Models are used as transformers builds them (no subclass); the trainer wraps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tokenmill.model.config import PRESETS, ModelConfig
from tokenmill.model.rope import RopeConfig, apply as apply_rope, rope_parameters
from tokenmill.model.resolve import resolve_model_path

if TYPE_CHECKING:  # torch and transformers are imported where a model is made: tokenmill.config imports this package
    import torch
    from transformers import PreTrainedModel

__all__ = ["PRESETS", "ModelConfig", "build_model", "base_config", "load_model", "count_parameters"]


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, device: torch.device | None = None) -> PreTrainedModel:
    """The model to train; a 4-bit base (cfg.quantize) is loaded straight onto `device`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    if cfg.init_from and cfg.quantize:
        from tokenmill.model.quantize import bnb_config
        device = device or torch.device("cpu")
        placement = {"": device.index or 0} if device.type == "cuda" else "cpu"
        return AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.init_from), dtype=torch.float32,
                                                    config=base_config(cfg), quantization_config=bnb_config(cfg.quantize),
                                                    device_map=placement, attn_implementation="sdpa")
    if cfg.init_from:
        return load_model(cfg.init_from, config=base_config(cfg))
    if cfg.config:
        config = AutoConfig.from_pretrained(cfg.config, vocab_size=cfg.vocab_size or vocab_size,
                                            bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    config = LlamaConfig(**cfg.shape(), vocab_size=cfg.vocab_size or vocab_size, tie_word_embeddings=cfg.tie_word_embeddings,
                         rope_parameters=rope_parameters(cfg.rope or RopeConfig(), None, cfg.shape()["max_position_embeddings"]),
                         bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def base_config(cfg: ModelConfig):
    """The base model's HF config with model.rope and a new context length laid over it."""
    from transformers import AutoConfig
    path = resolve_model_path(cfg.init_from)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    apply_rope(config, cfg.rope, cfg.max_position_embeddings)
    return config


def load_model(path: str | Path, dtype: torch.dtype | None = None, config=None) -> PreTrainedModel:
    """A HF causal-LM folder (or hf://org/name), in float32 unless `dtype` says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM
    dtype = dtype or torch.float32
    path = resolve_model_path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                **({"config": config} if config is not None else {}))


def count_parameters(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
