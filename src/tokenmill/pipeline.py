"""`tokenmill run`: every stage in order, in one run folder, skipping stages that are up to date.

    runs/NAME/
      config.resolved.yaml   the config after defaults, recipe and --set overrides
      00_raw/ 10_filtered/ 20_dedup/ 30_shards/ 40_checkpoints/ 50_eval/ 60_export/
      41_merge/              with a merge section: the merged model, which eval and export then take
      42_sft/                with an sft section: the fine-tuned model (final/), its chats in sft/00_raw/
      metrics.jsonl          training metrics, one row per log step
      report.html
With named datasets (the `datasets:` section) each has the data stages' folders of its own, one tokenizer
serves them all, and training mixes them:
      datasets/NAME/00_raw/ 10_filtered/ 20_dedup/ 30_shards/
      30_tokenizer/          trained on every dataset (when tokenize.tokenizer names none), or the base's
                             extended on tokenize.extend.datasets
      40_checkpoints/ ...
Each stage folder holds a manifest.json; a stage re-runs when its config or its inputs changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenmill import dedup, evaluation, export, filters, ingest, merge, recipes, report, sft, tokenize, train
from tokenmill.atomic import atomic_write_json, atomic_write_text
from tokenmill.config import PipelineConfig, dump_config
from tokenmill.dedup import DedupConfig
from tokenmill.decontaminate import with_run_sources
from tokenmill.filters import FilterConfig
from tokenmill.generate import generate
from tokenmill.logs import library_logs
from tokenmill.ingest import IngestConfig
from tokenmill.stage import prepare_resumable, run_stage
from tokenmill.tokenize.fertility import of_run
from tokenmill.tokenize.shards import read_meta

DATA_DIRS = {"ingest": "00_raw", "filter": "10_filtered", "dedup": "20_dedup", "tokenize": "30_shards"}
MODEL_DIRS = {"train": "40_checkpoints", "merge": "41_merge", "sft": "42_sft", "eval": "50_eval", "export": "60_export"}


def clean(ingest_cfg: IngestConfig, filter_cfg: FilterConfig, dedup_cfg: DedupConfig, root: Path, force: bool,
          until: str | None = None) -> Path:
    """ingest → filter → dedup into root/00_raw, 10_filtered, 20_dedup (or up to `until`); returns the
    deduplicated documents."""
    d = {name: root / folder for name, folder in DATA_DIRS.items()}
    run_stage("ingest", ingest_cfg, ingest.input_keys(ingest_cfg), d["ingest"],
              lambda out: ingest.run(ingest_cfg, out), force)
    if until != "ingest":
        run_stage("filter", filter_cfg, [d["ingest"]], d["filter"], lambda out: filters.run(filter_cfg, d["ingest"], out), force)
    if until not in ("ingest", "filter"):
        run_stage("dedup", dedup_cfg, dedup.inputs(dedup_cfg, d["filter"]), d["dedup"],
                  lambda out: dedup.run(dedup_cfg, d["filter"], out), force)
    return d["dedup"]


def prepare_data(cfg: PipelineConfig, run_dir: Path, force: bool, until: str | None = None) -> Path | dict[str, Path] | None:
    """The token shards training reads: one folder, or one per named dataset (None when `until` stops
    before tokenize)."""
    if until in ("ingest", "filter", "dedup"):
        for name, ds in (cfg.datasets or {}).items():
            clean(ds.ingest_config(), ds.filter or cfg.filter, _dedup_config(ds.dedup or cfg.dedup, cfg, run_dir),
                  run_dir / "datasets" / name, force, until)
        if not cfg.datasets:
            clean(cfg.ingest, cfg.filter, _dedup_config(cfg.dedup, cfg, run_dir), run_dir, force, until)
        return None
    if not cfg.datasets:
        docs = clean(cfg.ingest, cfg.filter, _dedup_config(cfg.dedup, cfg, run_dir), run_dir, force)
        shards = run_dir / DATA_DIRS["tokenize"]
        run_stage("tokenize", cfg.tokenize, [docs], shards, lambda out: tokenize.run(cfg.tokenize, docs, out), force)
        return shards
    roots = {name: run_dir / "datasets" / name for name in cfg.datasets}
    docs = {name: clean(ds.ingest_config(), ds.filter or cfg.filter, _dedup_config(ds.dedup or cfg.dedup, cfg, run_dir),
                        roots[name], force)
            for name, ds in cfg.datasets.items()}
    tokenize_cfg, inputs = cfg.tokenize, []
    if not cfg.tokenize.tokenizer or cfg.tokenize.extend:
        # One tokenizer for every dataset: trained on all of them, or the base's extended on the chosen ones.
        shared = run_dir / "30_tokenizer"
        sources = [docs[n] for n in (cfg.tokenize.extend and cfg.tokenize.extend.datasets or docs)]
        run_stage("tokenizer", cfg.tokenize, sources, shared,
                  lambda out: tokenize.make_tokenizer(cfg.tokenize, sources, out), force)
        tokenize_cfg = cfg.tokenize.model_copy(update={"tokenizer": str(shared / "tokenizer"), "extend": None})
        inputs = [shared]
    shards = {name: roots[name] / DATA_DIRS["tokenize"] for name in cfg.datasets}
    for name in cfg.datasets:
        run_stage(f"tokenize {name}", tokenize_cfg, [docs[name], *inputs], shards[name],
                  lambda out, name=name: tokenize.run(tokenize_cfg, docs[name], out), force)
    return shards


def _dedup_config(dedup_cfg: DedupConfig, cfg: PipelineConfig, run_dir: Path) -> DedupConfig:
    """The dedup section with the run's evaluation sets, tasks and lm-eval tasks to decontaminate against."""
    if dedup_cfg.decontaminate is None:
        return dedup_cfg
    decont = with_run_sources(dedup_cfg.decontaminate, cfg.train.eval_sets, cfg.eval.tasks, cfg.eval.lm_eval,
                              cfg.eval.lm_eval_include, run_dir)
    return dedup_cfg.model_copy(update={"decontaminate": decont})


