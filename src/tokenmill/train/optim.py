"""AdamW with parameter groups: decay on matrices only; embeddings at their own learning rate when asked
(model.embeddings.lr_ratio; LoRA's default 0.1)."""

from __future__ import annotations

import torch

from tokenmill.model.embeddings import embedding_weights


def param_groups(model, weight_decay: float, embedding_lr_ratio: float | None = None) -> list[dict]:
    """Norms, biases and embeddings get no weight decay. With `embedding_lr_ratio`, embeddings
    and LM head form a group whose lr is that share of the schedule's (the loop reads `lr_scale`)."""
    embeddings = {id(p) for p in embedding_weights(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2 and id(p) not in embeddings]
    other = [p for p in trainable if p.ndim < 2 and id(p) not in embeddings]
    emb = [p for p in trainable if id(p) in embeddings]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    if embedding_lr_ratio is None:
        groups[1]["params"] = other + emb
    else:
        groups.append({"params": emb, "weight_decay": 0.0, "lr_scale": embedding_lr_ratio})
    return [g for g in groups if g["params"]]


def build_optimizer(model, lr: float, betas, weight_decay: float, device: torch.device,
                    embedding_lr_ratio: float | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay, embedding_lr_ratio), lr=lr, betas=betas,
                             fused=device.type == "cuda")
