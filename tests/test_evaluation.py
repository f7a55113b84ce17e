"""Evaluation: named sets (shards or raw text) through the CLI and in training, before/after, zero-shot
multiple choice scored as lm-evaluation-harness scores it, and cloze tasks from the user's own text."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import tiny_pipeline
from tokenmill import evaluation, train
from tokenmill.cli import main
from tokenmill.config import validate
from tokenmill.evaluation import EvalConfig
from tokenmill.evaluation import run as evaluate
from tokenmill.evaluation.choice import Question, encode_pair, load_task, score_task
from tokenmill.evaluation.cloze import ClozeConfig, build, sentences
from tokenmill.tokenize import TokenizeConfig, validation_ids


@pytest.fixture
def base_model(shards, tmp_path):
    """A small random Llama with the fixture corpus's tokenizer, saved as a HF folder (a CPT base)."""
    tok = AutoTokenizer.from_pretrained(shards / "tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    out = tmp_path / "base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def val_text_folder(corpus, shards, tmp_path):
    """The raw files behind the val split, as a folder of text."""
    folder = tmp_path / "val_text"
    folder.mkdir()
    for doc_id in validation_ids(shards.parent / "docs", TokenizeConfig(vocab_size=320, val_fraction=0.15)):
        shutil.copy(corpus / doc_id, folder / doc_id)
    return folder


def test_eval_cli_named_sets_raw_text_equals_its_shards(base_model, corpus, shards, tmp_path, capsys):
    text = val_text_folder(corpus, shards, tmp_path)
    out = tmp_path / "eval"
    assert main(["eval", str(base_model), f"tokens={shards}", str(text), "-o", str(out),
                 "--set", "eval.max_tokens=2048", "--set", "eval.seq_len=32"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["sets"]) == {"tokens", "val_text"}  # a bare PATH is named after its folder
    assert "tokens" in printed and "val_text" in printed and "bits/byte" in printed
    shard_set, text_set = results["sets"]["tokens"], results["sets"]["val_text"]
    assert shard_set["tokens"] == text_set["tokens"] == 2048
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert text_set[key] == pytest.approx(shard_set[key], rel=1e-6), key
    assert shard_set["perplexity"] == pytest.approx(math.exp(shard_set["loss"]))
    assert results["seq_len"] == 32 and results["model"] == str(base_model)


def test_shards_of_another_known_tokenizer_are_decoded_and_tokenized_again(base_model, shards, tmp_path, capsys):
    """A base model evaluated on its extension's shards (before and after a vocabulary change) sees the same
    text: the same val documents, decoded and tokenized with its own tokenizer, give its own shards' numbers."""
    from tokenmill.tokenize import TokenizeConfig
    from tokenmill.tokenize import run as tokenize
    other = tmp_path / "other"
    tokenize(TokenizeConfig(vocab_size=300, val_fraction=0.15), tmp_path / "docs", other)  # same split seed
    assert json.loads((other / "val" / "meta.json").read_text())["vocab_size"] != len(AutoTokenizer.from_pretrained(base_model))
    mine = evaluation.run(evaluation.EvalConfig(max_tokens=None), base_model, {"x": shards}, None, 32)
    theirs = evaluation.run(evaluation.EvalConfig(max_tokens=None), base_model, {"x": other}, tmp_path / "e", 32)
    assert theirs["sets"]["x"] == mine["sets"]["x"]

    shutil.rmtree(other / "tokenizer")  # shards of an unknown tokenizer: refused with what to do
    assert main(["eval", str(base_model), f"x={other}"]) == 2
    err = capsys.readouterr().err
    assert "another tokenizer" in err and "raw text" in err


def test_cpt_evaluates_every_set_at_step_0_the_same_as_a_separate_eval(base_model, corpus, shards, tmp_path):
    text = val_text_folder(corpus, shards, tmp_path)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"init_from": str(base_model)}
    raw["train"].update(max_steps=6, eval_every=0, save_every=0, eval_tokens=1024, warmup_steps=0,
                        eval_sets={"domain": str(shards), "general": str(text)})
    cfg = validate(raw)
    assert cfg.tokenize.tokenizer == str(base_model)  # CPT reads text through the base model's tokenizer
    counts = train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    rows = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/domain/loss" in r]
    assert [r["step"] for r in evals] == [0, 6]  # before the first update, and at the end only (eval_every: 0)
    assert {"val/general/loss", "val/general/perplexity", "val/domain/perplexity"} <= set(evals[0])

    sets = {"domain": shards, "general": text}
    before = evaluate(EvalConfig(max_tokens=1024, seq_len=32), base_model, sets, None)
    after = evaluate(EvalConfig(max_tokens=1024, seq_len=32), tmp_path / "ck", sets, None)
    for name in sets:
        assert evals[0][f"val/{name}/loss"] == pytest.approx(before["sets"][name]["loss"], rel=1e-5)
        assert evals[-1][f"val/{name}/loss"] == pytest.approx(after["sets"][name]["loss"], rel=1e-5)
        assert counts["val_losses"][name] == evals[-1][f"val/{name}/loss"]
    assert after["sets"]["domain"]["loss"] < before["sets"]["domain"]["loss"]

    # One evaluation with `before`: every figure with its interval, every change with its paired interval.
    both = evaluate(EvalConfig(max_tokens=1024, seq_len=32), tmp_path / "ck", sets, None, before=base_model)
    for name in sets:
        got, change = both["sets"][name], both["change"]["sets"][name]
        assert got["loss_ci"][0] < got["loss"] < got["loss_ci"][1]
        assert got["bits_per_byte_ci"][0] < got["bits_per_byte"] < got["bits_per_byte_ci"][1]
        expected = got["bits_per_byte"] - both["before"]["sets"][name]["bits_per_byte"]
        assert change["bits_per_byte"]["difference"] == pytest.approx(expected)
        assert change["bits_per_byte"]["paired"] and change["bits_per_byte"]["ci"][0] <= expected
    domain = both["change"]["sets"]["domain"]["bits_per_byte"]
    assert not domain["within_noise"] and domain["ci"][1] < 0  # trained on it: a real gain, not noise
    assert "before → after" in evaluation.format_table(both) and "better" in evaluation.format_table(both)


def test_train_rejects_shards_of_another_tokenizer(base_model, corpus, shards, tmp_path):
    other = tmp_path / "other_base"
    shutil.copytree(base_model, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"init_from": str(other)}
    cfg = validate(raw)
    with pytest.raises(ValueError, match="another tokenizer than the base model"):
        train.run(cfg.model, cfg.train, shards, tmp_path / "ck")


# Multiple choice

def test_encode_pair_follows_lm_eval(shards):
    tok = AutoTokenizer.from_pretrained(shards / "tokenizer")
    ctx, cont = encode_pair(tok, "The king said ", " and the queen")
    # The context's trailing space moves into the continuation; the whole is encoded at once.
    assert ctx == tok.encode("The king said")
    assert ctx + cont == tok.encode("The king said  and the queen")
    ctx, cont = encode_pair(tok, "", " the king")
    assert ctx == [tok.eos_token_id] and cont == tok.encode(" the king", add_special_tokens=False)


def test_scorer_matches_a_hand_computed_loglikelihood(base_model):
    model = LlamaForCausalLM.from_pretrained(base_model)
    tok = AutoTokenizer.from_pretrained(base_model)
    question = Question("The king and the queen", ["went to the castle", "sea storm waves bells"], 0)
    scored = score_task(model, tok, [question], max_length=128, batch_size=2, device=torch.device("cpu"))
    for choice, ll in zip(question.choices, scored["loglikelihoods"][0]):
        context_ids = tok.encode("The king and the queen")
        whole = tok.encode("The king and the queen " + choice)
        with torch.no_grad():
            logits = model(torch.tensor([whole[:-1]])).logits[0]
        logprobs = torch.log_softmax(logits, dim=-1)
        expected = sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))
        assert ll == pytest.approx(expected, abs=1e-4)
    lls = scored["loglikelihoods"][0]
    assert scored["acc"] == float(lls[0] > lls[1])
    norm = [ll / len(c) for ll, c in zip(lls, question.choices)]
    assert scored["acc_norm"] == float(norm[0] > norm[1]) and scored["n"] == 1


