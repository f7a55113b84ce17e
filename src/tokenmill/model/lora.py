"""LoRA for continued pre-training (peft), with the CPT practice of also training the embeddings and
LM head at their own, smaller learning rate (Unsloth's CPT recipe: new-domain tokens need new embeddings).
"""

from __future__ import annotations

from pydantic import Field

from tokenmill.schema import StrictModel

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(StrictModel):
    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="module names to adapt")
    train_embeddings: bool = Field(True, description="also train embed_tokens and lm_head (full weights)")
    embedding_lr_ratio: float = Field(0.1, gt=0, le=1, description="their learning rate as a share of lr_max")


def apply_lora(model, cfg: LoraConfig):
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as e:
        raise ImportError("LoRA needs peft: pip install 'tokenmill[lora]' (or pip install peft)") from e
    peft_model = get_peft_model(model, PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                      target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    if cfg.train_embeddings:
        # The real (tied or untied) weights, not peft copies: merging then needs nothing special.
        for param in embedding_params(peft_model):
            param.requires_grad_(True)
    return peft_model


def embedding_params(model) -> list:
    params = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not params[0]:
        params.append(head.weight)
    return params


def merge(model):
    """A plain transformers model with the adapters folded into its weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
