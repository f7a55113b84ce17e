"""The optimizer: AdamW with parameter groups (decay on matrices only; embeddings at their own learning rate
when asked: model.embeddings.lr_ratio, LoRA's default 0.1), or Muon (train.optimizer: muon).

Muon (torch.optim.Muon) orthogonalizes the update of each hidden 2-D weight matrix; embeddings, the LM head,
norms and biases stay on AdamW. With `adjust_lr: match_rms_adamw` (Moonshot's rule, arXiv 2502.16982) Muon's
update is scaled to the RMS of AdamW's, so the learning rate tuned for AdamW carries over and one schedule
drives both; `adamw_lr_ratio` sets the AdamW part's rate as a share of it.
"""

from __future__ import annotations

import torch

from tokenmill.model.embeddings import embedding_weights
from tokenmill.train.config import MuonConfig


def param_groups(model, weight_decay: float, embedding_lr_ratio: float | None = None,
                 leave_out: set[int] = frozenset()) -> list[dict]:
    """Norms, biases and embeddings get no weight decay. With `embedding_lr_ratio`, embeddings
    and LM head form a group whose lr is that share of the schedule's (the loop reads `lr_scale`).
    `leave_out`: ids of parameters another optimizer takes."""
    embeddings = {id(p) for p in embedding_weights(model)}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in leave_out]
    decay = [p for p in trainable if p.ndim >= 2 and id(p) not in embeddings]
    other = [p for p in trainable if p.ndim < 2 and id(p) not in embeddings]
    emb = [p for p in trainable if id(p) in embeddings]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    if embedding_lr_ratio is None:
        groups[1]["params"] = other + emb
    else:
        groups.append({"params": emb, "weight_decay": 0.0, "lr_scale": embedding_lr_ratio})
    return [g for g in groups if g["params"]]


def hidden_matrices(model) -> list[torch.nn.Parameter]:
    """What Muon takes: the trainable 2-D weights that are not the vocabulary's (embeddings, LM head)."""
    embeddings = {id(p) for p in embedding_weights(model)}
    return [p for p in model.parameters() if p.requires_grad and p.ndim == 2 and id(p) not in embeddings]


class Optimizers:
    """Several optimizers stepped as one. The loop sets each group's lr through `param_groups`; a checkpoint
    holds each one's state under its name."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"the checkpoint's optimizer holds {sorted(state)}, this run's {sorted(self.optimizers)}: "
                             "it was saved with another train.optimizer")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


def build_optimizer(model, lr: float, betas, weight_decay: float, device: torch.device,
                    embedding_lr_ratio: float | None = None, kind: str = "adamw",
                    muon: MuonConfig | None = None) -> torch.optim.Optimizer | Optimizers:
    fused = device.type == "cuda"
    if kind == "adamw":
        return torch.optim.AdamW(param_groups(model, weight_decay, embedding_lr_ratio), lr=lr, betas=betas,
                                 fused=fused)
    muon = muon or MuonConfig()
    hidden = hidden_matrices(model)
    rest = param_groups(model, weight_decay, embedding_lr_ratio, leave_out={id(p) for p in hidden})
    for group in rest:
        group["lr_scale"] = group.get("lr_scale", 1.0) * muon.adamw_lr_ratio
    optimizers = {"muon": torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, momentum=muon.momentum,
                                           nesterov=muon.nesterov, ns_steps=muon.ns_steps,
                                           adjust_lr_fn=muon.adjust_lr)}
    if rest:
        optimizers["adamw"] = torch.optim.AdamW(rest, lr=lr, betas=betas, fused=fused)
    return Optimizers(**optimizers)
