"""Zero-shot multiple choice, scored as lm-evaluation-harness scores it.

A task is a JSONL file, one question a line: {"context": ..., "choices": [...], "answer": INDEX}; any other
number or string field (a passkey's `length` and `depth`) is a tag, and accuracy is also given per value.
Each choice is scored by the log-likelihood of its tokens after the context, tokenized the way
lm-evaluation-harness 0.4 does (`TemplateLM._encode_pair`): the continuation is " " + choice; trailing
whitespace of the context moves into the continuation; context + continuation are encoded together (with
the tokenizer's default special tokens) and split at the length of the encoded context; an empty context
is the BOS (else EOS) token. `acc` picks the highest log-likelihood, `acc_norm` the highest per character
of the choice; each with lm-eval's standard error, sqrt(p(1-p)/(n-1)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenmill.evaluation import intervals

TARGET_DELIMITER = " "  # lm-eval's default `target_delimiter` between the context and a choice


@dataclass
class Question:
    context: str
    choices: list[str]
    answer: int
    tags: dict = field(default_factory=dict)


def load_task(path: Path) -> list[Question]:
    """Every question of a task file; a malformed line is an error naming the file and the line."""
    questions = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        questions.append(_question(row, where))
    if not questions:
        raise ValueError(f"{path}: no questions (one JSON object a line: context, choices, answer)")
    return questions


def _question(row, where: str) -> Question:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with context, choices and answer")
    missing = [k for k in ("context", "choices", "answer") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; a question is "
                         '{"context": str, "choices": [str, ...], "answer": index}')
    context, choices, answer = row["context"], row["choices"], row["answer"]
    if not isinstance(context, str):
        raise ValueError(f"{where}: context must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{where}: choices must be a list of at least two non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}: answer {answer!r} is not an index into its {len(choices)} choices "
                         f"(0..{len(choices) - 1})")
    tags = {k: v for k, v in row.items() if k not in ("context", "choices", "answer")
            and isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return Question(context, choices, answer, tags)


def task_files(paths: list[Path]) -> dict[str, Path]:
    """Task name (the file's stem) → file, for files and folders of *.jsonl."""
    files: dict[str, Path] = {}
    for path in map(Path, paths):
        found = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not path.exists() or not found:
            raise FileNotFoundError(f"{path}: no task file (a .jsonl of questions, or a folder of them)")
        for f in found:
            if f.stem in files:
                raise ValueError(f"{f}: a task named {f.stem!r} is given twice")
            files[f.stem] = f
    return files


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness makes them for a causal LM."""
    if context == "":
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(model, pairs: list[tuple[list[int], list[int]]], max_length: int, batch_size: int,
                   device, progress=None) -> list[float]:
    """Sum of log p(continuation token | everything before it) for each (context, continuation) pair.
    Inputs are (context + continuation)[:-1], cut from the left to `max_length`; longest first, padded on
    the right (a causal model's earlier positions never see the padding)."""
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    scores = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [(pairs[i][0] + pairs[i][1])[-(max_length + 1):][:-1] for i in idx]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
        logits = model(input_ids=ids.to(device)).logits
        for r, i in enumerate(idx):
            cont = pairs[i][1]
            end = len(rows[r])
            logprobs = torch.log_softmax(logits[r, end - len(cont):end].float(), dim=-1)
            scores[i] = logprobs.gather(1, torch.tensor(cont, device=logits.device)[:, None]).sum().item()
        if progress:
            progress(len(idx))
    return scores


def score_task(model, tokenizer, questions: list[Question], max_length: int, batch_size: int, device,
               progress=None) -> dict:
    """acc and acc_norm with standard errors and 95% intervals, each question's per-choice log-likelihoods,
    and whether each was answered right (the units of a paired before/after interval)."""
    pairs = [encode_pair(tokenizer, q.context, TARGET_DELIMITER + c) for q in questions for c in q.choices]
    if any(not cont for _, cont in pairs):
        raise ValueError("a choice encodes to no tokens after its context; check the task's choices")
    per_question = len(pairs) / max(len(questions), 1)
    advance = (lambda n: progress(n / per_question)) if progress else None  # noqa: E731
    flat = iter(loglikelihoods(model, pairs, max_length, batch_size, device, advance))
    lls = [[next(flat) for _ in q.choices] for q in questions]
    correct = np.array([int(np.argmax(ll)) == q.answer for q, ll in zip(questions, lls)], dtype=float)
    correct_norm = np.array([int(np.argmax(np.array(ll) / [len(c) for c in q.choices])) == q.answer
                             for q, ll in zip(questions, lls)], dtype=float)
    scores = {"acc": correct.mean(), "acc_stderr": stderr(correct), "acc_norm": correct_norm.mean(),
              "acc_norm_stderr": stderr(correct_norm), "n": len(questions), "loglikelihoods": lls,
              "acc_ci": intervals.interval(intervals.of_outcomes(correct)),
              "acc_norm_ci": intervals.interval(intervals.of_outcomes(correct_norm)),
              "correct": correct, "correct_norm": correct_norm}
    by_tag = accuracy_by_tag(questions, correct)
    if not by_tag:
        return scores
    return {**scores, "acc_by": {tag: {v: acc for v, (acc, _) in values.items()} for tag, values in by_tag.items()},
            "acc_by_ci": {tag: {v: ci for v, (_, ci) in values.items()} for tag, values in by_tag.items()}}


def accuracy_by_tag(questions: list[Question], correct: np.ndarray) -> dict:
    """{tag: {value: (acc, 95% interval)}} for every tag the questions carry (values in their first-seen order)."""
    by: dict = {}
    for q, ok in zip(questions, correct):
        for tag, value in q.tags.items():
            by.setdefault(tag, {}).setdefault(str(value), []).append(ok)
    return {tag: {value: (float(np.mean(oks)), intervals.interval(intervals.of_outcomes(np.array(oks))))
                  for value, oks in values.items()} for tag, values in by.items()}


def stderr(outcomes: np.ndarray) -> float:
    """lm-eval's `mean_stderr`: the sample standard deviation (n - 1) over sqrt(n)."""
    n = len(outcomes)
    return float(np.std(outcomes, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
