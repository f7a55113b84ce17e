"""lm-evaluation-harness on a tokenmill model, offline (optional: pip install 'tokenmill[lm-eval]').

    tokenmill eval runs/x --lm-eval hellaswag,arc_easy                 # tasks whose data is in the HF cache
    tokenmill eval runs/x --lm-eval my_task --lm-eval-include tasks/    # your own task YAMLs

The model object is handed to lm-eval's `HFLM` as it is (no re-loading); results land in results.json
under "lm_eval": {task: {metric: value}}.
"""

from __future__ import annotations

import os
from pathlib import Path


def run_lm_eval(model, tokenizer, tasks: list[str], include: Path | None, batch_size: int,
                limit: int | None = None) -> dict:
    # Before datasets is imported: it reads these once. Local task data must not wait on the network.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise RuntimeError("--lm-eval needs lm-evaluation-harness: pip install 'tokenmill[lm-eval]'") from e
    if include is not None and not Path(include).is_dir():
        raise FileNotFoundError(f"{include}: --lm-eval-include must be a folder of task YAMLs")
    manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval task(s) not found: {', '.join(unknown)} (a folder of YAMLs goes in "
                         "--lm-eval-include)")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=True)
    return {"results": {task: _numbers(metrics) for task, metrics in out["results"].items()},
            "samples": out.get("samples", {})}


def _numbers(metrics: dict) -> dict:
    """`acc,none` → `acc`; lm-eval's non-numeric entries (alias, sample counts as strings) are left out."""
    return {key.split(",")[0]: float(v) for key, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
