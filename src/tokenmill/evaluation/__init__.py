"""Evaluate a model: loss, perplexity and bits per byte on named sets, zero-shot multiple-choice accuracy,
and lm-evaluation-harness tasks; one results.json (`50_eval/` in a run).

    tokenmill eval runs/x general=books/ domain=runs/x/30_shards --tasks cloze.jsonl -o runs/x/eval

MODEL is a run folder, a checkpoint, a HF folder or hf://org/name (model/source.py). Sets are shards or raw
text (sets.py), tasks are JSONL questions (choice.py; make them from your own text with cloze.py).
results.json: {"model", "seq_len", "sets": {NAME: {loss, perplexity, bits_per_byte, tokens, loss_by_position}},
"tasks": {NAME: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}}, "lm_eval": {TASK: {metric: value}}}.
Several sets side by side, before and after training, is how continued pre-training shows its trade:
domain gain next to general forgetting.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from tokenmill.atomic import atomic_write_json
from tokenmill.device import pick_device
from tokenmill.evaluation.choice import load_task, score_task, task_files
from tokenmill.evaluation.sets import evaluate_split, parse_sets, token_split
from tokenmill.losses import hidden_state_outputs
from tokenmill.schema import StrictModel

__all__ = ["EvalConfig", "evaluate", "run", "parse_sets", "format_table"]


class EvalConfig(StrictModel):
    seq_len: int | None = Field(None, gt=1, description="window length (tokens); default: the training seq_len")
    max_tokens: int | None = Field(262_144, gt=0, description="tokens evaluated per set; None: the whole set")
    batch_size: int = Field(8, gt=0, description="windows (or choices) per forward pass")
    tasks: list[str] = Field(default_factory=list, description="multiple-choice task files or folders (JSONL)")
    lm_eval: list[str] = Field(default_factory=list, description="lm-evaluation-harness task names (offline)")
    lm_eval_include: str | None = Field(None, description="folder of extra lm-eval task YAMLs")
    lm_eval_limit: int | None = Field(None, gt=0, description="lm-eval: at most this many examples per task")


def evaluate(model, tokenizer, cfg: EvalConfig, sets: dict[str, Path], seq_len: int, cache_dir: Path) -> dict:
    """The results of one model, without the "model" key: sets, then tasks, then lm-eval."""
    device = pick_device("auto")
    model.to(device)
    seq_len = min(seq_len, model.config.max_position_embeddings)
    results: dict = {"seq_len": seq_len, "sets": {}}
    with hidden_state_outputs(model) as head:  # logits a chunk at a time: a 49k vocabulary needs GiBs at once
        for name, path in sets.items():
            split = token_split(path, tokenizer, cache_dir)
            results["sets"][name] = evaluate_split(model, split, seq_len, cfg.max_tokens, cfg.batch_size, device,
                                                   head)
    if cfg.tasks:
        max_length = model.config.max_position_embeddings
        results["tasks"] = {}
        for name, path in task_files([Path(p) for p in cfg.tasks]).items():
            scored = score_task(model, tokenizer, load_task(path), max_length, cfg.batch_size, device)
            results["tasks"][name] = {k: v for k, v in scored.items() if k != "loglikelihoods"}
    if cfg.lm_eval:
        from tokenmill.evaluation.harness import run_lm_eval
        include = Path(cfg.lm_eval_include) if cfg.lm_eval_include else None
        results["lm_eval"] = run_lm_eval(model, tokenizer, cfg.lm_eval, include, cfg.batch_size,
                                         cfg.lm_eval_limit)["results"]
    return results


def run(cfg: EvalConfig, model_spec: Path | str, sets: dict[str, Path], out_dir: Path | None,
        default_seq_len: int = 256, before: Path | str | None = None, base_changes=None) -> dict:
    """Evaluate the model (and, given `before`, the base model too, the same way) and write results.json.
    `base_changes`: the HF config the base trains with (model.rope, a new length), so that "before" is the
    model at step 0, evaluated on the same windows as "after"."""
    from tokenmill.model.source import load_source
    seq_len = cfg.seq_len or default_seq_len
    with tempfile.TemporaryDirectory(prefix="tokenmill-eval-") as scratch:
        cache = Path(out_dir) / "sets" if out_dir else Path(scratch)
        model, tokenizer, source = load_source(model_spec)
        results = {"model": str(model_spec), **evaluate(model, tokenizer, cfg, sets, seq_len, cache)}
        if before is not None:
            base, base_tokenizer, _ = load_source(before)
            if base_changes is not None:  # the base as training starts from it: its new RoPE and length
                from tokenmill.model import load_model
                base = load_model(before, config=base_changes)
            results["before"] = {"model": str(before), **evaluate(base, base_tokenizer, cfg, sets, seq_len, cache)}
    if out_dir:
        atomic_write_json(Path(out_dir) / "results.json", results)
    return results


def format_table(results: dict) -> str:
    """The console table: one row per set, then one per task."""
    lines = []
    if results.get("sets"):
        lines.append(f"{'set':<20} {'loss':>8} {'ppl':>10} {'bits/byte':>10} {'tokens':>10}")
        lines += [f"{name:<20} {r['loss']:>8.4f} {r['perplexity']:>10.2f} {r['bits_per_byte']:>10.4f} {r['tokens']:>10,}"
                  for name, r in results["sets"].items()]
    if results.get("tasks"):
        lines.append(f"{'task':<20} {'acc':>16} {'acc_norm':>16} {'n':>6}")
        for name, r in results["tasks"].items():
            lines.append(f"{name:<20} {r['acc']:>8.4f} ± {r['acc_stderr']:.4f} {r['acc_norm']:>8.4f} ± "
                         f"{r['acc_norm_stderr']:.4f} {r['n']:>6}")
            lines += [f"  acc by {tag}: " + ", ".join(f"{v} {acc:.2f}" for v, acc in values.items())
                      for tag, values in r.get("acc_by", {}).items()]  # in the order the task lists them
    for task, metrics in results.get("lm_eval", {}).items():
        lines.append(f"lm-eval {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return "\n".join(lines)