def test_accuracy_and_its_standard_error(base_model):
    model = LlamaForCausalLM.from_pretrained(base_model)
    tok = AutoTokenizer.from_pretrained(base_model)
    qs = [Question("The king", ["and", "queen"], i % 2) for i in range(10)]
    scored = score_task(model, tok, qs, 128, 4, torch.device("cpu"))
    assert scored["acc"] == 0.5  # the same pair ten times: right for one answer index only
    assert scored["acc_stderr"] == pytest.approx(math.sqrt(0.25 / 9))  # lm-eval: sample std (n-1) / sqrt(n)


@pytest.mark.parametrize("line, problem", [
    ('{"context": "a", "choices": ["x", "y"]}', "missing field(s) answer"),
    ('{"context": "a", "choices": ["x", "y"], "answer": 2}', "answer 2 is not an index"),
    ('{"context": "a", "choices": ["x"], "answer": 0}', "at least two"),
    ('{"context": "a", "choices": ["x", "y"], "answer": 0', "not valid JSON"),
])
def test_a_bad_task_line_names_the_file_and_line(tmp_path, line, problem):
    task = tmp_path / "task.jsonl"
    task.write_text('{"context": "ok", "choices": ["x", "y"], "answer": 1}\n' + line + "\n")
    with pytest.raises(ValueError) as err:
        load_task(task)
    assert f"{task}:2" in str(err.value) and problem in str(err.value)


