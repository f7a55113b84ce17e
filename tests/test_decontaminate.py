"""Decontamination (tokenmill/decontaminate/): what overlaps the evaluation text leaves the training data,
common text stays, every removal is counted and kept aside, bad evaluation sets are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenmill.decontaminate import DecontaminateConfig, DecontaminationTooBroad
from tokenmill.decontaminate import run as decontaminate
from tokenmill.decontaminate.ngrams import Tokenizer, ngram_hashes
from tokenmill.dedup import DedupConfig
from tokenmill.dedup import run as dedup
from tokenmill.documents import Document, read_documents, write_documents

EVAL = ("The old lighthouse keeper counted forty seven ships passing the northern cape during the winter storms "
        "of that year, and wrote each name in a leather book that is now kept at the harbour museum.")
OTHER = ("Farmers in the valley rotate barley and clover every second season so that the soil keeps its nitrogen, "
         "a practice their grandparents learned from travelling monks long ago.")
BOILERPLATE = "Copyright the authors. Permission is granted to copy distribute and modify this document under the terms"
JA_EVAL = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"


def filler(i: int) -> str:
    return f"Document {i} talks about bridges, rivers and the weather in town number {i}. " * 6


def test_normalisation_ignores_case_width_and_punctuation_and_cjk_is_split_into_characters():
    tok = Tokenizer()
    a, b = tok.tokens("Hello, WORLD!  Ｆｕｌｌ width"), tok.tokens("hello world full-width")
    assert a.words.tolist() == b.words.tolist()
    ja = tok.tokens("猫である。English words")
    assert len(ja.chars) == 4 and len(ja.words) == 2  # 猫 で あ る; the 。 is punctuation
    assert len(ngram_hashes(np.arange(20, dtype=np.uint64), 13)) == 8 and len(ngram_hashes(ja.chars, 13)) == 0
    warm = Tokenizer()
    for text in (EVAL, "Straße — naïve café, ＦＵＬＬ width. Ünïcödé x2 y_3", ""):  # words only: the loop-free path
        fast, looped = Tokenizer().tokens(text), Tokenizer().tokens(text, spans=True)  # spans: the per-token loop
        assert fast.words.tolist() == looped.words.tolist() and len(fast.chars) == len(looped.chars) == 0
        warm.tokens(text)
        assert warm.tokens(text).words.tolist() == looped.words.tolist()  # every token known: no list in between


def test_the_index_lookup_finds_exactly_what_a_plain_search_finds():
    """Most hashes are turned away by the table of the keys' top bits; what passes is searched. Same answer."""
    from tokenmill.decontaminate.index import EvalIndex
    rng = np.random.default_rng(0)
    for n_keys in (1, 1000, 300_000):
        keys = np.unique(rng.integers(0, 2**64, n_keys, dtype=np.uint64))
        index = EvalIndex(["a"], keys, np.zeros(len(keys), dtype=np.int32), 13, 40)
        queries = np.concatenate([rng.integers(0, 2**64, 50_000, dtype=np.uint64), rng.choice(keys, 500),
                                  keys[:1] + np.uint64(1), keys[-1:] - np.uint64(1)])
        at = np.searchsorted(keys, queries).clip(max=len(keys) - 1)
        assert index.lookup(queries).tolist() == np.where(keys[at] == queries, at, -1).tolist()
        assert (index.lookup(queries) >= 0).sum() >= min(500, len(keys))


def write_eval(tmp_path, texts, name="heldout"):
    folder = tmp_path / name
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i}.txt").write_text(text)
    return folder


def test_overlaps_are_removed_common_text_stays_and_every_removal_is_counted(tmp_path):
    heldout = write_eval(tmp_path, [EVAL + " " + BOILERPLATE])
    docs = [Document("verbatim", EVAL.upper()),                                     # case changed
            Document("embedded", filler(1) + " " + EVAL + " " + OTHER * 3),          # a passage inside
            Document("clean", OTHER * 3)]
    docs += [Document(f"page{i}", filler(i) + " " + BOILERPLATE) for i in range(12)]  # boilerplate, 12 pages
    write_documents(docs, tmp_path / "in")
    cfg = DecontaminateConfig(sets={"heldout": str(heldout)}, margin_chars=0, min_chars=100)
    counts = decontaminate(cfg, tmp_path / "in", tmp_path / "out")

    kept = {d.id: d.text for d in read_documents(tmp_path / "out")}
    assert "verbatim" not in kept  # nothing left of it: dropped whole
    assert "lighthouse" not in kept["embedded"] and "Farmers in the valley" in kept["embedded"]
    assert kept["clean"] == OTHER * 3
    assert sum(BOILERPLATE in text for text in kept.values()) == 12  # shared by 12 pages: common text, kept
    assert counts["drops"] == {"decontaminate/heldout": 1}
    assert counts["decontaminate"]["heldout"]["cut"] == 1 and counts["decontaminate_common_ngrams"] > 0
    removed = [d for d in read_documents(tmp_path / "out" / "dropped" / "decontaminate")]
    assert {d.metadata["from"] for d in removed} == {"verbatim", "embedded"}
    assert all(d.metadata["decontaminated_by"] == "heldout" for d in removed)


