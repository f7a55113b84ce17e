"""`tokenmill run`: every stage in order, in one run folder, skipping stages that are up to date.

    runs/NAME/
      config.resolved.yaml   the config after defaults and --set overrides
      00_raw/ 10_filtered/ 20_dedup/ 30_shards/ 40_checkpoints/ 50_eval/ 60_export/
      metrics.jsonl          training metrics, one row per log step
      report.html
Each stage folder holds a manifest.json; a stage re-runs when its config or its inputs changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenmill import dedup, evaluation, export, filters, ingest, report, tokenize, train
from tokenmill.atomic import atomic_write_text
from tokenmill.config import PipelineConfig, dump_config
from tokenmill.generate import generate
from tokenmill.stage import run_stage
from tokenmill.tokenize.shards import read_meta

STAGE_DIRS = {"ingest": "00_raw", "filter": "10_filtered", "dedup": "20_dedup", "tokenize": "30_shards",
              "train": "40_checkpoints", "eval": "50_eval", "export": "60_export"}


def run_pipeline(cfg: PipelineConfig, run_dir: Path, force: bool = False) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.resolved.yaml", dump_config(cfg))
    d = {name: run_dir / folder for name, folder in STAGE_DIRS.items()}
    raw_files = ingest.input_keys(cfg.ingest)

    run_stage("ingest", cfg.ingest, raw_files, d["ingest"], lambda out: ingest.run(cfg.ingest, out), force)
    run_stage("filter", cfg.filter, [d["ingest"]], d["filter"], lambda out: filters.run(cfg.filter, d["ingest"], out), force)
    run_stage("dedup", cfg.dedup, [d["filter"]], d["dedup"], lambda out: dedup.run(cfg.dedup, d["filter"], out), force)
    run_stage("tokenize", cfg.tokenize, [d["dedup"]], d["tokenize"],
              lambda out: tokenize.run(cfg.tokenize, d["dedup"], out), force)
    run_stage("train", {"model": cfg.model, "train": cfg.train}, [d["tokenize"]], d["train"],
              lambda out: train.run(cfg.model, cfg.train, d["tokenize"], out, run_dir / "metrics.jsonl"),
              force, resumable=True)
    eval_sets = {name: Path(path) for name, path in (cfg.train.eval_sets or {"val": str(d["tokenize"])}).items()}
    # train is in the key for its eval_sets and seq_len (its other changes change the train stage's key anyway)
    results = run_stage("eval", {"eval": cfg.eval, "train": cfg.train}, [d["train"]], d["eval"],
                        lambda out: _eval_counts(evaluation.run(cfg.eval, d["train"], eval_sets, out,
                                                                cfg.train.seq_len, before=cfg.model.init_from)),
                        force)
    run_stage("export", cfg.export, [d["train"]], d["export"], lambda out: export.run(cfg.export, d["train"], out), force)
    report_path = report.run(run_dir)
    first = next(iter(json.loads((d["eval"] / "results.json").read_text())["sets"].values()))
    return {"report": report_path, "model": d["export"], "val_loss": first["loss"],
            "bits_per_byte": first["bits_per_byte"],
            "unigram_entropy": read_meta(d["tokenize"] / "val").get("unigram_entropy_nats"),
            "sample": generate(d["export"], cfg.generate), "eval": results["counts"]}


def _eval_counts(results: dict) -> dict:
    return {f"{name}_loss": r["loss"] for name, r in results["sets"].items()}
