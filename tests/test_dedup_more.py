"""MinHash-LSH near-duplicates (datatrove), line-level dedup, and results independent of order and workers."""

import random

import pytest

from conftest import make_text
from tokenmill.dedup import DedupConfig, run
from tokenmill.dedup.minhash import candidate_probability
from tokenmill.documents import Document, read_documents, write_documents


def corpus(n=12, seed=0):
    rng = random.Random(seed)
    docs = [Document(f"doc{i:02d}", make_text(rng, 25)) for i in range(n)]
    base = docs[3].text.split()
    edited = base[:]
    for i in range(0, len(edited), 60):  # a light edit: one word in sixty changed
        edited[i] = "EDITED"
    docs.append(Document("near03", " ".join(edited)))
    docs.append(Document("redo05", docs[5].text.upper()))
    return docs


def kept_ids(tmp_path, docs, name, **cfg):
    write_documents(docs, tmp_path / f"in_{name}", docs_per_shard=4)
    counts = run(DedupConfig(**cfg), tmp_path / f"in_{name}", tmp_path / f"out_{name}")
    return {d.id for d in read_documents(tmp_path / f"out_{name}")}, counts


def test_minhash_removes_near_duplicates_and_exact_removes_copies(tmp_path):
    kept, counts = kept_ids(tmp_path, corpus(), "a", executor={"tasks": 2})
    assert "redo05" not in kept and "doc05" in kept  # exact: the smaller id stays
    assert len({"doc03", "near03"} & kept) == 1  # near-duplicates: one of the pair stays
    assert counts["drops"] == {"exact/duplicate": 1, "minhash/near_duplicate": 1}
    assert counts["docs_in"] == 14 and counts["docs_out"] == 12


def test_cluster_sizes_are_counted_per_method(tmp_path):
    docs = corpus()
    docs += [Document("again05", docs[5].text), Document("lower05", docs[5].text.lower())]  # exact group of 4
    near = docs[7].text.split()
    for n in range(2):  # a near-duplicate cluster of 3: doc07 and two light edits
        edited = near[:]
        for i in range(n, len(edited), 60):
            edited[i] = f"EDIT{n}"
        docs.append(Document(f"near07_{n}", " ".join(edited)))
    _, counts = kept_ids(tmp_path, docs, "clusters", executor={"tasks": 2})
    assert counts["cluster_sizes"] == {"exact": {"4": 1}, "minhash": {"2": 1, "3": 1}}
    assert counts["drops"] == {"exact/duplicate": 3, "minhash/near_duplicate": 3}


def test_results_do_not_depend_on_input_order_or_workers(tmp_path):
    docs = corpus()
    one, _ = kept_ids(tmp_path, docs, "one", executor={"tasks": 2, "workers": 1})
    two, _ = kept_ids(tmp_path, docs, "two", executor={"tasks": 2, "workers": 2})
    assert one == two
    exact_fwd, _ = kept_ids(tmp_path, docs, "fwd", minhash=None)
    exact_rev, _ = kept_ids(tmp_path, list(reversed(docs)), "rev", minhash=None)
    assert exact_fwd == exact_rev and "doc05" in exact_rev


def test_line_dedup_removes_boilerplate_repeated_across_documents(tmp_path):
    nav = "Home | About us | Contact | Privacy policy"
    docs = [Document(f"p{i}", f"{nav}\nThe real text of page number {i} talks about castles and kings.\n{nav}\n")
            for i in range(4)]
    docs.append(Document("only_nav", f"{nav}\nshort\n"))
    kept, counts = kept_ids(tmp_path, docs, "lines", exact=False, minhash=None, lines={"min_docs": 3, "min_doc_chars": 20})
    out = {d.id: d.text for d in read_documents(tmp_path / "out_lines")}
    assert nav not in "".join(out.values()) and "page number 2" in out["p2"]
    assert "only_nav" not in kept and counts["drops"] == {"lines/too_short_after_line_dedup": 1}
    assert counts["lines_removed"] == 9


def test_lsh_candidate_probability_is_the_s_curve():
    assert candidate_probability(0.75, 14, 8) == pytest.approx(0.772, abs=0.001)
    assert candidate_probability(0.6846977, 14, 8) == pytest.approx(0.5, abs=1e-4)  # the threshold
    assert candidate_probability(0.5, 14, 8) < 0.06 < 0.99 < candidate_probability(0.9, 14, 8)


def test_sentence_dedup_removes_a_repeated_three_sentence_span_and_counts_it(tmp_path):
    """C4's rule: the second copy of a 3-sentence span loses it; a document left too short is dropped."""
    rng = random.Random(1)
    shared = "The tide came in at noon. The boats were pulled ashore by the men. Nobody spoke of the storm again. "
    long_a, long_b = make_text(rng, 12).replace("\n", " "), make_text(rng, 12).replace("\n", " ")
    docs = [Document("a", shared + long_a), Document("b", long_b + " " + shared),
            Document("c", shared + "Too short now.")]
    write_documents(docs, tmp_path / "in")
    config = DedupConfig(exact=False, minhash=None, sentences={"min_doc_words": 20})
    counts = run(config, tmp_path / "in", tmp_path / "out")
    kept = {d.id: d.text for d in read_documents(tmp_path / "out")}
    assert kept["a"] == docs[0].text  # the first occurrence stays
    assert "The tide came in at noon" not in kept["b"] and long_b.strip()[:40] in kept["b"]
    assert "c" not in kept and counts["drops"] == {"sentences/too_short_after_sentence_dedup": 1}
    assert counts["sentences_removed"] >= 3
