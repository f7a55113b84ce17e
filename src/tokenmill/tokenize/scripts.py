"""Which scripts a piece of byte-level text implies: the rule that keeps a vocabulary extension away from
text it was not learned for.

A new merge changes only the words whose base segmentation holds its pair, so only text that holds the pair's
bytes. If every UTF-8 text holding those bytes must hold a character of the target's scripts, then text
without such characters keeps exactly the base's tokens, by construction. Two kinds of bytes imply a script:

  - a whole letter (or mark) of it: `и`, `조`, `ก`;
  - the start of a character every completion of which belongs to it. Korean shows why this matters: the
    base spells most Hangul syllables as three single-byte tokens, so a syllable can only become one token
    through a first merge of two bytes, `ê°` (EA B0), which is not yet a letter. Every character that starts
    with EA B0 is a Hangul syllable (U+AC00..U+AC3F), so the merge is safe. A lone lead byte such as EA
    (U+A000..U+AFFF: Yi, Vai, Hangul, ...) implies nothing, nor do continuation bytes at a token's start,
    which any lead byte may precede.

"Belongs to a script" goes by the first word of the character's Unicode name (HANGUL SYLLABLE GA, THAI
CHARACTER KO KAI, CYRILLIC SMALL LETTER A, CJK UNIFIED IDEOGRAPH-4E00). Unassigned code points are no
script's; a completion that is unassigned does not count against a start (text that holds unassigned code
points is not text any tokenizer was trained for).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import cache, lru_cache
from itertools import product

CONTINUATION = range(0x80, 0xC0)


def script_of(ch: str) -> str | None:
    """A non-ASCII letter's (or mark's: Devanagari vowel signs) script, as the first word of its name."""
    if ch.isascii() or unicodedata.category(ch)[0] not in "LM":
        return None
    return _name_script(ch)


def _name_script(ch: str) -> str:
    return unicodedata.name(ch, "UNKNOWN").split(" ")[0].split("-")[0]


def implied_scripts(raw: bytes) -> set[str]:
    """The scripts any UTF-8 text holding `raw` must hold a character of: those of its whole letters, and the
    one script every completion of its last, cut-off character belongs to (if there is one)."""
    scripts, i = set(), 0
    while i < len(raw):
        length = _sequence_length(raw[i])
        if length == 0:  # ASCII, or a continuation byte whose lead is not in `raw`
            i += 1
            continue
        seq = raw[i:i + length]
        if not all(b in CONTINUATION for b in seq[1:]):  # a broken sequence: its lead implies nothing
            i += 1
            continue
        if len(seq) < length:
            script = start_script(bytes(seq))
        else:
            try:
                script = script_of(seq.decode("utf-8"))
            except UnicodeDecodeError:  # an overlong form or a surrogate: no character
                script = None
        if script:
            scripts.add(script)
        i += len(seq)
    return scripts


def _sequence_length(lead: int) -> int:
    """Bytes in the UTF-8 sequence a lead byte starts (0 for ASCII and continuation bytes)."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


@cache
def start_script(start: bytes) -> str | None:
    """The script of every assigned character whose UTF-8 form begins with `start` (a lead byte and fewer
    continuation bytes than it needs), or None if they span more than one script (or none is assigned)."""
    missing = _sequence_length(start[0]) - len(start) if start else 0
    if missing <= 0 or not all(b in CONTINUATION for b in start[1:]):
        return None  # not the start of a character
    found = None
    for rest in product(CONTINUATION, repeat=missing):
        try:
            ch = (start + bytes(rest)).decode("utf-8")
        except UnicodeDecodeError:  # overlong forms and surrogates
            continue
        if unicodedata.category(ch) == "Cn":
            continue
        script = _name_script(ch)
        if found not in (None, script):
            return None
        found = script
    return found


@lru_cache(maxsize=1)
def known_scripts() -> frozenset[str]:
    """Every script name a letter or mark of this Python's Unicode database carries (planes 0 and 1: the
    higher planes hold CJK ideographs only, a script the first plane has too)."""
    return frozenset(filter(None, (script_of(chr(c)) for c in range(0x80, 0x20000))))


def corpus_scripts(letters_by_text: Counter, share: float = 0.05) -> list[str]:
    """The scripts of at least `share` of the non-ASCII letters in {text: count}."""
    letters: Counter = Counter()
    for text, n in letters_by_text.items():
        for script in map(script_of, text):
            if script:
                letters[script] += n
    total = sum(letters.values())
    return sorted(s for s, n in letters.items() if n >= share * total)
