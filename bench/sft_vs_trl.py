"""Supervised fine-tuning speed and memory: tokenmill sft against TRL's SFTTrainer, side by side.

The same model (SmolLM2-135M-Instruct), the same chats (the Python FAQ train split of bench/after_cpt.py),
the same row length (512), batch (4 rows), steps, learning rate, fp32 on this CPU, activation checkpointing on
both sides or off on both (TRL's SFTConfig turns it on by default), packing on both sides and
the loss on the answers only (TRL: prompt/completion records with completion_only_loss, packed best-fit
decreasing, padding-free; tokenmill: its chats packed first-fit with per-conversation positions). Each side
runs in its own process: training time alone (model loading and saving left out), the real (non-padding)
tokens it trained on, and the process's peak resident memory.

    .venv/bin/python bench/after_cpt.py      # first: the model and the chats
    .venv/bin/python bench/sft_vs_trl.py [--steps 12]

Writes bench/results/sft_vs_trl.json.
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
WORK = ROOT / "bench" / ".work" / "after_cpt"
SEQ_LEN, BATCH, LR = 512, 4, 1e-4


def records() -> list[dict]:
    return [json.loads(line) for line in (WORK / "faq_train.jsonl").read_text().splitlines()]


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_trl(steps: int, checkpointing: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(WORK / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(WORK / "smollm2", dtype=torch.float32, attn_implementation="sdpa")
    data = Dataset.from_list([{"prompt": [r["messages"][0]], "completion": [r["messages"][1]]} for r in records()])
    args = SFTConfig(output_dir=str(WORK / "trl"), max_length=SEQ_LEN, packing=True, padding_free=True,
                     completion_only_loss=True, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                     lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, use_cpu=True, report_to=[],
                     logging_steps=steps, save_strategy="no", include_num_input_tokens_seen="non_padding",
                     dataloader_num_workers=0, seed=0, gradient_checkpointing=checkpointing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": int(trainer.state.num_input_tokens_seen), "steps": steps,
            "rows": len(trainer.train_dataset), "peak_rss_gib": peak_gib()}


def run_tokenmill(steps: int, checkpointing: bool) -> dict:
    from transformers import AutoTokenizer

    from tokenmill.documents import read_documents
    from tokenmill.ingest import run as ingest
    from tokenmill.sft import SFTConfig, prepare, run
    chats = WORK / "bench_chats"
    data = {"paths": [str(WORK / "faq_train.jsonl")]}
    cfg = SFTConfig(data=data, held_out=0.0, train={"seq_len": SEQ_LEN, "micro_batch_size": BATCH, "max_steps": steps,
                                                   "lr_max": LR, "warmup_steps": 0, "eval_every": 0, "save_every": 0,
                                                   "log_every": 1, "loggers": ["jsonl"],
                                                   "activation_checkpointing": checkpointing})
    if not (chats / "manifest.json").is_file():
        ingest(cfg.data, chats)
        (chats / "manifest.json").write_text("{}")
    rows, _, _ = prepare(cfg, AutoTokenizer.from_pretrained(WORK / "smollm2"), read_documents(chats))
    out = WORK / "tokenmill_sft"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    run(cfg, WORK / "smollm2", chats, out)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [SEQ_LEN * BATCH / r["perf/tokens_per_s"] for r in logged if "perf/tokens_per_s" in r]
    real_share = rows.tokens / rows.input_ids.size  # the rest of each row is padding
    return {"seconds": sum(per_step), "tokens": round(real_share * SEQ_LEN * BATCH * steps), "steps": steps,
            "rows": len(rows), "peak_rss_gib": peak_gib(), "padding_share": round(1 - real_share, 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--side", choices=["trl", "tokenmill"])
    parser.add_argument("--checkpointing", choices=["on", "off"], action="append",
                        help="activation checkpointing on both sides (TRL's SFTConfig default: on); default both")
    args = parser.parse_args()
    if args.side:
        run_side = run_trl if args.side == "trl" else run_tokenmill
        print(json.dumps(run_side(args.steps, args.checkpointing == ["on"])))
        return
    result = {}
    for mode in args.checkpointing or ["on", "off"]:
        pair = result[f"activation checkpointing {mode}"] = {}
        for side in ("trl", "tokenmill"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps),
                                  "--checkpointing", mode], check=True, capture_output=True, text=True).stdout
            pair[side] = json.loads(out.strip().splitlines()[-1])
            pair[side]["tokens_per_s"] = pair[side]["tokens"] / pair[side]["seconds"]
        pair["speed_ratio"] = pair["tokenmill"]["tokens_per_s"] / pair["trl"]["tokens_per_s"]
        pair["memory_ratio"] = pair["tokenmill"]["peak_rss_gib"] / pair["trl"]["peak_rss_gib"]
        for side in ("trl", "tokenmill"):
            r = pair[side]
            print(f"checkpointing {mode:<4} {side:<10} {r['tokens_per_s']:8.1f} real tokens/s  {r['peak_rss_gib']:.2f} "
                  f"GiB peak  ({r['tokens']:,} tokens in {r['seconds']:.1f} s, {r['rows']} rows)")
        print(f"checkpointing {mode}: tokenmill / TRL {pair['speed_ratio']:.2f}x tokens/s, "
              f"{pair['memory_ratio']:.2f}x peak memory")
    (ROOT / "bench" / "results" / "sft_vs_trl.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