UNTIL = ("ingest", "filter", "dedup", "tokenize")  # where `tokenmill run --until` may stop


def run_pipeline(cfg: PipelineConfig, run_dir: Path, force: bool = False, until: str | None = None) -> dict | None:
    """Every stage, or the data stages up to `until` (then None)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.resolved.yaml", dump_config(cfg))
    if cfg.recipe.name != "none":
        print(recipes.describe(cfg.recipe, cfg.train, cfg.mixture))
    if cfg.merge:
        merge.check_run(cfg.merge, cfg.train)
    if not force:  # a training run this config cannot continue is refused before the data stages run
        prepare_resumable("train", _train_sections(cfg), None, run_dir / MODEL_DIRS["train"], train.RESUMABLE_CHANGES)
    shards = prepare_data(cfg, run_dir, force, until)
    if until:
        return None
    _save_estimate(cfg, run_dir)
    with library_logs(run_dir / "logs" / "model.log"):  # transformers, peft, bitsandbytes: not the terminal
        return _model_stages(cfg, run_dir, shards, force)


def _model_stages(cfg: PipelineConfig, run_dir: Path, shards: Path | dict[str, Path], force: bool) -> dict:
    """train → (merge) → (sft) → eval → export → sample → report."""
    d = {name: run_dir / folder for name, folder in MODEL_DIRS.items()}
    named = bool(cfg.datasets)
    run_stage("train", _train_sections(cfg), list(shards.values()) if named else [shards], d["train"],
              lambda out: train.run(cfg.model, cfg.train, shards, out, run_dir / "metrics.jsonl", mixture=cfg.mixture),
              force, resumable=True, resume_despite=train.RESUMABLE_CHANGES)
    default_sets = {name: str(path) for name, path in (shards if named else {"val": shards}).items()}
    eval_sets = {name: Path(path) for name, path in {**(cfg.train.eval_sets or default_sets),
                                                      **(cfg.merge.sets if cfg.merge else {})}.items()}
    model_dir = d["train"]
    if cfg.merge:
        run_stage("merge", {"merge": cfg.merge, "train": cfg.train}, [d["train"]], d["merge"],
                  lambda out: merge.run(cfg.merge, d["train"], out, eval_sets, cfg.train.seq_len,
                                        start=cfg.model.init_from), force)
        model_dir = d["merge"]
    if cfg.sft:
        chats = sft.ingest_chats(cfg.sft, run_dir / "sft" / DATA_DIRS["ingest"], force)
        start = model_dir
        run_stage("sft", cfg.sft, [start, chats], d["sft"],
                  lambda out: sft.run(cfg.sft, start, chats, out), force, resumable=True)
        model_dir = d["sft"]
    # train is in the key for its eval_sets and seq_len (its other changes change the train stage's key anyway)
    results = run_stage("eval", {"eval": cfg.eval, "train": cfg.train}, [model_dir], d["eval"],
                        lambda out: _eval_counts(_with_merge(evaluation.run(
                            cfg.eval, model_dir, eval_sets, out, cfg.train.seq_len, before=cfg.model.init_from,
                            base_changes=_base_changes(cfg)), d["merge"] if cfg.merge else None, out)),
                        force)
    # eval is an input: the model card carries its results
    run_stage("export", cfg.export, [model_dir, d["eval"]], d["export"],
              lambda out: export.run(cfg.export, model_dir, out), force)
    sample = generate(_sampled_model(cfg, d["export"]), cfg.generate)
    atomic_write_text(run_dir / "sample.txt", sample)
    report_path = report.run(run_dir)
    evaluated = json.loads((d["eval"] / "results.json").read_text())
    return {"report": report_path, "model": d["export"], "sets": evaluated["sets"],
            "before": evaluated.get("before", {}).get("sets", {}), "change": evaluated.get("change", {}).get("sets", {}),
            "unigram_entropy": None if named else read_meta(shards / "val").get("unigram_entropy_nats"),
            "sample": sample, "eval": results["counts"], "tokenizer_changed": bool(of_run(run_dir))}


def _train_sections(cfg: PipelineConfig) -> dict:
    """What the train stage's key and record hold: the model, train and (with named datasets) mixture sections."""
    return {"model": cfg.model, "train": cfg.train, **({"mixture": cfg.mixture} if cfg.datasets else {})}


