"""Extend a base model's byte-level BPE tokenizer for a new language by continuing its BPE training.

    tokenmill tokenizer extend runs/smol --corpus handbook-ru/ --add 8000 -o tok-ru

The base's own normalizer and pre-tokenizer cut the corpus into words; each word starts as the base's
segmentation of it, and BPE training goes on from there: the most frequent adjacent pair becomes a new token,
again and again, and each merge is appended after the base's. Base tokens keep their ids and base merges
their ranks, so the base's merges always run first and a new merge only joins what the base left apart. The
new tokens are ordinary BPE tokens, not `added_tokens` (which are matched before pre-tokenization and can
split neighbouring words, transformers#1698); continuing BPE beats appending whole words by up to 9.6% in
bytes per token (Purason et al. 2025, arXiv 2512.03989).

A merge is accepted only when
  - its token is new (a base token reached by another pair would be a second path to an existing id);
  - its bytes imply a character of the target's scripts (`scripts: auto`, the default: the scripts of at
    least 5% of the corpus's non-ASCII letters, e.g. CYRILLIC, HANGUL, or HIRAGANA, KATAKANA and CJK): they
    hold a whole letter of one, or end in the start of a character every completion of which is one (see
    tokenize/scripts.py; this is how a Korean syllable that the base spells as three bytes becomes one token).
    A merge changes only the words whose base segmentation holds its pair, and so only text that holds those
    bytes: text without characters of those scripts (English, code, commands, punctuation such as — « »)
    keeps exactly the base's tokens. This holds by construction, for any such text, not only for the English
    sample we test on. Two weaker rules were measured first on the English handbook after learning 8,000
    Russian tokens: "any non-ASCII byte" changed 0.043% of its tokens (merges of "—" and "«"), "any
    non-ASCII letter" 0.034% (the French names Raphaël and Icônes, spelled in Latin in the Russian edition
    too). A Latin-script target's own accents are Latin letters, so English words with accents may change
    (measured by fertility.changed_share). A rule that could change ASCII text is refused;
  - its own text segments to it (so every new embedding row can be produced);
  - it occurs at least `min_frequency` times in the corpus.

The result is written as a HF tokenizer folder plus `extension.json`: for each new token its id and the
base tokens it replaces (which initialise its embedding row, see model/embeddings.py).
"""

from __future__ import annotations

import difflib
import heapq
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Literal

from pydantic import Field, field_validator

from tokenmill.schema import StrictModel
from tokenmill.tokenize.scripts import corpus_scripts, implied_scripts, known_scripts

EXTENSION = "extension.json"


# Languages people name where a script is asked for, for the error message.
LANGUAGE_SCRIPTS = {"KOREAN": ["HANGUL"], "JAPANESE": ["HIRAGANA", "KATAKANA", "CJK"], "CHINESE": ["CJK"],
                    "RUSSIAN": ["CYRILLIC"], "UKRAINIAN": ["CYRILLIC"], "HINDI": ["DEVANAGARI"],
                    "PERSIAN": ["ARABIC"], "FARSI": ["ARABIC"]}


class ExtendConfig(StrictModel):
    # 1,000: on 80 KB of Russian, 0.55x the base's tokens per byte where 1,871 gave 0.50x, with a smaller gap to
    # the base at step 0 (+0.50 vs +0.54 bits per byte, calibrated + distilled; docs/language.md's sweep).
    add: int = Field(1000, gt=0, description="new tokens to learn (at most; see allow_fewer)")
    datasets: list[str] | None = Field(None, description="pipeline: the named datasets whose text the new tokens "
                                                         "are learned from (default: all)")
    min_frequency: int = Field(2, ge=1, description="a new token must occur this often in the corpus")
    scripts: list[str] | Literal["auto"] = Field(
        "auto", description="Unicode scripts (the first word of a character's name: HANGUL, CYRILLIC, CJK, HIRAGANA, "
                            "THAI, GREEK, LATIN, ...) whose characters a new token must hold or start, so text "
                            "without them keeps the base's tokens; auto: those of >= 5% of the corpus's non-ASCII "
                            "letters")
    allow_fewer: bool = Field(False, description="go on when the corpus yields fewer than `add` tokens")
    pad_to_multiple_of: int = Field(64, ge=1, description="embedding rows are padded to a multiple of this "
                                                          "(rows the tokenizer never produces)")
    max_chars: int = Field(200_000_000, gt=0, description="characters of corpus read to learn from")


    @field_validator("scripts", mode="before")
    @classmethod
    def _known_scripts(cls, value):
        if value == "any":
            raise ValueError("scripts: any would let new merges change the tokens of English, code and commands "
                             "(ASCII text), which the base model reads as it was trained; name the scripts to extend "
                             "for (e.g. [HANGUL]) or leave `auto`")
        if isinstance(value, list):
            unknown = [name for name in value if str(name).upper() not in known_scripts()]
            if unknown:
                close = {n: LANGUAGE_SCRIPTS.get(str(n).upper()) or
                         difflib.get_close_matches(str(n).upper(), known_scripts(), n=3) for n in unknown}
                raise ValueError("unknown script " + "; ".join(
                    f"{n!r}" + (f" (did you mean {', '.join(c)}?)" if c else "") for n, c in close.items())
                    + ": a script is the first word of its characters' Unicode names (HANGUL, THAI, CYRILLIC, "
                      "CJK, HIRAGANA, ...)")
            return [str(name).upper() for name in value]
        return value


