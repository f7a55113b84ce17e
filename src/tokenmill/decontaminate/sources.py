"""The evaluation text to decontaminate against, as (set name, documents) from what the run evaluates on:
named sets (raw text, or token shards decoded with the tokenizer beside them), multiple-choice, cloze and
passkey tasks (each question with its answer: the passage a model could have memorised), and lm-eval tasks
whose documents are on this machine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger(__name__)


def set_texts(path: Path) -> Iterator[str]:
    """The documents of an evaluation set: token shards (their val/ split) decoded, or raw text ingested."""
    path = Path(path)
    if (path / "meta.json").is_file() or (path / "val" / "meta.json").is_file():  # shards: their val/ split
        split = path / "val" if (path / "val" / "meta.json").is_file() else path
        tokenizer_dir = split.parent / "tokenizer"
        if not (tokenizer_dir / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"{path}: token shards without their tokenizer beside them (../tokenizer) "
                                    "cannot be read as text; give the raw text of this evaluation set")
        from transformers import AutoTokenizer

        from tokenmill.decontaminate.check import decoded
        yield from decoded(split, AutoTokenizer.from_pretrained(tokenizer_dir))
        return
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such evaluation set to decontaminate against")
    from tokenmill.ingest import IngestConfig, iter_documents
    yield from (doc.text for doc in iter_documents(IngestConfig(paths=[str(path)])))


def task_texts(path: Path) -> Iterator[str]:
    """Each question's context followed by its right answer (the form it would take in a web page)."""
    from tokenmill.evaluation.choice import load_task
    for q in load_task(path):
        yield f"{q.context} {q.choices[q.answer]}"


def lm_eval_texts(tasks: list[str], include: str | None) -> dict[str, Iterable[str]]:
    """Each lm-eval task's evaluation documents (query and gold target) where its data is on this machine;
    a task whose data is not here is named in a warning and left out (this machine has no network)."""
    import os
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise RuntimeError("decontaminating against lm-eval tasks needs lm-evaluation-harness: "
                           "pip install 'tokenmill[lm-eval]'") from e
    manager = TaskManager(include_path=include)
    out = {}
    for name in tasks:
        try:
            task = manager.load(name)["tasks"][name]
            docs = list(task.eval_docs)
        except Exception as e:  # noqa: BLE001 (lm-eval raises many kinds when data is missing)
            log.warning("lm-eval task %s: its documents are not available here (%s); not decontaminated against",
                        name, e)
            continue
        out[name] = [f"{task.doc_to_text(d)} {_target(task, d)}" for d in docs]
    return out


def _target(task, doc) -> str:
    target = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    if choices is not None and isinstance(target, int):
        return str(choices[target])
    return str(target[0] if isinstance(target, list) and target else target)
