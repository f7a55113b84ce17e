"""LoRA for continued pre-training (peft), with the CPT practice of also training the embeddings and
LM head at their own, smaller learning rate (Unsloth's CPT recipe: new-domain tokens need new embeddings);
which embedding rows train, and at what rate, is `model.embeddings` (model/embeddings.py), for LoRA and full
training alike.
"""

from __future__ import annotations

from tokenmill.model.config import LoraConfig


def apply_lora(model, cfg: LoraConfig, train_embeddings: bool):
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as e:
        raise ImportError("LoRA needs peft: pip install 'tokenmill[lora]' (or pip install peft)") from e
    from tokenmill.model.embeddings import embedding_weights
    peft_model = get_peft_model(model, PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                      target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    if train_embeddings:
        # The real (tied or untied) weights, not peft copies (modules_to_save would break a tie,
        # LLaMA-Factory#6446): merging then needs nothing special, and a tied head stays tied.
        for param in embedding_weights(peft_model):
            param.requires_grad_(True)
    return peft_model


def merge(model):
    """A plain transformers model with the adapters folded into its weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
