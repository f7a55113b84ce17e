"""Evaluate a model: loss, perplexity and bits per byte on named sets, zero-shot multiple-choice accuracy,
and lm-evaluation-harness tasks; one results.json (`50_eval/` in a run).

    tokenmill eval runs/x general=books/ domain=runs/x/30_shards --tasks cloze.jsonl -o runs/x/eval

MODEL is a run folder, a checkpoint, a HF folder or hf://org/name (model/source.py). Sets are shards or raw
text (sets.py), or chats scored on their answers (chats.py), tasks are JSONL questions (choice.py; make them from your own text with cloze.py).
results.json: {"model", "seq_len", "sets": {NAME: {loss, perplexity, bits_per_byte, tokens, loss_by_position,
loss_ci, perplexity_ci, bits_per_byte_ci, interval_units, n_units}}, "tasks": {NAME: {acc, acc_stderr, acc_ci,
acc_norm, acc_norm_stderr, acc_norm_ci, n}}, "lm_eval": {TASK: {metric: value}}}, and with a base model
"before" (the same keys) and "change": {"sets": {NAME: {loss, bits_per_byte}}, "tasks": {NAME: {acc, acc_norm}}},
each {difference, ci, within_noise, paired} (intervals.py: 95% bootstrap over documents, paired for changes).
Several sets side by side, before and after training, is how continued pre-training shows its trade:
domain gain next to general forgetting.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from tokenmill.atomic import atomic_write_json
from tokenmill.evaluation import intervals
from tokenmill.evaluation.progress import eval_bar
from tokenmill.evaluation.sets import evaluate_split, parse_sets, split_windows, token_split
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


def evaluate(model, tokenizer, cfg: EvalConfig, sets: dict[str, Path], seq_len: int, cache_dir: Path,
             label: str = "eval") -> tuple[dict, dict]:
    """The results of one model, without the "model" key (sets, then tasks, then lm-eval), and the per-unit
    sums behind each figure ({"sets": {name: Units}, "tasks": {name: {metric: Units}}}) for paired intervals."""
    # torch's modules here, not at the top: tokenmill.config imports this package for EvalConfig
    from tokenmill.device import pick_device
    from tokenmill.evaluation.chats import evaluate_chats, is_chat_set
    from tokenmill.evaluation.choice import load_task, score_task, task_files
    from tokenmill.losses import hidden_state_outputs
    device = pick_device("auto")
    model.to(device)
    seq_len = min(seq_len, model.config.max_position_embeddings)
    results: dict = {"seq_len": seq_len, "sets": {}}
    units: dict = {"sets": {}, "tasks": {}}
    with hidden_state_outputs(model) as head:  # logits a chunk at a time: a 49k vocabulary needs GiBs at once
        for i, (name, path) in enumerate(sets.items()):
            if is_chat_set(path):  # held-out conversations: their answers, in the chat template
                with eval_bar(f"{label} {name} ({i + 1}/{len(sets)})", None) as progress:
                    results["sets"][name], units["sets"][name] = evaluate_chats(model, tokenizer, path, seq_len,
                                                                                device, head, progress)
                continue
            split = token_split(path, tokenizer, cache_dir)
            budget = len(split_windows(split, seq_len, cfg.max_tokens)) * seq_len
            with eval_bar(f"{label} {name} ({i + 1}/{len(sets)})", budget) as progress:
                results["sets"][name], units["sets"][name] = evaluate_split(
                    model, split, seq_len, cfg.max_tokens, cfg.batch_size, device, head, progress)
    if cfg.tasks:
        max_length = model.config.max_position_embeddings
        results["tasks"] = {}
        for name, path in task_files([Path(p) for p in cfg.tasks]).items():
            questions = load_task(path)
            with eval_bar(f"{label} {name}", len(questions), unit="q") as progress:
                scored = score_task(model, tokenizer, questions, max_length, cfg.batch_size, device, progress)
            units["tasks"][name] = {"acc": intervals.of_outcomes(scored["correct"]),
                                    "acc_norm": intervals.of_outcomes(scored["correct_norm"])}
            results["tasks"][name] = {k: v for k, v in scored.items()
                                      if k not in ("loglikelihoods", "correct", "correct_norm")}
    if cfg.lm_eval:
        from tokenmill.evaluation.harness import run_lm_eval
        include = Path(cfg.lm_eval_include) if cfg.lm_eval_include else None
        results["lm_eval"] = run_lm_eval(model, tokenizer, cfg.lm_eval, include, cfg.batch_size,
                                         cfg.lm_eval_limit)["results"]
    return results, units


def changes(before: dict, after: dict, units_before: dict, units_after: dict) -> dict:
    """Every before → after difference with its paired 95% interval: loss and bits per byte of each set (the
    same documents), accuracy of each task (the same questions)."""
    out: dict = {"sets": {}, "tasks": {}}
    for name, ub in units_before["sets"].items():
        ua = units_after["sets"].get(name)
        if ua is None:
            continue
        # bits per byte = nats per token x the split's bits-per-nat factor (each tokenizer's own split)
        scale_b = before["sets"][name]["bits_per_byte"] / before["sets"][name]["loss"]
        scale_a = after["sets"][name]["bits_per_byte"] / after["sets"][name]["loss"]
        out["sets"][name] = {"loss": intervals.paired_difference(ub, ua),
                             "bits_per_byte": intervals.paired_difference(ub, ua, scale_b, scale_a)}
    for name, metrics in units_before["tasks"].items():
        if name in units_after["tasks"]:
            out["tasks"][name] = {m: intervals.paired_difference(u, units_after["tasks"][name][m])
                                  for m, u in metrics.items()}
    return out


def run(cfg: EvalConfig, model_spec: Path | str, sets: dict[str, Path], out_dir: Path | None,
        default_seq_len: int = 256, before: Path | str | None = None, base_changes=None) -> dict:
    """Evaluate the model (and, given `before`, the base model too, the same way, with the paired interval of
    every difference) and write results.json. `base_changes`: the HF config the base trains with (model.rope,
    a new length), so that "before" is the model at step 0, evaluated on the same windows as "after"."""
    from tokenmill.model.source import load_source
    seq_len = cfg.seq_len or default_seq_len
    with tempfile.TemporaryDirectory(prefix="tokenmill-eval-") as scratch:
        cache = Path(out_dir) / "sets" if out_dir else Path(scratch)
        model, tokenizer, source = load_source(model_spec)
        after, units_after = evaluate(model, tokenizer, cfg, sets, seq_len, cache)
        results = {"model": str(model_spec), **after}
        if before is not None:
            base, base_tokenizer, _ = load_source(before)
            if base_changes is not None:  # the base as training starts from it: its new RoPE and length
                from tokenmill.model import load_model
                base = load_model(before, config=base_changes)
            earlier, units_before = evaluate(base, base_tokenizer, cfg, sets, seq_len, cache, label="before:")
            results["before"] = {"model": str(before), **earlier}
            results["change"] = changes(earlier, after, units_before, units_after)
    if out_dir:
        atomic_write_json(Path(out_dir) / "results.json", results)
    return results


def format_table(results: dict) -> str:
    """The console table: one row per set, then one per task, each figure with its 95% interval; then, for
    a run with a `before`, each change with its paired interval."""
    lines = []
    if results.get("sets"):
        lines.append(f"{'set':<20} {'loss [95% CI]':>26} {'ppl':>9} {'bits/byte [95% CI]':>26} {'tokens':>9}")
        lines += [f"{name:<20} {_with_ci(r['loss'], r.get('loss_ci')):>26} {r['perplexity']:>9.2f} "
                  f"{_with_ci(r['bits_per_byte'], r.get('bits_per_byte_ci')):>26} {r['tokens']:>9,}"
                  for name, r in results["sets"].items()]
    if results.get("tasks"):
        lines.append(f"{'task':<20} {'acc [95% CI]':>26} {'acc_norm [95% CI]':>26} {'n':>6}")
        for name, r in results["tasks"].items():
            lines.append(f"{name:<20} {_with_ci(r['acc'], r.get('acc_ci')):>26} "
                         f"{_with_ci(r['acc_norm'], r.get('acc_norm_ci')):>26} {r['n']:>6}")
            cis = r.get("acc_by_ci", {})
            lines += [f"  acc by {tag}: " + ", ".join(f"{v} {_with_ci(acc, cis.get(tag, {}).get(v), 2)}"
                                                      for v, acc in values.items())
                      for tag, values in r.get("acc_by", {}).items()]  # in the order the task lists them
    for task, metrics in results.get("lm_eval", {}).items():
        lines.append(f"lm-eval {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    change = results.get("change", {})
    if change.get("sets") or change.get("tasks"):
        lines.append("before → after (paired 95% CI; an interval holding 0 is within noise):")
        lines += [f"  {name:<18} {intervals.describe_change(c['bits_per_byte'], 'bits/byte')}"
                  for name, c in change.get("sets", {}).items()]
        lines += [f"  {name:<18} {intervals.describe_change(c['acc'], 'acc', 3, lower_is_better=False)}"
                  for name, c in change.get("tasks", {}).items()]
    return "\n".join(lines)


def _with_ci(value: float, ci: list[float] | None, digits: int = 4) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{value:.{digits}f}"
