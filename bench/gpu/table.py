"""The GPU run's JSON files as the Markdown tables of docs/benchmarks.md.

    python bench/gpu/table.py OUT_DIR > tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("[0-9][0-9]_*.json"))}


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(x) for x in row) + " |" for row in rows), ""]


def section(title: str, record: dict | None, render) -> list[str]:
    lines = [f"### {title}", ""]
    if record is None:
        return lines + ["not in this run", ""]
    if "skipped" in record or "error" in record:
        reason = record.get("skipped") or record["error"].strip().splitlines()[-1]
        return lines + [f"not measured: {reason}", ""]
    return lines + render(record["result"])


def environment(r: dict) -> list[str]:
    return [f"{r.get('name', r['device'])} ({r.get('memory_gib', '?')} GiB), torch {r['torch']}, CUDA {r['cuda']}, "
            f"transformers {r['transformers']}; MFU against {r['peak_tflops_bf16']} TFLOP/s, {r['peak_source']}"
            + (" — **a dry run: not figures**" if r["dry_run"] else ""), ""]


def gpu_tests(r: dict) -> list[str]:
    return table(["test", "outcome", "seconds"],
                 [[t["name"], t["outcome"], f"{t['seconds']:.1f}"] for t in r["tests"]])


def throughput(r: dict) -> list[str]:
    rows = []
    for x in r["runs"]:
        if "error" in x:
            rows.append([x["preset"], "", "", x.get("compile", ""), x.get("activation_checkpointing", False),
                         f"failed: {x['error'][:80]}", "", ""])
        else:
            rows.append([x["preset"], f"{x['parameters'] / 1e6:.0f}M", x["micro_batch"], x["compile"],
                         x["activation_checkpointing"], f"{x['tokens_per_s']:,}", f"{x['mfu']:.1%}", x["peak_gib"]])
    return table(["preset", "parameters", "micro-batch", "compile", "activation checkpointing", "tokens/s", "MFU",
                  "peak GiB"], rows)


def trainer(r: dict) -> list[str]:
    rows = [["transformers.Trainer", f"{r['trainer']['tokens_per_s']:,}", r["trainer"]["peak_gib"], "1.00x"],
            ["tokenmill, eager", f"{r['tokenmill_eager']['tokens_per_s']:,}", r["tokenmill_eager"]["peak_gib"],
             f"{r['speedup_eager']:.2f}x"],
            ["tokenmill, compiled", f"{r['tokenmill_compiled']['tokens_per_s']:,}",
             r["tokenmill_compiled"]["peak_gib"], f"{r['speedup_compiled']:.2f}x"]]
    return table(["1b, micro-batch " + str(r["trainer"]["micro_batch"]), "tokens/s", "peak GiB", "vs Trainer"], rows)


def qlora(r: dict) -> list[str]:
    rows = [[k, r[k].get("peak_gib", r[k].get("error")), r[k].get("trainable", "")] for k in ("lora", "qlora") if k in r]
    return table(["1b shape, r 16", "peak GiB", "trainable"], rows) + \
        ([f"QLoRA / LoRA peak: {r['qlora_over_lora']:.2f}", ""] if "qlora_over_lora" in r else [])


def muon(r: dict) -> list[str]:
    reach = r["tokens_to_adamw_final"]
    return table(["optimizer", "final val loss", "tokens to AdamW's final loss", "tokens/s"],
                 [[k, f"{r[k]['curve'][-1][1]:.4f}", "never" if reach[k] is None else f"{reach[k]:,.0f}",
                   f"{r[k]['tokens_per_s']:,}"] for k in ("adamw", "muon")]) + \
        [f"Muon's tokens / AdamW's: {r['muon_tokens_ratio']}; time per token Muon / AdamW: "
         f"{r['time_per_token_ratio']}", ""]


def profile(r: dict) -> list[str]:
    return table(["kernel", "calls", "self ms", "share"],
                 [[k["name"], k["calls"], k["self_ms"], f"{k['share']:.1%}"] for k in r["top"]])


def render(folder: Path) -> str:
    records = load(folder)
    lines = ["## On the GPU", ""]
    for key, title, fn in [("00_environment", "Device", environment), ("01_gpu_tests", "pytest -m gpu", gpu_tests),
                           ("02_throughput", "Throughput and MFU", throughput),
                           ("03_trainer", "Side by side with transformers.Trainer", trainer),
                           ("04_qlora_memory", "LoRA and QLoRA memory", qlora), ("05_muon", "Muon and AdamW", muon),
                           ("06_profile", "Top 10 kernels of a 1b step", profile)]:
        lines += section(title, records.get(key), fn)
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(Path(sys.argv[1])))
