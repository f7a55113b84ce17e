"""Text → normalised tokens → n-gram hashes, the same way for evaluation text and for training text.

Normalisation: Unicode NFKC and case folding per token; punctuation, symbols and whitespace are not tokens.
Scripts written with spaces give words; scripts written without (Han, kana, Thai, Lao, Khmer, Myanmar) give
one token per character, because a word n-gram finds nothing in a Japanese sentence. The two kinds make two
streams: word n-grams of `n_words` words and character n-grams of `n_chars` characters (a 13-word English
passage is ~70 characters; 40 Japanese characters are about as specific).

Hashes are xxh64 of each normalised token, combined into n-gram hashes with numpy (a polynomial over the
window, wrapping at 2^64), so the per-token Python work is one regex match and, for a token not seen
before, one normalisation.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import xxhash

# Scripts written without spaces between words: a character is a token.
NO_SPACE = ("\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
            "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f")
TOKEN = re.compile(f"([{NO_SPACE}])|([^\\W{NO_SPACE}]+)")  # a character, or a word
_IS_CHAR = re.compile(f"[{NO_SPACE}]")
_WORD = re.compile(f"[^\\W{NO_SPACE}]+")  # TOKEN's second group: all of its matches in a text without _IS_CHAR
CHAR_SALT = np.uint64(0x9E3779B97F4A7C15)  # character n-grams live apart from word n-grams
_BASE = np.uint64(0x100000001B3)
_CACHE_LIMIT = 1 << 20


@dataclass
class Tokens:
    """A text's word and character streams: token hashes, and (when asked) each token's [start, end) in the text."""
    words: np.ndarray
    chars: np.ndarray
    word_spans: np.ndarray | None = None  # [n, 2] character offsets
    char_spans: np.ndarray | None = None


class Tokenizer:
    """Normalised token hashes, memoised per distinct token (a corpus repeats its vocabulary)."""

    def __init__(self):
        self._hash: dict[str, int] = {}

    def _of(self, token: str) -> int:
        h = self._hash.get(token)
        if h is None:
            if len(self._hash) > _CACHE_LIMIT:
                self._hash.clear()
            h = self._hash[token] = xxhash.xxh64_intdigest(unicodedata.normalize("NFKC", token).casefold())
        return h

    def _hashes(self, tokens: list[str]) -> np.ndarray:
        """The hashes of `tokens`, looked up in C (map over the dict), the tokens not seen before added after."""
        try:  # every token seen before: straight into the array, no list in between
            return np.fromiter(map(self._hash.__getitem__, tokens), dtype=np.uint64, count=len(tokens))
        except KeyError:
            return np.array([self._hash.get(token) or self._of(token) for token in tokens], dtype=np.uint64)

    def tokens(self, text: str, spans: bool = False) -> Tokens:
        if not spans and _IS_CHAR.search(text) is None:  # no character-token script: words only, no loop
            return Tokens(self._hashes(_WORD.findall(text)), np.array([], dtype=np.uint64))
        if not spans:
            words, chars = [], []
            for char, word in TOKEN.findall(text):
                if char:
                    chars.append(self._of(char))
                else:
                    words.append(self._of(word))
            return Tokens(np.array(words, dtype=np.uint64), np.array(chars, dtype=np.uint64))
        words, chars, word_spans, char_spans = [], [], [], []
        for m in TOKEN.finditer(text):
            if m.group(1):
                chars.append(self._of(m.group(1)))
                char_spans.append(m.span())
            else:
                words.append(self._of(m.group()))
                word_spans.append(m.span())
        return Tokens(np.array(words, dtype=np.uint64), np.array(chars, dtype=np.uint64),
                      np.array(word_spans, dtype=np.int64).reshape(-1, 2),
                      np.array(char_spans, dtype=np.int64).reshape(-1, 2))


def ngram_hashes(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """The hash of every window of n consecutive tokens (none when there are fewer than n)."""
    count = len(token_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    out = token_hashes[:count].copy()
    for k in range(1, n):
        out *= _BASE
        out ^= token_hashes[k:k + count]
    return out


def has_no_space_script(text: str) -> bool:
    return bool(_IS_CHAR.search(text))
