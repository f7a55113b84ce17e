"""Passkey retrieval: a number hidden at a given depth of filler text of a given length (in the model's
tokens), asked for at the end (Mohtashami & Jaggi 2023, "Landmark Attention"; the check of long-context
papers). Written as a zero-shot multiple-choice task with `length` and `depth` on every question, so
`tokenmill eval --tasks` reports accuracy by length and by depth.

    tokenmill make-passkey -o passkey.jsonl --tokenizer runs/x --lengths 256 512 1024 --depths 0 0.5 1
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import Field

from tokenmill.atomic import atomic_write_text
from tokenmill.schema import StrictModel

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about it.\n")
FILLER = ["The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ", "There and back again. "]
QUESTION = "\nWhat is the pass key? The pass key is"


class PasskeyConfig(StrictModel):
    lengths: list[int] = Field(default_factory=lambda: [256, 512, 1024], description="context lengths (tokens)")
    depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
                                description="where the key sits in the filler: 0 the start, 1 the end")
    per_cell: int = Field(10, gt=0, description="questions per (length, depth)")
    choices: int = Field(4, ge=2, description="the key and this many minus one other 5-digit numbers")
    seed: int = 0


def tokens_per_sentence(tokenizer) -> float:
    return len(tokenizer.encode("".join(FILLER) * 8, add_special_tokens=False)) / (8 * len(FILLER))


def question(tokenizer, length: int, depth: float, key: int, others: list[int], per_sentence: float) -> dict:
    """One question whose context is `length` tokens, about, with the key after `depth` of the filler."""
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    fixed = len(tokenizer.encode(INTRO + needle + QUESTION, add_special_tokens=False))
    if length < fixed + 16:
        raise ValueError(f"--lengths {length}: the question alone is {fixed} tokens with this tokenizer; give "
                         f"lengths of {fixed + 16} tokens or more")
    sentences = [FILLER[i % len(FILLER)] for i in range(max(0, round((length - fixed) / per_sentence)))]
    before = round(len(sentences) * depth)
    context = INTRO + "".join(sentences[:before]) + needle + "".join(sentences[before:]) + QUESTION
    choices = [str(key)] + [str(n) for n in others]
    return {"context": context, "choices": choices, "answer": 0, "length": length, "depth": depth}


def make(cfg: PasskeyConfig, tokenizer) -> list[dict]:
    rng, per_sentence = random.Random(cfg.seed), tokens_per_sentence(tokenizer)
    rows = []
    for length in cfg.lengths:
        for depth in cfg.depths:
            for _ in range(cfg.per_cell):
                numbers = rng.sample(range(10_000, 100_000), cfg.choices)
                row = question(tokenizer, length, depth, numbers[0], numbers[1:], per_sentence)
                order = list(range(cfg.choices))
                rng.shuffle(order)  # the key is not always the first choice
                row["choices"] = [row["choices"][i] for i in order]
                row["answer"] = order.index(0)
                rows.append(row)
    return rows


def run(cfg: PasskeyConfig, tokenizer, out: Path) -> int:
    for depth in cfg.depths:
        if not 0 <= depth <= 1:
            raise ValueError(f"--depths: {depth} is not between 0 (the start) and 1 (the end)")
    rows = make(cfg, tokenizer)
    atomic_write_text(Path(out), "".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)
