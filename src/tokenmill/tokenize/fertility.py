"""Fertility: how many tokens a tokenizer spends on a text, per byte, per character and per word.

Tokens per byte compares across scripts and tokenizers; tokens per whitespace word is the classic fertility
(Rust et al. 2021) but means nothing for scripts written without spaces, so it is left out there. The text is
counted twice more, split by pre-token into pure-ASCII spans (commands, code, English names: what a
vocabulary extension for another script should leave alone) and the rest (the language's own script).
"""

from __future__ import annotations

from typing import Iterable

# More characters than this per whitespace word, and the script has no spaces between words (CJK, Thai).
MAX_CHARS_PER_WORD = 20


def fertility(tokenizer, texts: Iterable[str], max_chars: int = 2_000_000) -> dict:
    """{all, own_script, ascii}: each {tokens, bytes, characters, tokens_per_byte, tokens_per_char} and, for
    all, tokens_per_word (None where the script has no spaces)."""
    backend = tokenizer.backend_tokenizer
    parts = {"own_script": [0, 0, 0], "ascii": [0, 0, 0]}  # tokens, bytes, characters
    words = chars = 0
    for text in texts:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        for piece, (start, end) in backend.pre_tokenizer.pre_tokenize_str(text):
            span = text[start:end]
            raw = span.encode("utf-8")
            counts = parts["ascii" if raw.isascii() else "own_script"]
            counts[0] += len(backend.model.tokenize(piece))
            counts[1] += len(raw)
            counts[2] += len(span)
        words += len(text.split())
        chars += len(text)
        if chars >= max_chars:
            break
    tokens, n_bytes, n_chars = (sum(c[i] for c in parts.values()) for i in range(3))
    result = {"all": _rates(tokens, n_bytes, n_chars), **{k: _rates(*v) for k, v in parts.items()}}
    result["all"]["words"] = words
    result["all"]["tokens_per_word"] = tokens / words if words and n_chars / words <= MAX_CHARS_PER_WORD else None
    return result


def _rates(tokens: int, n_bytes: int, n_chars: int) -> dict:
    return {"tokens": tokens, "bytes": n_bytes, "characters": n_chars,
            "tokens_per_byte": tokens / n_bytes if n_bytes else None,
            "tokens_per_char": tokens / n_chars if n_chars else None}


def compare(base: dict, extended: dict) -> dict:
    """Extended / base tokens per byte, for all text and for each part."""
    return {part: (extended[part]["tokens_per_byte"] / base[part]["tokens_per_byte"]
                   if base[part]["tokens_per_byte"] else None) for part in ("all", "own_script", "ascii")}


def changed_share(base, extended, texts: Iterable[str]) -> float:
    """The share of the base's tokens that the extended tokenizer changes on `texts` (0 means the same ids)."""
    import difflib
    changed = total = 0
    for text in texts:
        a = base.backend_tokenizer.encode(text, add_special_tokens=False).ids
        b = extended.backend_tokenizer.encode(text, add_special_tokens=False).ids
        total += len(a)
        if a != b:
            same = sum(block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
            changed += len(a) - same
    return changed / total if total else 0.0


def of_run(run_dir) -> dict[str, dict]:
    """{dataset: fertility} from a run's tokenize manifests (each named dataset's, or the run's own), for the
    datasets tokenized with an extended tokenizer."""
    import json
    from pathlib import Path
    run_dir = Path(run_dir)
    roots = sorted(p for p in (run_dir / "datasets").iterdir() if p.is_dir()) if (run_dir / "datasets").is_dir() \
        else [run_dir]
    found = {}
    for root in roots:
        manifest = root / "30_shards" / "manifest.json"
        counts = json.loads(manifest.read_text())["counts"] if manifest.is_file() else {}
        if counts.get("fertility"):
            found[root.name if root != run_dir else "all"] = counts["fertility"]
    return found


TABLE_HEADER = ("dataset", "text", "tokens/byte base", "tokens/byte extended", "ratio", "tokens/char base",
                "tokens/char extended", "tokens/word base", "tokens/word extended")


def table_rows(by_dataset: dict[str, dict]) -> list[tuple]:
    """One row per dataset and part of its text (all, own script, ASCII spans), base beside extended."""
    rows = []
    for name, f in by_dataset.items():
        for part, label in (("all", "all"), ("own_script", "own script"), ("ascii", "ASCII spans")):
            b, e = f["base"][part], f["extended"][part]
            if not b["bytes"]:
                continue
            rows.append((name, label, _round(b["tokens_per_byte"]), _round(e["tokens_per_byte"]),
                         _round(f["ratio"][part]), _round(b["tokens_per_char"]), _round(e["tokens_per_char"]),
                         _round(b.get("tokens_per_word")), _round(e.get("tokens_per_word"))))
    return rows


def _round(value):
    return "" if value is None else round(value, 4)
