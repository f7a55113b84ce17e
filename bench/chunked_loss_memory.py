"""Memory and time of the LM head + cross-entropy: all logits at once (what Trainer does) vs tokenmill's
chunked loss (`train.loss_chunk_tokens`), for the vocabularies of the demo, the Trainer benchmark and SmolLM2.

    .venv/bin/python bench/chunked_loss_memory.py [--tokens 2048]

Each (vocabulary, method) runs in its own process: peak RSS above the inputs (hidden states and head
weight already allocated) over three forward+backward passes, and the mean time of a pass. fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"demo (4096 x 128)": (4096, 128), "Trainer bench (8192 x 256)": (8192, 256),
          "SmolLM2 (49152 x 576)": (49152, 576)}


def worker(vocab: int, hidden_size: int, tokens: int, chunk: int | None) -> dict:
    import torch
    import torch.nn.functional as F

    from tokenmill.losses import ChunkedLinearCrossEntropy
    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,))

    def step():
        if chunk is None:
            loss = F.cross_entropy(hidden @ weight.T, labels)
        else:
            loss = ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk)
        loss.backward()
        hidden.grad = weight.grad = None  # as the optimizer's zero_grad(set_to_none=True)
        return loss.item()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    loss = [step() for _ in range(3)][-1]
    seconds = (time.perf_counter() - started) / 3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_peak_mib": (peak - base) / 1024, "seconds": seconds, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per micro-batch")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--worker", nargs=3, type=int, metavar=("VOCAB", "HIDDEN", "CHUNK"))
    args = parser.parse_args()
    if args.worker:
        vocab, hidden, chunk = args.worker
        print("RESULT " + json.dumps(worker(vocab, hidden, args.tokens, chunk or None)))
        return
    results = {}
    print(f"{'vocabulary x hidden':28s}{'all logits':>14s}{'chunked':>12s}{'memory':>9s}{'time all':>10s}{'chunked':>9s}")
    for name, (vocab, hidden) in SHAPES.items():
        row = {}
        for method, chunk in (("all_logits", 0), ("chunked", args.chunk)):
            proc = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens), "--worker", str(vocab),
                                   str(hidden), str(chunk)], capture_output=True, text=True, check=True)
            row[method] = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
        results[name] = row
        a, c = row["all_logits"], row["chunked"]
        print(f"{name:28s}{a['extra_peak_mib']:11.0f} MiB{c['extra_peak_mib']:8.0f} MiB{c['extra_peak_mib'] / a['extra_peak_mib']:8.2f}x"
              f"{a['seconds']:9.3f}s{c['seconds']:8.3f}s")
    out = ROOT / "bench" / "results" / "chunked_loss_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tokens": args.tokens, "chunk_tokens": args.chunk, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
