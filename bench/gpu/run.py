"""The GPU run: one command that proves and measures training on one GPU, in order of value, each step's figures
written to OUT as JSON the moment the step ends (a run cut short still returns what it did). docs/gpu.md.

    make gpu-bundle                                          # here: the wheels the GPU machine lacks
    PYTHONPATH=bench/gpu/site:src python bench/gpu/run.py --out "$OUT"     # there: about 7 minutes on an H200
    python bench/gpu/run.py --dry-run --out /tmp/gpu-dry     # anywhere: the same code, toy shapes, 2 steps each

Steps (files 00..06 in OUT):
  00 environment     torch, CUDA, the device, the peak MFU is measured against
  01 gpu tests       pytest -m gpu (tests/test_gpu.py): bf16, document masking at 8k, fused AdamW, FSDP2 on
                     NCCL, torch.compile, the chunked loss, exact resume, QLoRA on bitsandbytes' kernels
  02 throughput      tokenmill's training loop on the 125m, 350m and 1b presets at seq_len 2048, bf16, compiled,
                     the largest micro-batch that fits; 1b also eager, and with activation checkpointing
  03 trainer         transformers.Trainer on the 1b shape with the same batch, precision and attention
  04 qlora memory    peak memory of a LoRA and a QLoRA step on the 1b shape, built in place
  05 muon            Muon against AdamW on the 125m shape: tokens to reach AdamW's final loss
  06 profile         torch.profiler's top 10 kernels of a 1b step
A step that fails writes its error and the run goes on; a step that would not finish inside --budget-s is
skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT / "src")]

import measure  # noqa: E402  (bench/gpu/measure.py, beside this file)


def environment(ctx: measure.Context) -> dict:
    import torch
    import transformers
    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": str(ctx.device), "dry_run": ctx.dry_run}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    from tokenmill.train import perf
    info["peak_tflops_bf16"] = round(perf.device_peak_flops(ctx.device, ctx.dtype) / 1e12, 1)
    info["peak_source"] = ("the datasheet's dense bf16 peak (tokenmill/train/accelerators.yaml)"
                           if ctx.device.type == "cuda" else "a measured CPU matmul")
    for package in ("bitsandbytes", "peft", "pydantic"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


# (file, function, seconds it is guessed to take on an H200: a step is skipped when fewer remain). Guesses until a
# GPU run replaces them: three whole-model compiles (~40-60 s each) dominate the throughput step.
STEPS = [
    ("00_environment", environment, 5),
    ("01_gpu_tests", measure.gpu_tests, 60),
    ("02_throughput", measure.throughput, 240),
    ("03_trainer", measure.trainer_side_by_side, 30),
    ("04_qlora_memory", measure.qlora_memory, 45),
    ("05_muon", measure.muon_vs_adamw, 60),
    ("06_profile", measure.profile, 20),
]


def write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy shapes, 2 steps each: the code, not figures")
    parser.add_argument("--budget-s", type=float, default=460, help="skip a step that would end after this")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="e.g. 02_throughput")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = measure.Context.make(args.dry_run, args.out)
    started = time.time()
    for name, step, estimate in STEPS:
        if args.only and name not in args.only and name != "00_environment":
            continue
        record = {"step": name, "dry_run": args.dry_run, "device": str(ctx.device)}
        remaining = args.budget_s - (time.time() - started)
        if not args.dry_run and remaining < estimate:
            record["skipped"] = f"{remaining:.0f} s of the budget left, the step takes about {estimate} s"
        else:
            t0 = time.time()
            try:
                record["result"] = step(ctx)
            except Exception as error:  # noqa: BLE001 - the run goes on; the error is the step's result
                record["error"] = "".join(traceback.format_exception(error))[-4000:]
            record["seconds"] = round(time.time() - t0, 1)
            ctx.free()
        write_json(args.out / f"{name}.json", record)
        print(f"[gpu] {name}: " + ("skipped" if "skipped" in record else "error" if "error" in record else
                                   f"{record['seconds']} s"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
