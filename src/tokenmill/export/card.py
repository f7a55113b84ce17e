"""The model card (README.md with Hugging Face front matter) of an exported folder, written from the run:
where the data came from and what survived each stage, the tokens trained on, the evaluation before and
after, the resolved config, and how to load the model. Also the upload to the Hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tokenmill.report.tokens import DATA_FOLDERS
from tokenmill.tokenize.fertility import TABLE_HEADER, of_run, table_rows
from tokenmill.stage import read_manifest


def run_dir_of(source: Path) -> Path | None:
    """The run folder a run, its 40_checkpoints or one of its checkpoints belongs to."""
    for folder in (source, *Path(source).resolve().parents):
        if (folder / "config.resolved.yaml").is_file():
            return folder
    return None


def model_card(name: str, source: Path, license: str | None, gguf_files: list[str], n_params: int | None = None) -> str:
    """`n_params`: the exported model's parameters (a LoRA run trained a model with adapters on top)."""
    run = run_dir_of(source)
    config = yaml.safe_load((run / "config.resolved.yaml").read_text()) if run else {}
    base = (config.get("model") or {}).get("init_from")
    datasets = list(config.get("datasets") or {}) or (config.get("ingest") or {}).get("paths", [])
    front = {"library_name": "transformers", "pipeline_tag": "text-generation", "license": license or "other",
             "tags": ["tokenmill", "continued-pretraining" if base else "pretraining", *(["gguf"] if gguf_files else [])]}
    if base and str(base).startswith("hf://"):  # the Hub's base_model is a repo id; a local folder is named below
        front["base_model"] = str(base)[len("hf://"):].split("@")[0]
    if datasets:
        front["datasets"] = [str(d) for d in datasets]
    origin = converted_from(base) if base else None
    made = f", continued from `{base}`" + (f" (converted by tokenmill from `{origin}`)" if origin else "") + "." \
        if base else ", from scratch."
    body = [f"# {name}", "", "Trained with tokenmill" + made, ""]
    if n_params:
        body += [f"{n_params / 1e6:.1f}M parameters.", ""]
    if run:
        body += data_section(run) + tokenizer_section(run) + training_section(run) + merge_section(run) + \
            evaluation_section(run) + plan_section(run)
    body += usage_section(name, gguf_files)
    if config:
        body += ["## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body)


def converted_from(base: str) -> str | None:
    """The file a local base folder was converted from (tokenmill convert-gguf records it)."""
    manifest = read_manifest(Path(base)) if not str(base).startswith("hf://") and Path(base).is_dir() else None
    if manifest and manifest.get("stage") == "convert-gguf":
        return next(iter(manifest["inputs"]), None)
    return None


def data_section(run: Path) -> list[str]:
    roots = sorted((run / "datasets").iterdir()) if (run / "datasets").is_dir() else [run]
    rows = ["| dataset | stage | documents in | documents out |", "|---|---|---|---|"]
    for root in roots:
        for stage, folder in DATA_FOLDERS.items():
            m = read_manifest(root / folder)
            if m:
                c = m["counts"]
                rows.append(f"| {root.name if root != run else 'all'} | {stage} | {c.get('docs_in', c.get('docs_out', ''))} "
                            f"| {c.get('docs_out', '')} |")
    return ["## Data", "", *rows, ""] if len(rows) > 2 else []


def tokenizer_section(run: Path) -> list[str]:
    """Fertility of the base's tokenizer and of the extended one, per dataset (when it was extended)."""
    rows = table_rows(of_run(run))
    if not rows:
        return []
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return ["## Tokenizer", "", "The base's tokenizer, extended with merges learned from the new text "
            "(`tokenmill tokenizer extend`): tokens per byte, character and word, before and after.", "", *lines, ""]


def training_section(run: Path) -> list[str]:
    m = read_manifest(run / "40_checkpoints")
    if not m:
        return []
    c = m["counts"]
    lines = ["## Training", "", f"{c.get('steps', 0):,} optimizer steps, {c.get('tokens', 0):,} tokens, "
             f"{c.get('params', 0) / 1e6:.1f}M parameters trained (with any LoRA adapters); final training loss "
             f"{c.get('train_loss', 0):.4f}.", ""]
    if c.get("embeddings"):
        from tokenmill.model.embeddings import describe_transfer
        said = describe_transfer(c["embeddings"]).removeprefix("[embeddings] ")
        lines += [said[0].upper() + said[1:] + ".", ""]
    return lines


def merge_section(run: Path) -> list[str]:
    path = run / "41_merge" / "merge.json"
    if not path.is_file():
        return []
    from tokenmill.merge.choose import label, table_rows
    record = json.loads(path.read_text())
    header, rows = table_rows(record)
    chosen = label(record["method"], record["chosen"])
    lines = ["## Merge", "", f"After training, merged by `{record['method']}` at {chosen}, chosen among "
             "these candidates on the evaluation sets:", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]


def evaluation_section(run: Path) -> list[str]:
    path = run / "50_eval" / "results.json"
    if not path.is_file():
        return []
    results = json.loads(path.read_text())
    before = results.get("before", {}).get("sets", {})
    changed = bool(of_run(run))  # another tokenizer than the base's: only bits per byte compare
    metric = "bits_per_byte" if changed else "loss"
    changes = results.get("change", {})
    rows = [f"| set | {metric} before | {metric} after [95% CI] | change [paired 95% CI] | bits/byte after [95% CI] |",
            "|---|---|---|---|---|"]
    for set_name, after in results["sets"].items():
        b = before.get(set_name, {}).get(metric)
        change = changes.get("sets", {}).get(set_name, {}).get(metric)
        rows.append(f"| {set_name} | {'' if b is None else f'{b:.4f}'} | {_with_ci(after[metric], after.get(metric + '_ci'))} "
                    f"| {_change(change)} | {_with_ci(after['bits_per_byte'], after.get('bits_per_byte_ci'))} |")
    for task, r in results.get("tasks", {}).items():
        b = results.get("before", {}).get("tasks", {}).get(task, {}).get("acc")
        rows.append(f"| {task} (accuracy) | {'' if b is None else f'{b:.4f}'} | {_with_ci(r['acc'], r.get('acc_ci'))} "
                    f"| {_change(changes.get('tasks', {}).get(task, {}).get('acc'), False)} | |")
    return ["## Evaluation", "", "Before: the base model; after: this model, measured the same way. Intervals are 95% "
            "bootstraps over the set's documents (questions for accuracy); a change is paired (the same documents "
            "for both models), and one whose interval holds zero is within noise.", "", *rows, ""]


def _with_ci(value: float, ci: list[float] | None) -> str:
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{value:.4f}"


def _change(change: dict | None, lower_is_better: bool = True) -> str:
    if not change:
        return ""
    from tokenmill.evaluation.intervals import describe_change
    return describe_change(change, "", lower_is_better=lower_is_better)


def plan_section(run: Path) -> list[str]:
    """The mixture `tokenmill plan` chose, and what it predicted beside what was measured."""
    path, metrics = run / "plan" / "plan.json", run / "metrics.jsonl"
    if not path.is_file() or not metrics.is_file():
        return []
    from tokenmill.plan import check, measured
    planned, applied = json.loads(path.read_text()), run / "plan" / "applied.json"
    if planned["recommendation"]["share"] is None or not applied.is_file() or \
            json.loads(applied.read_text())["share"] != planned["recommendation"]["share"]:
        return []  # planned, but this model was not trained at the plan's share
    rows = ["| set | predicted [95% CI] | measured |", "|---|---|---|"]
    rows += [f"| {name} | {c['predicted']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}]"
             f"{'' if c.get('reliable', True) else ' (not reliable)'} | {c['measured']:.4f} |"
             for name, c in check(planned, measured(metrics)).items()]
    return ["## Mixture", "", f"The share of {planned['varied']} was chosen by `tokenmill plan` from "
            f"{len(planned['points'])} proxy points: {planned['recommendation']['share']:.2f}. Bits per byte at the end "
            "of training, on the proxies' evaluation windows:", "", *rows, ""]


def usage_section(name: str, gguf_files: list[str]) -> list[str]:
    lines = ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'model = AutoModelForCausalLM.from_pretrained("{name}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")', "```", ""]
    if gguf_files:
        lines += ["llama.cpp / Ollama:", "", "```bash", f"llama-cli -m {gguf_files[0]} -p 'Once upon a time'", "```", ""]
    return lines


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload the folder as a model repo; without a token or offline, say so and leave the folder as it is."""
    import os

    from huggingface_hub import HfApi, get_token
    ready = f"the folder is ready: upload it later with `huggingface-cli upload {repo_id} {folder}`"
    if os.environ.get("HF_HUB_OFFLINE"):
        raise RuntimeError(f"HF_HUB_OFFLINE is set, so nothing was uploaded to {repo_id}; {ready}")
    if not get_token():
        raise RuntimeError(f"no Hugging Face token (run `huggingface-cli login` or set HF_TOKEN), so nothing was "
                           f"uploaded to {repo_id}; {ready}")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model").commit_url
    except OSError as e:  # requests' connection errors are OSErrors: offline in all but name
        raise RuntimeError(f"could not reach the Hugging Face Hub ({e}); {ready}") from e
