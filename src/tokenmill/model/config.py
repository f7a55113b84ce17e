"""The model section's schema: the size presets, the model's source, LoRA, the 4-bit base, the embedding rows.

Schema only, with no torch or transformers: every command reads the whole config, and the data commands
(ingest, filter, dedup) start without either (a second or two instead of seven). The code that acts on these
sections is beside them: model/__init__.py builds, lora.py, quantize.py, embeddings.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokenmill.model.rope import RopeConfig
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


class EmbeddingsConfig(StrictModel):
    init: Literal["fvt", "calibrated", "mean", "random"] = Field(
        "fvt", description="rows of tokens new to the base model (an extended tokenizer); calibrated: output rows "
                           "from the first base piece with the corpus's share (unties a tied head)")
    train: Literal["all", "new", "none"] = Field(
        "all", description="which rows of the input embedding and LM head train: all, only an extended "
                           "vocabulary's new ones, or none (with LoRA: the adapters alone)")
    lr_ratio: float | None = Field(None, gt=0, le=10, description="their learning rate as a multiple of lr_max "
                                                                 "(default: 0.1 with LoRA, 1 otherwise)")
    new_rows_first_steps: int = Field(0, ge=0, description="optimizer steps at the start of the run that train "
                                                           "only the new rows (EEVE's first stage), before the "
                                                           "normal run")
    distill_steps: int = Field(0, ge=0, description="before the run, steps that train only the new input rows to "
                                                    "reproduce the base's hidden states (unties a tied head)")

    @property
    def reads_corpus(self) -> bool:
        """Calibrated output rows and distilled input rows are made from the training text (and untie a tied
        head); the other inits need only the extension record."""
        return self.init == "calibrated" or self.distill_steps > 0


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(StrictModel):
    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="module names to adapt")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw):
        moved = {"train_embeddings": "model.embeddings.train (all | new | none)",
                 "embedding_lr_ratio": "model.embeddings.lr_ratio"}
        found = [f"model.lora.{k} moved to {v}" for k, v in moved.items() if isinstance(raw, dict) and k in raw]
        if found:
            raise ValueError("; ".join(found))
        return raw


class QuantizeConfig(StrictModel):
    bits: Literal[4] = Field(4, description="bits per base weight (QLoRA: 4)")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (QLoRA's NormalFloat) or fp4")
    compute_dtype: Literal["bf16", "fp32", "fp16"] = Field("bf16", description="dtype the 4-bit weights are "
                                                                                "dequantized to for each matmul")
    double_quant: bool = Field(True, description="quantize the quantization constants too (~0.4 bits/param saved)")

    def bytes_per_param(self) -> float:
        """Storage of a quantized weight: 4 bits, plus one absmax per 64 weights (fp32, or 8 bits with a
        second level of quantization per 256 blocks)."""
        absmax = (1 + 4 / 256) / 64 if self.double_quant else 4 / 64
        return 0.5 + absmax


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
