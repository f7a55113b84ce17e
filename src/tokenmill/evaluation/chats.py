"""Chat sets: held-out conversations scored on their answers, as the model will be asked them.

A set whose file holds chats (JSONL of {messages} or {prompt, completion}) is rendered with the model's chat
template (chat.py) and scored on the assistant tokens alone: loss (nats per answer token) and bits per byte of
the answers' text, with intervals over conversations. This is the figure that says whether continued
pre-training kept a model's chat, and the one `tokenmill merge` can hold to a limit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from tokenmill.evaluation import intervals

CHAT_KEYS = ("messages", "prompt")


def is_chat_set(path: Path) -> bool:
    """A .jsonl file whose first record is a conversation."""
    path = Path(path)
    if not (path.is_file() and path.name.endswith(".jsonl")):
        return False
    with path.open() as f:
        first = next((line for line in f if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and any(k in record for k in CHAT_KEYS)


def conversations(path: Path) -> list[list[dict]]:
    from tokenmill.ingest import IngestConfig, iter_documents
    return [d.metadata["messages"] for d in iter_documents(IngestConfig(paths=[str(path)], records="chat"))]


@torch.no_grad()
def evaluate_chats(model, tokenizer, path: Path, seq_len: int, device, head=None,
                   progress=None) -> tuple[dict, intervals.Units]:
    """The set's answer loss and bits per byte with 95% intervals over conversations, and the per-conversation
    sums a paired before/after interval resamples. Conversations are cut at seq_len tokens. With a `head`
    (losses.chunked_head) the model returns hidden states, and the head makes the logits."""
    from tokenmill.chat import encode, use_template
    use_template(tokenizer)
    model.eval()
    losses, tokens, n_bytes = [], [], 0
    for messages in conversations(path):
        conv = encode(tokenizer, messages)
        ids, scored = conv.ids[:seq_len + 1], conv.assistant[1:seq_len + 1]
        if not scored.any():
            continue
        out = model(input_ids=torch.from_numpy(ids[None, :-1]).to(device), use_cache=False).logits[0]
        logits = (out @ head.weight.T if head is not None else out).float()
        per_token = torch.nn.functional.cross_entropy(logits, torch.from_numpy(ids[1:]).to(device), reduction="none")
        losses.append(float(per_token[torch.from_numpy(scored).to(device)].sum()))
        tokens.append(int(scored.sum()))
        n_bytes += len(tokenizer.decode(ids[1:][scored]).encode())
        if progress:
            progress(len(ids) - 1)
    if not tokens:
        raise ValueError(f"{path}: no conversation with an assistant token within {seq_len} tokens to score")
    units = intervals.Units("conversations", np.arange(len(tokens)), np.array(losses), np.array(tokens, dtype=np.float64))
    loss, per_nat = units.value, sum(tokens) / n_bytes / math.log(2)
    low, high = intervals.interval(units)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "bits_per_byte": loss * per_nat,
            "tokens": sum(tokens), "loss_ci": [low, high], "bits_per_byte_ci": [low * per_nat, high * per_nat],
            "interval_units": "conversations", "n_units": len(tokens)}, units