def test_the_matching_pass_over_several_shards_in_parallel_equals_one_process(tmp_path, monkeypatch):
    """find() matches each shard in a forked worker; the merged result is the one-process result, in order."""
    from tokenmill.decontaminate import build_index, find
    heldout = write_eval(tmp_path, [EVAL + " " + BOILERPLATE])
    docs = [Document(f"page{i}", filler(i) + (" " + BOILERPLATE if i % 2 else "") + (" " + EVAL if i % 7 == 0 else ""))
            for i in range(40)]
    write_documents(docs, tmp_path / "in", docs_per_shard=7)  # 6 shards
    cfg, tok = DecontaminateConfig(sets={"heldout": str(heldout)}), Tokenizer()
    index = build_index(cfg, tok)
    considered = lambda doc: doc.id != "page14"  # noqa: E731  (not considered: neither matched nor counted)
    parallel = find(tmp_path / "in", index, tok, cfg.common_docs, considered)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    alone = find(tmp_path / "in", index, tok, cfg.common_docs, considered)
    assert list(parallel[0]) == list(alone[0]) == ["page0", "page7", "page21", "page28", "page35"]
    assert all((parallel[0][k] == alone[0][k]).all() for k in alone[0])
    assert parallel[1].tolist() == alone[1].tolist() and len(alone[1]) > 0  # the boilerplate's n-grams: common
    assert parallel[2] == alone[2] == 39


def test_document_mode_drops_the_whole_document(tmp_path):
    heldout = write_eval(tmp_path, [EVAL])
    write_documents([Document("embedded", filler(1) + EVAL), Document("clean", OTHER)], tmp_path / "in")
    counts = decontaminate(DecontaminateConfig(sets={"heldout": str(heldout)}, mode="document", max_share=0.9),
                           tmp_path / "in", tmp_path / "out")
    assert [d.id for d in read_documents(tmp_path / "out")] == ["clean"]
    assert counts["drops"] == {"decontaminate/heldout": 1}


def test_japanese_is_matched_by_characters(tmp_path):
    heldout = write_eval(tmp_path, [JA_EVAL], "ja")
    inside = "今日は良い天気です。" * 5 + JA_EVAL[10:70] + "明日は雨が降るでしょう。" * 5
    write_documents([Document("ja", inside), Document("clean", "今日は良い天気です。" * 20)], tmp_path / "in")
    counts = decontaminate(DecontaminateConfig(sets={"ja": str(heldout)}, margin_chars=0, min_chars=10, max_share=0.9),
                           tmp_path / "in", tmp_path / "out")
    kept = {d.id: d.text for d in read_documents(tmp_path / "out")}
    assert JA_EVAL[20:60] not in kept["ja"] and "明日は雨" in kept["ja"]
    assert counts["decontaminate"]["ja"]["cut"] == 1


def test_a_task_question_with_its_answer_is_found(tmp_path):
    task = tmp_path / "quiz.jsonl"
    task.write_text(json.dumps({"context": "Which keeper counted forty seven ships passing the northern cape during "
                                           "the winter storms? It was", "choices": ["the harbour master",
                                                                                    "the old lighthouse keeper"],
                                "answer": 1}) + "\n")
    write_documents([Document("leak", filler(2) + " Which keeper counted forty seven ships passing the northern "
                              "cape during the winter storms? It was the old lighthouse keeper. " + OTHER * 3),
                     Document("clean", OTHER)], tmp_path / "in")
    counts = decontaminate(DecontaminateConfig(tasks=[str(task)], margin_chars=0, min_chars=50, max_share=0.9),
                           tmp_path / "in", tmp_path / "out")
    assert counts["decontaminate"]["quiz"]["cut"] == 1


