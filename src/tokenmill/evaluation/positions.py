"""Loss by position in the window: the figure that shows whether a context extension worked (the loss at
positions beyond the original length falls, and the early positions do not suffer).

Buckets double from seq_len / 16: at seq_len 8192 they are 0–512, 512–1k, 1k–2k, 2k–4k, 4k–8k. The set's
loss is the mean over every position, so one pass gives both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tokenmill.evaluation import intervals

CHUNK_TOKENS = 1024  # positions whose logits are made at once: a 49k vocabulary needs ~200 MB per 1k tokens


def buckets(seq_len: int) -> list[tuple[int, int]]:
    """[start, end) position ranges covering the window."""
    edges, edge = [0], max(seq_len // 16, 1)
    while edge < seq_len:
        edges.append(edge)
        edge *= 2
    edges.append(seq_len)
    return list(zip(edges[:-1], edges[1:]))


def bucket_name(start: int, end: int) -> str:
    def short(n: int) -> str:
        return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)
    return f"{short(start)}-{short(end)}"


def in_order(by_bucket: dict) -> dict:
    """Buckets by position (results.json sorts its keys as text: "512-1k" before "64-128")."""
    def start(name: str) -> float:
        head = name.split("-")[0]
        return float(head[:-1]) * 1024 if head.endswith("k") else float(head)
    return dict(sorted(by_bucket.items(), key=lambda item: start(item[0])))


def token_losses(model, batch: dict[str, torch.Tensor], head: torch.nn.Module | None) -> torch.Tensor:
    """[B, T] next-token losses (nats); with a chunked `head` the model returns hidden states and the
    logits are made CHUNK_TOKENS positions at a time."""
    out = model(input_ids=batch["input_ids"], use_cache=False).logits
    labels = batch["labels"]
    if head is None:
        return F.cross_entropy(out.float().transpose(1, 2), labels, reduction="none")
    losses = [F.cross_entropy((out[:, s:s + CHUNK_TOKENS] @ head.weight.T).float().transpose(1, 2),
                              labels[:, s:s + CHUNK_TOKENS], reduction="none")
              for s in range(0, out.shape[1], CHUNK_TOKENS)]
    return torch.cat(losses, dim=1)


@torch.no_grad()
def loss_by_position(model, windows: list[np.ndarray], batch_size: int, device, head=None,
                     documents: np.ndarray | None = None, progress=None) -> tuple[float, dict, intervals.Units]:
    """(mean loss over every token, {bucket: mean loss of its positions}, the per-unit sums the intervals
    resample) over windows of seq_len + 1 tokens. `documents` [windows, seq_len]: the document of each scored
    token; the units are documents, or windows when there are too few documents (intervals.MIN_DOCUMENTS)."""
    model.eval()
    sums, window_sums = None, []
    n_docs = int(documents.max()) + 1 if documents is not None else 0
    doc_sums = np.zeros(n_docs)
    for i in range(0, len(windows), batch_size):
        tokens = torch.from_numpy(np.stack(windows[i:i + batch_size]).astype(np.int64)).to(device)
        losses = token_losses(model, {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}, head).double()
        sums = losses.sum(0) if sums is None else sums + losses.sum(0)
        on_host = losses.cpu().numpy()
        window_sums.append(on_host.sum(1))
        if documents is not None:
            doc_sums += np.bincount(documents[i:i + batch_size].ravel(), weights=on_host.ravel(), minlength=n_docs)
        if progress:
            progress(on_host.size)
    per_position = (sums / len(windows)).cpu().numpy()
    by_bucket = {bucket_name(s, e): float(per_position[s:e].mean()) for s, e in buckets(len(per_position))}
    return float(per_position.mean()), by_bucket, _units(np.concatenate(window_sums), len(per_position),
                                                         documents, doc_sums)


def _units(window_sums: np.ndarray, width: int, documents: np.ndarray | None, doc_sums: np.ndarray) -> intervals.Units:
    if documents is not None:
        tokens = np.bincount(documents.ravel(), minlength=len(doc_sums)).astype(np.float64)
        present = np.flatnonzero(tokens)
        if len(present) >= intervals.MIN_DOCUMENTS:
            return intervals.Units("documents", present, doc_sums[present], tokens[present])
    n = len(window_sums)
    return intervals.Units("windows", np.arange(n), window_sums, np.full(n, float(width)))
