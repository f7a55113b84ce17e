"""Cloze tasks from the user's own text: a domain accuracy without labelling anything.

    tokenmill make-cloze runs/x/30_shards -o domain_cloze.jsonl --n 500
    tokenmill eval runs/x --tasks domain_cloze.jsonl

Each question takes a held-out document: the context is a passage of it, the right choice is the
sentence that really comes next, and the wrong choices are sentences of similar length from *other*
documents (never one that occurs anywhere in the question's own document). From shards, the documents are
the val/ split, decoded with the shards' tokenizer; from raw text, every document.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from tokenmill.atomic import atomic_write_text
from tokenmill.schema import StrictModel

# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])['\")\]]*\s+")


class ClozeConfig(StrictModel):
    n: int = Field(500, gt=0, description="questions to build (fewer when the text has too few sentences)")
    choices: int = Field(4, ge=2, description="choices per question, the right one included")
    context_chars: int = Field(600, gt=0, description="longest passage before the sentence to predict (characters)")
    min_context_sentences: int = Field(2, ge=1, description="sentences of the document before the one to predict")
    min_sentence_chars: int = Field(30, gt=0, description="shortest sentence used as a choice")
    max_sentence_chars: int = Field(300, gt=0, description="longest sentence used as a choice")
    length_tolerance: float = Field(0.25, gt=0, description="wrong choices are within this share of the right one's length")
    seed: int = 0


@dataclass
class Sentence:
    text: str
    start: int  # character offset in its document
    doc: int


def sentences(text: str, doc: int) -> list[Sentence]:
    out, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        out.append(Sentence(text[start:match.end()].strip(), start, doc))
        start = match.end()
    if text[start:].strip():
        out.append(Sentence(text[start:].strip(), start, doc))
    return [s for s in out if s.text]


def build(texts: list[str], cfg: ClozeConfig) -> list[dict]:
    rng = random.Random(cfg.seed)
    per_doc = [sentences(t, i) for i, t in enumerate(texts)]
    usable = [s for doc in per_doc for s in doc if cfg.min_sentence_chars <= len(s.text) <= cfg.max_sentence_chars]
    pool = sorted(usable, key=lambda s: len(s.text))
    lengths = [len(s.text) for s in pool]
    targets = [s for doc in per_doc for s in doc[cfg.min_context_sentences:]
               if cfg.min_sentence_chars <= len(s.text) <= cfg.max_sentence_chars]
    rng.shuffle(targets)
    questions = []
    for target in targets:
        if len(questions) == cfg.n:
            break
        wrong = _distractors(target, texts[target.doc], pool, lengths, cfg, rng)
        if wrong is None:
            continue
        context = texts[target.doc][:target.start].rstrip()
        context = _last_chars(context, cfg.context_chars)
        choices = [target.text, *wrong]
        rng.shuffle(choices)
        questions.append({"context": context, "choices": choices, "answer": choices.index(target.text),
                          "doc": target.doc})
    return questions


def _distractors(target: Sentence, own_text: str, pool: list[Sentence], lengths: list[int], cfg: ClozeConfig,
                 rng: random.Random) -> list[str] | None:
    """`choices - 1` distinct sentences of other documents with a length near the target's, none of which
    occurs in the target's own document; None when there are not enough."""
    low = bisect.bisect_left(lengths, len(target.text) * (1 - cfg.length_tolerance))
    high = bisect.bisect_right(lengths, len(target.text) * (1 + cfg.length_tolerance))
    candidates = sorted({s.text for s in pool[low:high] if s.doc != target.doc})  # sorted: the seed decides
    rng.shuffle(candidates)
    picked = []
    for text in candidates:  # checked lazily: documents can be long
        if text not in own_text:
            picked.append(text)
            if len(picked) == cfg.choices - 1:
                return picked
    return None


def _last_chars(text: str, limit: int) -> str:
    """The end of `text`, at most `limit` characters, starting at a sentence start where possible."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    cut = _SENTENCE_END.search(tail)
    return tail[cut.end():] if cut and cut.end() < len(tail) else tail


def read_texts(path: Path) -> list[str]:
    """Held-out documents: a shards folder's val/ split decoded with its tokenizer, or raw text."""
    from tokenmill.evaluation.sets import is_token_split, split_dir
    path = Path(path)
    if is_token_split(path):
        from transformers import AutoTokenizer
        from tokenmill.tokenize.shards import open_split
        split = split_dir(path)
        tokenizer_dir = split.parent / "tokenizer"
        if not (tokenizer_dir / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"{split}: no tokenizer/ beside the split to decode it with; give the raw text")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        return [tokenizer.decode(doc, skip_special_tokens=True) for shard in open_split(split) for doc in shard.documents()]
    from tokenmill.ingest import IngestConfig, iter_documents
    return [doc.text for doc in iter_documents(IngestConfig(paths=[str(path)]))]


def run(cfg: ClozeConfig, source: Path, out_file: Path) -> dict:
    texts = read_texts(source)
    questions = build(texts, cfg)
    if not questions:
        raise ValueError(f"{source}: no cloze question could be built ({len(texts)} documents); it needs documents "
                         f"of at least {cfg.min_context_sentences + 1} sentences of {cfg.min_sentence_chars}-"
                         f"{cfg.max_sentence_chars} characters, and at least {cfg.choices} documents")
    atomic_write_text(Path(out_file), "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions))
    return {"questions": len(questions), "documents": len(texts)}
