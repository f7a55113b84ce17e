"""Report: one self-contained HTML page for a run folder: loss curves, learning rate, the data funnel.

    tokenmill report runs/x        # writes runs/x/report.html
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from collections import Counter

from tokenmill.atomic import atomic_write_text
from tokenmill.documents import read_documents
from tokenmill.report import plots
from tokenmill.report.tokens import DATA_FOLDERS, stage_sizes
from tokenmill.tokenize.fertility import TABLE_HEADER, of_run, table_rows
from tokenmill.stage import read_manifest


def read_metrics(run_dir: Path) -> list[dict]:
    for path in (run_dir / "metrics.jsonl", run_dir / "40_checkpoints" / "metrics.jsonl"):
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def funnel_rows(run_dir: Path, sizes: dict[str, dict[str, int]]) -> tuple[list[dict], dict]:
    """One row per data stage: documents, characters and tokens in and out; and the drops by reason."""
    rows, drops = [], {}
    for name, folder in DATA_FOLDERS.items():
        m = read_manifest(run_dir / folder)
        if not m:
            continue
        c = m["counts"]
        row = {"stage": name}
        for unit in ("docs", "chars"):
            row[f"{unit}_out"] = c.get(f"{unit}_out", 0)
            row[f"{unit}_in"] = c.get(f"{unit}_in", row[f"{unit}_out"])
        if name in sizes:
            row["tokens_out"] = sizes[name]["tokens"]
            row["tokens_in"] = rows[-1]["tokens_out"] if rows and "tokens_out" in rows[-1] else row["tokens_out"]
        rows.append(row)
        drops.update(c.get("drops", {}))
    return rows, drops


def kept_documents_profile(folder: Path) -> tuple[list[int], Counter]:
    """Lengths (characters) and languages of the documents that reach training."""
    lengths, languages = [], Counter()
    if (folder / "manifest.json").is_file():
        for doc in read_documents(folder):
            lengths.append(len(doc.text))
            languages[doc.metadata.get("language", "not identified")] += 1
    return lengths, languages


def dropped_samples(filtered: Path, per_reason: int = 3, chars: int = 300) -> dict[str, list[str]]:
    """A few dropped documents per 'filter/reason', cut to `chars`, for a person to judge the filters."""
    samples: dict[str, list[str]] = {}
    for folder in sorted((filtered / "dropped").glob("*")) if (filtered / "dropped").is_dir() else []:
        for doc in read_documents(folder):
            key = f"{folder.name}/{doc.metadata.get('filter_reason', 'unspecified')}"
            if len(samples.setdefault(key, [])) < per_reason:
                samples[key].append(f"[{doc.id}] {doc.text[:chars]}")
    return samples


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{b64}">' if b64 else f"<p><em>No {alt} data.</em></p>"


def data_funnel_sections(run_dir: Path) -> list[str]:
    """Funnel table and plots (documents, characters, tokens), drops by reason, what each filter removed,
    duplicate cluster sizes."""
    sizes = stage_sizes(run_dir)
    funnel, drops = funnel_rows(run_dir, sizes)
    units = [u for u in ("docs", "chars", "tokens") if funnel and f"{u}_out" in funnel[0]]
    sections = ["<h2>Data funnel</h2>", _table(
        [[r["stage"]] + [r.get(f"{u}_{side}", "") for u in units for side in ("in", "out")] for r in funnel],
        ["stage"] + [f"{u} {side}" for u in units for side in ("in", "out")])]
    sections += [_img(plots.funnel([(r["stage"], r[f"{u}_in"], r[f"{u}_out"]) for r in funnel],
                                   {"docs": "documents", "chars": "characters", "tokens": "tokens"}[u]), f"{u} funnel")
                 for u in units]
    sections += [_img(plots.drops(drops), "drop")]
    dropped = {label.split("/", 1)[1]: size for label, size in sizes.items() if label.startswith("dropped/")}
    if dropped:
        sections.append("<h3>Removed by each filter</h3>" + _table(
            [(name, s["docs"], s["chars"], s["tokens"]) for name, s in dropped.items()],
            ("filter", "documents", "characters", "tokens")))
    filtered = read_manifest(run_dir / "10_filtered")
    if filtered and filtered["counts"].get("scores"):
        from tokenmill.filters.classifiers import SCORE_BIN
        sections.append(_img(plots.score_histograms(filtered["counts"]["scores"], SCORE_BIN), "quality score"))
    dedup = read_manifest(run_dir / "20_dedup")
    if dedup:
        sections.append(_img(plots.cluster_sizes(dedup["counts"].get("cluster_sizes", {})), "duplicate cluster"))
    return sections


def before_after_rows(results: dict, tokenizer_changed: bool = False) -> list[tuple]:
    """Per set and metric: before (the base model), after, each with its 95% interval, the change with its
    paired interval and whether it is beyond noise. Without a "before" (training from scratch) the before
    columns stay empty. When the tokenizer changed, only bits per byte compare."""
    before = results.get("before", {}).get("sets", {})
    changes = results.get("change", {}).get("sets", {})
    rows = []
    for name, after in results.get("sets", {}).items():
        for metric in ("bits_per_byte",) if tokenizer_changed else ("loss", "perplexity", "bits_per_byte"):
            b = before.get(name, {})
            change = changes.get(name, {}).get(metric)
            rows.append((name, metric, _ci(b.get(metric), b.get(f"{metric}_ci")),
                         _ci(after[metric], after.get(f"{metric}_ci")), *_change(change, b.get(metric), after[metric])))
    return rows


def _ci(value, ci, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{value:.{digits}f}"


def _change(change: dict | None, before, after, lower_is_better: bool = True) -> tuple:
    """(change [paired CI], change %, verdict) cells; without a paired interval, the plain difference."""
    if before is None:
        return "", "", ""
    percent = f"{100 * (after - before) / before:+.1f}%" if before else ""
    if change is None:
        return f"{after - before:+.4f}", percent, ""
    lo, hi = change["ci"]
    verdict = "within noise" if change["within_noise"] else \
        ("better" if (change["difference"] < 0) == lower_is_better else "worse")
    return f"{change['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]", percent, verdict


def task_rows(results: dict) -> list[tuple]:
    before = results.get("before", {}).get("tasks", {})
    changes = results.get("change", {}).get("tasks", {})
    rows = []
    for name, after in results.get("tasks", {}).items():
        for metric in ("acc", "acc_norm"):
            b = before.get(name, {})
            rows.append((name, metric, _ci(b.get(metric), b.get(f"{metric}_ci")),
                         _ci(after[metric], after.get(f"{metric}_ci")),
                         *_change(changes.get(name, {}).get(metric), b.get(metric), after[metric], False), after["n"]))
    return rows


def tag_tables(results: dict) -> list[str]:
    """Accuracy per value of each tag a task carries (a passkey's length and depth), before and after."""
    tables = []
    before = results.get("before", {}).get("tasks", {})
    for name, r in results.get("tasks", {}).items():
        for tag, values in r.get("acc_by", {}).items():
            old, old_ci = (before.get(name, {}).get(key, {}).get(tag, {}) for key in ("acc_by", "acc_by_ci"))
            cis = r.get("acc_by_ci", {}).get(tag, {})
            rows = [(value, _ci(old.get(value), old_ci.get(value), 3), _ci(acc, cis.get(value), 3))
                    for value, acc in sorted(values.items(), key=lambda item: _as_number(item[0]))]
            tables.append(f"<h4>{html.escape(name)}: accuracy by {html.escape(tag)} [95% CI]</h4>" +
                          _table(rows, (tag, "before", "after")))
    return tables


def _as_number(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def _opt(value):
    return "" if value is None else value


def evaluation_sections(results: dict, tokenizer_changed: bool = False) -> list[str]:
    """Before/after tables: domain gain and general forgetting side by side."""
    sections = ["<h2>Evaluation</h2>"]
    if "before" in results:
        sections.append(f"<p>Before: {html.escape(results['before']['model'])}. After: "
                        f"{html.escape(results['model'])}. Both evaluated the same way, on the same windows.</p>")
    if tokenizer_changed:
        sections.append("<p>The tokenizer was extended: bits per byte compare the two models, nats per token "
                        "do not.</p>")
    sections.append("<p>Each figure with its 95% interval (a bootstrap over the set's documents); each change "
                    "with its paired interval (the same documents resampled for both models). A change whose "
                    "interval holds zero is within noise.</p>")
    sections.append(_table(before_after_rows(results, tokenizer_changed),
                           ("set", "metric", "before [95% CI]", "after [95% CI]", "change [paired 95% CI]",
                            "change %", "")))
    sections.append(_img(plots.before_after_bars(results), "bits per byte with intervals"))
    sections.append(_img(plots.loss_by_position(results), "loss by position"))
    if results.get("tasks"):
        sections.append("<h3>Zero-shot multiple choice</h3>" + _table(
            task_rows(results), ("task", "metric", "before [95% CI]", "after [95% CI]", "change [paired 95% CI]",
                                 "change %", "", "questions")))
        sections += tag_tables(results)
    for task, metrics in results.get("lm_eval", {}).items():
        sections.append(f"<h3>lm-eval: {html.escape(task)}</h3>" + _table(list(metrics.items()), ("metric", "value")))
    return sections


def vocabulary_sections(run_dir: Path, rows: list[dict]) -> list[str]:
    """An extended tokenizer: what it added, its fertility against the base per dataset, and the evaluation
    curves in bits per byte (nats per token do not compare with the base's)."""
    tokenizer = next((d for d in (run_dir / "30_tokenizer" / "tokenizer", run_dir / "30_shards" / "tokenizer")
                      if (d / "extension.json").is_file()), None)
    if tokenizer is None:
        return []
    record = json.loads((tokenizer / "extension.json").read_text())
    return ["<h2>Vocabulary</h2>",
            f"<p>{html.escape(record['base'])}'s tokenizer extended by {record['added']:,} tokens (asked "
            f"{record['asked']:,}) learned from {record['corpus']['characters']:,} characters; new tokens hold "
            f"{html.escape(', '.join(record['rules']['scripts']) if isinstance(record['rules']['scripts'], list) else 'any')}"
            f" letters. {record['vocab_size']:,} tokens, embedding rows padded to {record['padded_vocab_size']:,}.</p>",
            _table(table_rows(of_run(run_dir)), TABLE_HEADER),
            _img(plots.bits_per_byte_curves(rows), "bits per byte")]


def data_sections(root: Path) -> list[str]:
    """What the data stages under `root` did: the funnel, the kept documents, a few dropped ones, the splits."""
    sections = data_funnel_sections(root)
    lengths, languages = kept_documents_profile(root / "20_dedup")
    sections += [_img(plots.histogram(lengths, "Document length after dedup", "characters"), "length histogram"),
                 _img(plots.bars(dict(languages), "Languages after dedup", "documents"), "language")]
    samples = dropped_samples(root / "10_filtered")
    if samples:
        sections.append("<h3>Dropped documents, a few per reason</h3>" + "".join(
            f"<h4>{html.escape(reason)}</h4>" + "".join(f"<pre>{html.escape(t)}</pre>" for t in texts)
            for reason, texts in samples.items()))
    shards = read_manifest(root / "30_shards")
    if shards:
        c = shards["counts"]
        sections.append(_table([(s, c[f"{s}_n_docs"], c[f"{s}_n_tokens"]) for s in ("train", "val")],
                               ("split", "documents", "tokens")))
    return sections


def mixture_sections(plan_path: Path) -> list[str]:
    """The curriculum as solved before training: each stage's start and weights, each dataset's tokens."""
    if not plan_path.is_file():
        return []
    plan = json.loads(plan_path.read_text())
    names = plan["datasets"]
    stages = [(f"stage {i}", s["start_step"], s.get("seq_len", plan["seq_len"]),
               *(f"{s['weights'][n]:.0%}" for n in names)) for i, s in enumerate(plan["stages"])]
    totals = [(n, plan["tokens"][n], round(plan["epochs"][n], 3)) for n in names]
    return ["<h2>Data mixture</h2>", _table(stages, ("stage", "from step", "seq_len", *names)),
            _table(totals, ("dataset", "tokens trained on", "epochs"))]


def plan_sections(folder: Path) -> list[str]:
    """tokenmill plan: the proxies' points and fitted laws, the frontier of domain gain against forgetting,
    the recommendation, and (after `run --plan`) the prediction beside the measurement."""
    path = folder / "plan.json"
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    rec = result["recommendation"]
    if result.get("mode") == "sizes":
        from tokenmill.plan.ladder import format_ladder
        rows = [(p["size"], p["params"], p["steps"], p[result["objective"]]) for p in result["points"]]
        return ["<h2>Plan: a ladder of sizes</h2>", *(f"<p>{html.escape(line)}</p>" for line in format_ladder(result)),
                _table(rows, ("size", "parameters", "steps", f"{result['objective']} bits/byte"))]
    sections = ["<h2>Plan</h2>", f"<p>{len(result['points'])} proxy points over shares of "
                f"{html.escape(result['varied'])}; proxies cost {result['compute']['fraction']:.2f}x the target's "
                "training steps. Curves: the fitted law at each proxy budget and at the target (solid).</p>",
                _img(plots.plan_curves(result), "plan laws"), _img(plots.plan_frontier(result), "plan frontier")]
    if rec["share"] is None:
        reasons = rec.get("poor_fit", []) + ([rec["infeasible"]] if rec.get("infeasible") else [])
        sections.append("<p><strong>No recommendation:</strong> " + html.escape("; ".join(reasons)) + "</p>")
        return sections
    checked = json.loads((folder / "check.json").read_text()) if (folder / "check.json").is_file() else {}
    rows = [(name, result["base"].get(name, ""), _ci(p["bits_per_byte"], p["ci"]),
             checked.get(name, {}).get("measured", ""),
             f"{checked[name]['error_relative']:+.1%}" if name in checked else "")
            for name, p in rec["prediction"].items()]
    doubt = (f" The {html.escape(result.get('objective', ''))} prediction is not reliable: "
             + html.escape("; ".join(rec["objective_unreliable"])) + ".") if rec.get("objective_unreliable") else ""
    sections.append(f"<p>Recommended share of {html.escape(result['varied'])}: <strong>{rec['share']:.2f}</strong>."
                    f"{doubt}</p>" + _table(rows, ("set", "start", "predicted at the target [95% CI]", "measured",
                                                   "error")))
    return sections


def merge_sections(path: Path) -> list[str]:
    """tokenmill merge: every candidate weight on the evaluation sets, and the curve of gain against forgetting."""
    if not path.is_file():
        return []
    from tokenmill.merge.choose import table_rows
    record = json.loads(path.read_text())
    header, rows = table_rows(record)
    return [f"<h2>Merge: {html.escape(record['method'])}</h2>", _table(rows, header),
            _img(plots.merge_curve(record), "merge candidates")]


def estimate_sections(estimate_path: Path, rows: list[dict]) -> list[str]:
    """What `tokenmill estimate` predicted before the run, beside what the run measured."""
    if not estimate_path.is_file():
        return []
    e = json.loads(estimate_path.read_text())
    speeds = sorted(r["perf/tokens_per_s"] for r in rows if "perf/tokens_per_s" in r)
    memory = [r["mem/peak_gib"] for r in rows if "mem/peak_gib" in r]
    measured_step = e["tokens_per_step"] / speeds[len(speeds) // 2] if speeds else None
    table = [("peak memory (GiB)", e["memory_gib_per_device"], max(memory) if memory else ""),
             ("step time (s)", e["step_time_s"], measured_step or ""),
             ("FLOPs per token", e["flops_per_token"], ""), ("parameters", e["params"], "")]
    return ["<h3>Estimate vs measured</h3>", _table(table, ("", "estimated before the run", "measured"))]


def stage_duration_sections(run_dir: Path, dataset_roots: list[Path]) -> list[str]:
    """Each stage's duration: every dataset's data stages first, then the run's own stages."""
    rows = []
    for root in [*dataset_roots, run_dir]:
        prefix = "" if root == run_dir else f"{root.name}/"
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name[:2].isdigit()):
            m = read_manifest(folder)
            if m:
                rows.append((prefix + folder.name, m["duration_s"], m["started_at"]))
    return ["<h2>Stage durations</h2>", _table(rows, ("stage", "seconds", "started (UTC)"))] if rows else []


def render(run_dir: Path) -> str:
    rows = read_metrics(run_dir)
    evals_path = run_dir / "50_eval" / "results.json"
    evals = json.loads(evals_path.read_text()) if evals_path.is_file() else None
    dataset_roots = sorted(p for p in (run_dir / "datasets").iterdir() if p.is_dir()) \
        if (run_dir / "datasets").is_dir() else []
    val_meta = (dataset_roots[0] if dataset_roots else run_dir) / "30_shards" / "val" / "meta.json"
    unigram = json.loads(val_meta.read_text()).get("unigram_entropy_nats") if val_meta.is_file() else None
    sections = [f"<h1>tokenmill run: {html.escape(run_dir.name)}</h1>", "<h2>Training</h2>",
                _img(plots.loss_curves(rows, unigram), "loss"), _img(plots.learning_rate(rows), "learning rate"),
                _img(plots.metric_over_steps(rows, "perf/tokens_per_s", "Throughput", "tokens/s"), "throughput"),
                _img(plots.metric_over_steps(rows, "perf/mfu", "Model FLOPs utilisation", "MFU"), "MFU"),
                _img(plots.metric_over_steps(rows, "mem/peak_gib", "Peak memory", "GiB"), "memory")]
    sections += vocabulary_sections(run_dir, rows)
    sections += estimate_sections(run_dir / "estimate.json", rows)
    if evals:
        sections += evaluation_sections(evals, bool(of_run(run_dir)))
    sample = run_dir / "sample.txt"
    if sample.is_file():
        sections.append(f"<h2>Sample</h2><pre>{html.escape(sample.read_text())}</pre>")
    sections += merge_sections(run_dir / "41_merge" / "merge.json")
    sections += plan_sections(run_dir / "plan")
    sections += mixture_sections(run_dir / "40_checkpoints" / "plan.json")
    if dataset_roots:
        for root in dataset_roots:
            sections += [f"<h2>Dataset {html.escape(root.name)}</h2>", *data_sections(root)]
    else:
        sections += data_sections(run_dir)
    sections += stage_duration_sections(run_dir, dataset_roots)
    config = run_dir / "config.resolved.yaml"
    if config.is_file():
        sections.append(f"<h2>Resolved config</h2><pre>{html.escape(config.read_text())}</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;color:#222}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
             "text-align:right}img{max-width:100%}pre{white-space:pre-wrap;background:#f4f4f4;padding:.5rem}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>tokenmill report</title>" \
           f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"


def run(run_dir: Path, out_path: Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out_path = out_path or run_dir / "report.html"
    atomic_write_text(out_path, render(run_dir))
    return out_path