def _save_estimate(cfg: PipelineConfig, run_dir: Path) -> None:
    """What `tokenmill estimate` predicts for this machine, for the report to set beside the measurements."""
    from tokenmill.device import pick_device
    from tokenmill.estimate import estimate
    device = pick_device(cfg.train.device)
    spec = "cpu"
    if device.type == "cuda":
        import torch

        from tokenmill.train.perf import accelerator_named
        spec = accelerator_named(torch.cuda.get_device_name(device))
        if spec is None:
            return  # an accelerator without a table entry: no estimate rather than a wrong one
    trained = [d for d in (run_dir / "30_shards" / "tokenizer", run_dir / "30_tokenizer" / "tokenizer") if d.is_dir()]
    if trained and not cfg.tokenize.tokenizer:  # the vocabulary actually trained (small corpora fall short of vocab_size)
        tokenizer_dir = trained[0]
        cfg = cfg.model_copy(update={"tokenize": cfg.tokenize.model_copy(update={"tokenizer": str(tokenizer_dir)})})
    atomic_write_json(run_dir / "estimate.json", estimate(cfg, spec))


def _sampled_model(cfg: PipelineConfig, export_dir: Path) -> Path:
    """The HF folder, or the first GGUF file when only GGUF was exported."""
    if "hf" in cfg.export.formats:
        return export_dir
    return sorted(export_dir.glob("*.gguf"))[0]


def _base_changes(cfg: PipelineConfig):
    """The base's HF config with model.rope / max_position_embeddings applied, when the run changes them."""
    if not cfg.model.init_from or not (cfg.model.rope or cfg.model.max_position_embeddings):
        return None
    from tokenmill.model import base_config
    return base_config(cfg.model)


def _with_merge(results: dict, merge_dir: Path | None, out: Path) -> dict:
    """results.json with the merge's table of candidates beside the figures, when the run merged."""
    record = merge_dir / "merge.json" if merge_dir else None
    if record and record.is_file():
        results["merge"] = json.loads(record.read_text())
        atomic_write_json(out / "results.json", results)
    return results


def _eval_counts(results: dict) -> dict:
    return {f"{name}_loss": r["loss"] for name, r in results["sets"].items()}