class CannotExtend(ValueError):
    """The tokenizer is not one whose merges can be continued."""


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char → byte (the inverse of `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTES = byte_decoder()


def token_bytes(token: str) -> bytes:
    return bytes(BYTES[ch] for ch in token)


def check_extensible(spec: dict, where: str) -> None:
    """Byte-level BPE only; SentencePiece (Metaspace + byte fallback) and Unigram are refused by name."""
    model = spec.get("model", {})
    kind = model.get("type")
    if kind != "BPE":
        raise CannotExtend(f"{where}: a {kind} tokenizer (SentencePiece Unigram, e.g. T5, ALBERT, XLNet); only "
                           "byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2, tokenmill's own) can be extended")
    if model.get("byte_fallback") or "Metaspace" in json.dumps(spec.get("pre_tokenizer")) \
            or "Replace" in json.dumps(spec.get("normalizer")):
        raise CannotExtend(f"{where}: a SentencePiece-style BPE (Metaspace, byte fallback: Llama 2, Mistral v0.1); "
                           "only byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2, tokenmill's own) can be extended")
    if "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise CannotExtend(f"{where}: a BPE without a ByteLevel pre-tokenizer; only byte-level BPE can be extended")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise CannotExtend(f"{where}: a BPE with word prefixes or suffixes; only byte-level BPE can be extended")


def word_counts(backend, texts: Iterable[str], max_chars: int) -> tuple[Counter, int]:
    """Pre-tokens of the corpus (the base's normalizer and pre-tokenizer) and how often each occurs."""
    counts, chars = Counter(), 0
    for text in texts:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        counts.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text))
        chars += len(text)
        if chars >= max_chars:
            break
    return counts, chars


class Merges:
    """BPE segmentation by merge rank (what `tokenizers` does inside one pre-token), for checking that a new
    token's own text reaches it."""

    def __init__(self, merges: list[tuple[str, str]]):
        self.rank = {pair: i for i, pair in enumerate(merges)}

    def add(self, pair: tuple[str, str]) -> None:
        self.rank[pair] = len(self.rank)

    def segment(self, word: str) -> list[str]:
        symbols = list(word)
        while len(symbols) > 1:
            ranked = [(self.rank.get(pair, len(self.rank)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
            best, i = min(ranked)
            if best == len(self.rank):
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols


def parse_merges(model: dict) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


def learn_merges(words: dict[str, list[str]], counts: dict[str, int], merges: Merges, vocab: dict[str, int],
                 cfg: ExtendConfig, scripts: set[str]) -> list[tuple[str, str, int]]:
    """Continue BPE from the base segmentations `words`: up to cfg.add new (left, right, count) merges.

    Pair counts are kept incrementally (each merge touches only the words that hold its pair); the most
    frequent pair comes from a heap with stale entries skipped; ties go to the smaller pair, so the result
    does not depend on the order of the corpus."""
    seqs = list(words.values())
    freq = [counts[w] for w in words]
    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_count[pair] += freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    learned, refused = [], set()
    while heap and len(learned) < cfg.add:
        neg, pair = heapq.heappop(heap)
        if -neg != pair_count.get(pair, 0) or pair in refused:
            continue  # stale: its count changed since it was pushed
        if -neg < cfg.min_frequency:
            break
        token = pair[0] + pair[1]
        if token in vocab or not implied_scripts(token_bytes(token)) & scripts \
                or not _reachable(merges, pair, token):
            refused.add(pair)
            continue
        merges.add(pair)
        vocab[token] = len(vocab)
        learned.append((*pair, -neg))
        for i in where.pop(pair, set()):
            _apply(seqs, i, freq[i], pair, token, pair_count, where, heap)
    return learned


def _reachable(merges: Merges, pair: tuple[str, str], token: str) -> bool:
    merges.add(pair)
    reached = merges.segment(token) == [token]
    del merges.rank[pair]
    return reached


def _apply(seqs, i, n, pair, token, pair_count, where, heap) -> None:
    """Merge `pair` in word i (left to right, as tokenizers does) and move its pair counts; only the pairs
    whose count changed go back on the heap."""
    old, new, j = seqs[i], [], 0
    while j < len(old):
        if j + 1 < len(old) and old[j] == pair[0] and old[j + 1] == pair[1]:
            new.append(token)
            j += 2
        else:
            new.append(old[j])
            j += 1
    if len(new) == len(old):
        return  # an index entry left from before an earlier merge changed this word
    seqs[i] = new
    delta: dict = {}
    for p in zip(old, old[1:]):
        delta[p] = delta.get(p, 0) - 1
    for p in zip(new, new[1:]):
        delta[p] = delta.get(p, 0) + 1
    for p, d in delta.items():
        if d:
            count = pair_count[p] = pair_count[p] + d * n
            if d > 0:
                where.setdefault(p, set()).add(i)
            if count > 0:
                heapq.heappush(heap, (-count, p))


def extend(base, base_name: str, texts: Iterable[str], cfg: ExtendConfig, out_dir: Path) -> dict:
    """Learn new merges for `base` (a HF fast tokenizer) from `texts` and save the extended tokenizer in
    out_dir (HF folder + extension.json); returns the record. Refuses before writing anything."""
    spec = json.loads(base.backend_tokenizer.to_str())
    check_extensible(spec, base_name)
    model = spec["model"]
    counts, chars = word_counts(base.backend_tokenizer, texts, cfg.max_chars)
    bpe = base.backend_tokenizer.model
    words = {w: [t.value for t in bpe.tokenize(w)] for w in counts}
    scripts = set(cfg.scripts) if cfg.scripts != "auto" else \
        set(corpus_scripts(Counter({token_bytes(w).decode("utf-8"): n for w, n in counts.items()})))
    learned = learn_merges(words, counts, Merges(parse_merges(model)), dict(model["vocab"]), cfg, scripts)
    if len(learned) < cfg.add and not cfg.allow_fewer:
        raise ValueError(f"the corpus ({chars:,} characters, {len(counts):,} distinct words) yields {len(learned):,} "
                         f"new tokens that occur at least {cfg.min_frequency} times"
                         f"{' and hold ' + ', '.join(sorted(scripts)) + ' letters (or their first bytes)' if scripts else ''}, not the "
                         f"{cfg.add:,} asked: ask for {len(learned):,} (extend.add / --add), give more text, or "
                         "allow fewer (extend.allow_fewer / --allow-fewer)")
    first_id = max([*model["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    new_tokens = []
    for k, (left, right, count) in enumerate(learned):
        pieces = bpe.tokenize(left + right)
        new_tokens.append({"id": first_id + k, "token": left + right, "count": count,
                           "base_ids": [t.id for t in pieces],
                           # the first piece occurs only in text of the target's scripts (not " ", "Ġ", "(")
                           "first_piece_in_script": bool(implied_scripts(token_bytes(pieces[0].value)) & scripts)})
    record = {"base": base_name, "base_vocab_size": len(base), "base_merges": len(model["merges"]),
              "vocab_size": len(base) + len(new_tokens), "asked": cfg.add, "added": len(new_tokens),
              "padded_vocab_size": -(-(first_id + len(new_tokens)) // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of,
              "rules": {"min_frequency": cfg.min_frequency,
                        "scripts": sorted(scripts)},
              "corpus": {"characters": chars, "distinct_words": len(counts)},
              "produced_base_ids": produced_ids(spec), "new_tokens": new_tokens}
    as_list = not model["merges"] or isinstance(model["merges"][0], list)
    model["vocab"] = {**model["vocab"], **{t["token"]: t["id"] for t in new_tokens}}
    model["merges"] = [*model["merges"], *([a, b] if as_list else f"{a} {b}" for a, b, _ in learned)]
    _write(base, spec, record, Path(out_dir))
    return record


def base_tokenizer(extended, record: dict):
    """The base tokenizer, rebuilt from the extended one by dropping the new tokens and merges (so fertility
    and evaluation can compare with it without the base's files)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    spec = json.loads(extended.backend_tokenizer.to_str())
    new = {t["id"] for t in record["new_tokens"]}
    spec["model"]["vocab"] = {tok: i for tok, i in spec["model"]["vocab"].items() if i not in new}
    spec["model"]["merges"] = spec["model"]["merges"][:record["base_merges"]]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   eos_token=extended.eos_token, clean_up_tokenization_spaces=False)


def produced_ids(spec: dict) -> list[int]:
    """Base ids that text can produce: the BPE vocabulary without special tokens (reserved tokens, such as
    Llama 3's, carry untrained rows and stay out of every mean)."""
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    return sorted(i for i in spec["model"]["vocab"].values() if i not in special)


def _write(base, spec: dict, record: dict, out_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    base.save_pretrained(out_dir)  # tokenizer_config, special tokens and chat template, as the base has them
    Tokenizer.from_str(json.dumps(spec)).save(str(out_dir / "tokenizer.json"))
    (out_dir / EXTENSION).write_text(json.dumps(record, ensure_ascii=False, indent=1))
    extended = AutoTokenizer.from_pretrained(out_dir)
    if len(extended) != record["vocab_size"]:
        raise RuntimeError(f"{out_dir}: the extended tokenizer has {len(extended)} tokens, expected "
                           f"{record['vocab_size']}")


def read_extension(tokenizer_dir: Path) -> dict | None:
    """The extension record of a tokenizer folder, or None for a tokenizer that was not extended."""
    path = Path(tokenizer_dir) / EXTENSION
    return json.loads(path.read_text()) if path.is_file() else None