# Cloze tasks

def test_cloze_right_choice_is_the_next_sentence_and_wrong_ones_come_from_other_documents():
    shared = "Every house in the city rang its bells at dawn."
    texts = [" ".join([f"Document {d} opens with its own first line here.", shared if d % 2 else "",
                       *[f"In document {d} sentence number {i} tells of {'the sea' if i % 2 else 'a king'} again."
                         for i in range(8)]]) for d in range(6)]
    questions = build(texts, ClozeConfig(n=40, min_sentence_chars=20, seed=1))
    assert len(questions) == 40
    for q in questions:
        own = texts[q["doc"]]
        right = q["choices"][q["answer"]]
        assert own.startswith(q["context"]) and own[len(q["context"]):].lstrip().startswith(right)
        wrong = [c for i, c in enumerate(q["choices"]) if i != q["answer"]]
        assert len(set(q["choices"])) == 4
        assert not any(w in own for w in wrong)  # never the document's own sentence, shared ones included


def test_make_cloze_cli_then_eval_tasks(base_model, corpus, tmp_path, capsys):
    task = tmp_path / "cloze.jsonl"
    assert main(["make-cloze", str(corpus), "-o", str(task), "--n", "12"]) == 0
    questions = load_task(task)
    assert len(questions) == 12 and all(len(q.choices) == 4 for q in questions)
    out = tmp_path / "eval"
    assert main(["eval", str(base_model), "--tasks", str(task), "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())["tasks"]["cloze"]
    assert result["n"] == 12 and 0 <= result["acc"] <= 1 and "acc_norm_stderr" in result
    assert "cloze" in capsys.readouterr().out


def test_sentences_keep_offsets():
    text = "First one here. Second (with a bracket.) Third! Fourth?"
    found = sentences(text, 0)
    assert [s.text for s in found] == ["First one here.", "Second (with a bracket.)", "Third!", "Fourth?"]
    assert all(text[s.start:].startswith(s.text) for s in found)


def test_loss_by_position_buckets_average_to_the_loss_of_the_training_loss_function(shards):
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenmill.evaluation.positions import bucket_name, buckets, in_order, loss_by_position
    from tokenmill.evaluation.sets import split_windows, window_documents
    from tokenmill.tokenize.shards import open_split
    from tokenmill.losses import hidden_state_outputs, mean_loss
    assert [bucket_name(*b) for b in buckets(8192)] == ["0-512", "512-1k", "1k-2k", "2k-4k", "4k-8k"]
    assert buckets(32) == [(0, 2), (2, 4), (4, 8), (8, 16), (16, 32)]
    assert list(in_order({"512-1k": 1, "4k-8k": 2, "64-128": 3, "0-64": 4})) == ["0-64", "64-128", "512-1k", "4k-8k"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    windows = split_windows(shards / "val", 32, 2048)
    expected = mean_loss(model, windows, 4, torch.device("cpu"))
    documents = window_documents(open_split(shards / "val"), 32, 2048)
    with hidden_state_outputs(model) as head:  # the chunked head, as evaluation runs it
        loss, by_bucket, units = loss_by_position(model, windows, 4, torch.device("cpu"), head, documents)
    assert loss == pytest.approx(expected, rel=1e-5)
    # The per-unit sums hold every scored token once: their ratio is the loss.
    assert units.den.sum() == len(windows) * 32 and units.value == pytest.approx(expected, rel=1e-6)
    assert units.kind == ("documents" if len(np.unique(documents)) >= 30 else "windows")
    starts = open_split(shards / "val")[0].doc_offsets
    assert documents[0, 0] == np.searchsorted(starts, 1, side="right") - 1  # position 1 is window 0's first target
    widths = np.array([e - s for s, e in buckets(32)])
    assert np.dot(list(by_bucket.values()), widths) / 32 == pytest.approx(expected, rel=1e-5)
    assert len(set(by_bucket.values())) == len(by_bucket)  # each bucket its own positions


def test_make_passkey_hides_the_key_at_each_depth_and_eval_scores_by_length_and_depth(shards, tmp_path, capsys):
    import json

    from transformers import AutoTokenizer

    from tokenmill.cli import main
    from tokenmill.evaluation.choice import load_task
    task = tmp_path / "passkey.jsonl"
    assert main(["make-passkey", "-o", str(task), "--tokenizer", str(shards / "tokenizer"), "--lengths", "256", "512",
                 "--depths", "0", "0.5", "1", "--per-cell", "4"]) == 0
    rows = [json.loads(line) for line in task.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(shards / "tokenizer")
    assert len(rows) == 2 * 3 * 4 and {r["answer"] for r in rows} != {0}  # the key is not always first
    for row in rows:
        key = row["choices"][row["answer"]]
        n_tokens = len(tok.encode(row["context"], add_special_tokens=False))
        assert abs(n_tokens - row["length"]) <= 0.15 * row["length"] + 8, (n_tokens, row["length"])
        from tokenmill.evaluation.passkey import INTRO, QUESTION
        needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
        filler = len(row["context"]) - len(INTRO) - len(needle) - len(QUESTION)
        where = (row["context"].index(needle) - len(INTRO)) / filler  # the share of the filler before the key
        assert abs(where - row["depth"]) < 0.05, (where, row["depth"])
        assert row["context"].count(key) == 2 and all(c not in row["context"] for c in row["choices"] if c != key)
    assert load_task(task)[0].tags == {"length": 256, "depth": 0.0}
    for bad in (["--depths", "1.5"], ["--lengths", "40"]):  # outside the filler; shorter than the question
        assert main(["make-passkey", "-o", str(task), "--tokenizer", str(shards / "tokenizer"), *bad]) == 2

    from transformers import LlamaConfig, LlamaForCausalLM
    model_dir = tmp_path / "model"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
                     ).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    assert main(["make-passkey", "-o", str(task), "--tokenizer", str(model_dir), "--lengths", "256", "400",
                 "--depths", "0", "1", "--per-cell", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", str(model_dir), "--tasks", str(task), "-o", str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]["passkey"]
    assert set(result["acc_by"]) == {"length", "depth"} and set(result["acc_by"]["length"]) == {"256", "400"}
    assert "acc by depth" in capsys.readouterr().out