def test_bad_evaluation_sets_are_named_before_any_work(tmp_path, capsys):
    empty = write_eval(tmp_path, ["... !!! ---"], "empty")
    write_documents([Document("a", OTHER)], tmp_path / "in")
    with pytest.raises(ValueError, match="evaluation set 'empty' has no text left after normalisation"):
        dedup(DedupConfig(decontaminate={"sets": {"empty": str(empty)}}), tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # before exact and MinHash dedup ran

    short = write_eval(tmp_path, [EVAL, "too short to match"], "short")
    decontaminate(DecontaminateConfig(sets={"short": str(short)}), tmp_path / "in", tmp_path / "out2")
    assert "1 of 2 documents of 'short' are shorter than one n-gram" in capsys.readouterr().out


def test_a_decontamination_that_would_remove_too_much_stops_before_writing(tmp_path):
    texts = [filler(i) + " " + OTHER for i in range(10)]
    write_documents([Document(f"d{i}", t) for i, t in enumerate(texts)], tmp_path / "in")
    wrong = write_eval(tmp_path, texts[:5], "general")  # the training data given as an evaluation set
    with pytest.raises(DecontaminationTooBroad, match="10 of 10 documents .* most of them overlap 'general'"):
        decontaminate(DecontaminateConfig(sets={"general": str(wrong)}), tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenmill_run_decontaminates_against_the_runs_own_evaluation_sets(tmp_path, corpus):
    import yaml

    from tokenmill.cli import main
    from conftest import tiny_pipeline
    raw = tiny_pipeline(corpus)
    leaked = sorted(corpus.glob("*.txt"))[0].read_text()
    heldout = write_eval(tmp_path, [leaked], "heldout")
    raw["train"]["eval_sets"] = {"heldout": str(heldout)}
    raw["train"]["max_steps"] = 4
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config), "-o", str(tmp_path / "run"), "--until", "dedup"]) == 0
    manifest = json.loads((tmp_path / "run" / "20_dedup" / "manifest.json").read_text())
    assert manifest["config"]["decontaminate"]["sets"] == {"heldout": str(heldout)}
    assert manifest["counts"]["drops"].get("decontaminate/heldout") == 1
    # The same evaluation text changed: the stage runs again.
    (heldout / "0.txt").write_text(OTHER)
    assert main(["run", str(config), "-o", str(tmp_path / "run"), "--until", "dedup"]) == 0
    manifest = json.loads((tmp_path / "run" / "20_dedup" / "manifest.json").read_text())
    assert "decontaminate/heldout" not in manifest["counts"]["drops"]


def test_training_warns_when_an_evaluation_set_overlaps_the_training_shards(shards, corpus, tmp_path, capsys):
    """Shards made elsewhere (no data stages here): the trainer checks each evaluation set itself."""
    from transformers import AutoTokenizer

    from conftest import tiny_pipeline
    from tokenmill import train
    from tokenmill.config import validate
    from tokenmill.decontaminate.check import decoded
    tokenizer = AutoTokenizer.from_pretrained(shards / "tokenizer")
    seen = list(decoded(shards / "train", tokenizer))[:3]
    leaky = write_eval(tmp_path, seen + [OTHER, EVAL, filler(7)], "leaky")
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=2, eval_every=0, save_every=0, warmup_steps=0,
                        eval_sets={"leaky": str(leaky), "val": str(shards)})
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    out = capsys.readouterr().out
    assert "3 of 6 documents of evaluation set 'leaky' (50.0%) share a 13-word / 40-character" in out
    assert "evaluation set 'val'" not in out  # the held-out split shares nothing with the training split


def test_tokenize_holds_out_its_val_split_from_the_training_side(tmp_path, corpus):
    """A training document that repeats a val document's passages (another edition of the same text) loses
    them at tokenize: the val figures then measure generalisation."""
    import random

    from conftest import make_text
    from tokenmill.tokenize import TokenizeConfig, split_of, validation_ids
    from tokenmill.tokenize import run as tokenize
    rng = random.Random(3)
    docs = [Document(f"d{i:03d}", make_text(rng, 30)) for i in range(40)]
    cfg = TokenizeConfig(vocab_size=300, val_fraction=0.15)
    write_documents(docs, tmp_path / "docs")
    val = sorted(validation_ids(tmp_path / "docs", cfg))
    source = next(d for d in docs if d.id == val[0])
    # Another edition: the same passage inside other text, under an id that lands on the training side.
    edition_id = next(f"edition{k}" for k in range(1000) if split_of(f"edition{k}", cfg.seed) > 0.5)
    edition = Document(edition_id, OTHER * 3 + "\n" + source.text[:400] + "\n" + OTHER * 3)
    write_documents([*docs, edition], tmp_path / "docs2")
    assert sorted(validation_ids(tmp_path / "docs2", cfg)) == val

    counts = tokenize(cfg, tmp_path / "docs2", tmp_path / "shards")
    assert counts["decontaminate"]["val"]["cut"] + counts["decontaminate"]["val"]["documents"] == 1
    removed = list(read_documents(tmp_path / "shards" / "dropped" / "decontaminate"))
    assert {d.metadata["from"] for d in removed} == {edition_id}
    assert source.text[100:200] in "".join(d.text for d in removed)
    off = tokenize(cfg.model_copy(update={"decontaminate_val": False}), tmp_path / "docs2", tmp_path / "plain")
    assert "decontaminate" not in off
    assert off["train_n_bytes"] > counts["train_n_bytes"] and off["val_n_bytes"] == counts["val_n_bytes"]
