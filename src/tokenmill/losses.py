"""Next-token loss, for training and evaluation alike; the LM head and the loss a chunk of tokens at a time.

All logits of a micro-batch (tokens x vocabulary, in fp32) and their gradient are the largest tensors
of a small model's step: 64 MiB each for 2048 tokens of a 8192 vocabulary, 400 MiB for SmolLM2's 49k.
`chunked_head` makes the model return its final hidden states instead, and the loss computes logits,
loss and gradients one chunk at a time (the approach of Liger Kernel's fused linear cross-entropy).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

# Architectures whose logits are exactly `hidden @ lm_head.weight.T`: no bias, scaling or soft-capping.
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


def chunked_head(model) -> torch.nn.Linear | None:
    """Turn the model's output layer into an identity (its forward only: weights, state dict and optimizer
    are unchanged) and return it, for `next_token_loss(..., head=)`; None where logits are not a plain
    linear map of the hidden states (other architectures, a peft-wrapped head), and nothing changes."""
    head = model.get_output_embeddings()
    if model.config.model_type not in PLAIN_HEAD_MODELS or type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    head.forward = _hidden_states
    return head


def _hidden_states(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@contextlib.contextmanager
def hidden_state_outputs(model):
    """`chunked_head` for a while: the model returns logits again afterwards (scoring needs them)."""
    head = chunked_head(model)
    try:
        yield head
    finally:
        if head is not None:
            del head.forward  # the instance attribute goes; the class's forward is back


def next_token_loss(model, batch: dict[str, torch.Tensor], autocast=contextlib.nullcontext,
                    head: torch.nn.Linear | None = None, chunk_tokens: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of predicting batch["labels"]; other keys (attention_mask, position_ids) go to the
    model. With a `head` from `chunked_head`, the model's output is its hidden states and the head is
    applied here, `chunk_tokens` at a time."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with autocast():
        # No KV cache: training has no use for one, and with one transformers does not read packed documents'
        # boundaries from the position ids (masking_utils: only when attention_mask and cache are None).
        out = model(**inputs, use_cache=False).logits
    if head is None:
        return F.cross_entropy(out.float().flatten(0, 1), batch["labels"].flatten())
    return ChunkedLinearCrossEntropy.apply(out.flatten(0, 1), head.weight, batch["labels"].flatten(), chunk_tokens)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` without holding all logits: chunk by chunk, the forward
    computes logits, the loss and, while the chunk's softmax is at hand, both gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_tokens):
        n_valid = (labels != -100).sum().clamp(min=1)
        want_h, want_w = hidden.requires_grad, weight.requires_grad
        grad_hidden = torch.zeros_like(hidden) if want_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        w = weight.to(hidden.dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, y = hidden[start:start + chunk_tokens], labels[start:start + chunk_tokens]
            valid, target = y != -100, y.clamp(min=0)
            # In place from here on: one chunk x vocabulary buffer, logits then softmax then gradient.
            probs = (h @ w.T).float()
            target_logit = probs.gather(1, target[:, None]).squeeze(1)
            top = probs.max(dim=-1).values
            sums = probs.sub_(top[:, None]).exp_().sum(dim=-1)
            total += ((top + sums.log() - target_logit) * valid).sum()  # log-sum-exp minus the target's logit
            if want_h or want_w:
                probs /= sums[:, None]
                probs[torch.arange(len(y), device=y.device), target] -= 1
                probs *= (valid / n_valid)[:, None]
                probs = probs.to(hidden.dtype)
                if want_h:
                    grad_hidden[start:start + chunk_tokens] = probs @ w
                if want_w:
                    grad_weight.addmm_(probs.T.float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        # Scaled in place and handed over: autograd adopts them as .grad without another copy. So a graph
        # kept with retain_graph=True cannot be run backward a second time through this loss.
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


@torch.no_grad()
def mean_loss(model, windows: list[np.ndarray], batch_size: int, device, world=None,
              loss_fn=next_token_loss, progress=None) -> float:
    """Mean next-token loss (nats) over windows of seq_len + 1 tokens, by `loss_fn(model, batch)` (the
    training loss, with its autocast and chunked head); with a `world` of several ranks, each evaluates its
    share and the sums are combined. `progress(n)` is told the tokens of each batch (all ranks')."""
    if not windows:
        raise ValueError("no evaluation windows: the validation split is shorter than one sequence")
    rank, size = (world.rank, world.size) if world else (0, 1)
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, window count
    # Every rank runs the same number of forwards (FSDP's collectives would hang otherwise).
    mine = windows[:len(windows) // size * size][rank::size] if len(windows) >= size else windows
    for i in range(0, len(mine), batch_size):
        tokens = torch.from_numpy(np.stack(mine[i:i + batch_size]).astype(np.int64)).to(device)
        batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
        total += torch.stack([loss_fn(model, batch).double() * len(tokens),
                              torch.tensor(float(len(tokens)), dtype=torch.float64, device=device)])
        if progress:
            progress(batch["labels"].numel() * size)
    if size > 1 and len(windows) >= size:
        total = world.mean(total) * size
    return (total[0] / total[1]).item()
