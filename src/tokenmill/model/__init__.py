"""Models: LLaMA-style presets built with transformers' LlamaForCausalLM, or a local HF checkpoint.

Models are used as transformers builds them (no subclass); the trainer wraps them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, model_validator
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from tokenmill.model.embeddings import EmbeddingsConfig
from tokenmill.model.lora import LoraConfig
from tokenmill.model.quantize import QuantizeConfig
from tokenmill.model.rope import RopeConfig, apply as apply_rope, rope_parameters
from tokenmill.model.resolve import resolve_model_path
from tokenmill.schema import StrictModel

# Shapes follow the LLaMA recipe (SwiGLU width ~8/3 x hidden, GQA). "1b" is TinyLlama-1.1B's shape.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, max_position_embeddings=1024),
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, max_position_embeddings=2048),
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=8, max_position_embeddings=2048),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, max_position_embeddings=2048),
}


class ModelConfig(StrictModel):
    preset: str | None = Field("tiny", description=f"size preset: {', '.join(PRESETS)} (the default when neither "
                                                   "init_from nor config is given)")
    init_from: str | None = Field(None, description="HF causal-LM folder (or hf://org/name) to continue pre-training")
    config: str | None = Field(None, description="any transformers causal-LM config.json (or folder) to train from "
                                                 "scratch, instead of a preset; vocab_size is set from the tokenizer")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of all weights")
    quantize: QuantizeConfig | None = Field(None, description="load the base's linear layers in 4 bits (QLoRA; "
                                                              "needs init_from and lora)")
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig,
                                         description="new rows of an extended vocabulary; which rows train, how fast")
    hidden_size: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    num_hidden_layers: int | None = Field(None, gt=0)
    num_attention_heads: int | None = Field(None, gt=0)
    num_key_value_heads: int | None = Field(None, gt=0)
    max_position_embeddings: int | None = Field(None, gt=0, description="longest sequence (tokens); with init_from: "
                                                                       "the base's new context length")
    vocab_size: int | None = Field(None, gt=0, description="default: the tokenizer's size")
    tie_word_embeddings: bool = True
    rope: RopeConfig | None = Field(None, description="RoPE base or scaling (linear, yarn, llama3), e.g. for a "
                                                      "long-context stage; None: the base's (10000 from scratch)")

    @model_validator(mode="after")
    def _one_source(self):
        """The default preset gives way to init_from or config; an explicit preset beside them is a mistake."""
        if (self.init_from or self.config) and self.preset is not None:
            if "preset" in self.model_fields_set:
                raise ValueError("give one of preset, init_from or config, not several")
            object.__setattr__(self, "preset", None)  # not validate_assignment: this is the validator
        if self.init_from and self.config:
            raise ValueError("give one of preset, init_from or config, not several")
        if self.quantize and not (self.init_from and self.lora):
            raise ValueError("quantize (a 4-bit base) needs init_from (the base to load) and lora (the 4-bit "
                             "weights cannot train; QLoRA trains adapters on them)")
        return self

    def embedding_lr_ratio(self) -> float | None:
        """The embeddings' LR as a multiple of the schedule's; None: the same group as the other weights."""
        if self.embeddings.lr_ratio is not None:
            return self.embeddings.lr_ratio
        return 0.1 if self.lora else None

    def shape(self) -> dict:
        """The preset with the explicit keys laid over it."""
        if self.preset is None:
            return {}
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        overrides = self.model_dump(include=set(PRESETS["tiny"]), exclude_none=True)
        return {**PRESETS[self.preset], **overrides}


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, device: torch.device | None = None) -> PreTrainedModel:
    """The model to train; a 4-bit base (cfg.quantize) is loaded straight onto `device`."""
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
    path = resolve_model_path(cfg.init_from)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    apply_rope(config, cfg.rope, cfg.max_position_embeddings)
    return config


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, config=None) -> PreTrainedModel:
    path = resolve_model_path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                **({"config": config} if config is not None else {}))


def count_parameters(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
