"""Memory of document masking at long context: the dense [T, T] mask tokenmill built for every micro-batch
(before) vs position ids that restart per document, from which transformers finds the boundaries (after).

    .venv/bin/python bench/document_mask_memory.py [--seq-len 8192] [--batch 8]

Each variant runs in a fresh process and reports its peak resident memory above the process's own after
imports. "after, SDPA" adds the boolean mask transformers materialises inside the forward for SDPA on CPU
(`create_causal_mask` with the position ids); with flash attention or flex_attention on a GPU there is none.
Writes bench/results/document_mask_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import resource, sys, torch
from transformers import LlamaConfig
variant, seq_len, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
ids = torch.randint(1, 1000, (batch, seq_len))
ids[torch.rand(batch, seq_len) < 1 / 600] = 0  # documents of ~600 tokens, EOS 0
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def dense_mask(input_ids, eos_id):  # tokenmill before: train/data.py document_mask
    is_eos = input_ids == eos_id
    doc = torch.cumsum(is_eos, dim=1) - is_eos.long()
    t = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    starts = torch.ones_like(is_eos)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    position_ids = t - torch.cummax(t * starts, dim=1).values
    causal = torch.tril(torch.ones(t.shape[1], t.shape[1], dtype=torch.bool))
    mask = (doc[:, :, None] == doc[:, None, :]) & causal
    return {"attention_mask": mask[:, None], "position_ids": position_ids}

from tokenmill.train.data import document_positions
if variant == "before":
    batch_extra = dense_mask(ids, 0)
elif variant == "after":
    batch_extra = document_positions(ids, 0)
else:  # after, with the mask transformers builds for SDPA in the forward
    from transformers.masking_utils import create_causal_mask
    batch_extra = document_positions(ids, 0)
    config = LlamaConfig(hidden_size=64, num_attention_heads=2, num_hidden_layers=1, vocab_size=1000)
    config._attn_implementation = "sdpa"
    embeds = torch.zeros(batch, seq_len, 1)
    mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None, cache=None,
                              position_ids=batch_extra["position_ids"])
    batch_extra["sdpa_mask"] = mask
held = sum(t.numel() * t.element_size() for t in batch_extra.values() if t is not None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import json
print(json.dumps({"peak_mib": round((peak - start) / 1024, 1), "held_mib": round(held / 2**20, 1)}))
'''


def measure(variant: str, seq_len: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(seq_len), str(batch)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    result = {"seq_len": args.seq_len, "micro_batch": args.batch,
              **{variant: measure(variant, args.seq_len, args.batch) for variant in ("before", "after", "after_sdpa")}}
    result["held_ratio"] = round(result["before"]["held_mib"] / max(result["after"]["held_mib"], 1e-9), 1)
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "document_mask_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
