"""The lm-evaluation-harness adapter, offline on a local task, and agreement with tokenmill's own scorer."""

import json

import pytest
import torch
import yaml
from transformers import AutoTokenizer, LlamaForCausalLM

from test_evaluation import base_model  # noqa: F401  (the fixture)
from tokenmill.cli import main
from tokenmill.evaluation.choice import load_task, score_task
from tokenmill.evaluation.harness import run_lm_eval

pytest.importorskip("lm_eval", reason="pip install 'tokenmill[lm-eval]' (make test installs it)")

QUESTIONS = [
    {"context": "The king and the queen", "choices": ["went to the castle", "storm bells rang"], "answer": 0},
    {"context": "A storm came over the sea ", "choices": ["and the ship was lost", "my lord", "be brave"], "answer": 0},
    {"context": "My lord said to his son", "choices": ["be brave for the war is near", "the waves"], "answer": 1},
    {"context": "", "choices": ["The king", "Honour must be kept"], "answer": 0},
    {"context": "Their loyal men\n", "choices": ["that night", "of fortune while"], "answer": 1},
]


@pytest.fixture
def local_task(tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "tiny_mc.yaml").write_text(yaml.safe_dump({
        "task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}))
    return data, include


def test_lm_eval_and_tokenmill_give_the_same_loglikelihoods_and_accuracy(base_model, local_task):  # noqa: F811
    data, include = local_task
    model = LlamaForCausalLM.from_pretrained(base_model)
    tok = AutoTokenizer.from_pretrained(base_model)
    harness = run_lm_eval(model, tok, ["tiny_mc"], include, batch_size=2)
    ours = score_task(model, tok, load_task(data), max_length=128, batch_size=3, device=torch.device("cpu"))
    samples = sorted(harness["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(QUESTIONS)
    for sample, our_lls in zip(samples, ours["loglikelihoods"]):
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        assert our_lls == pytest.approx(theirs, abs=1e-4)
    assert harness["results"]["tiny_mc"]["acc"] == pytest.approx(ours["acc"])
    assert harness["results"]["tiny_mc"]["acc_norm"] == pytest.approx(ours["acc_norm"])
    assert harness["results"]["tiny_mc"]["acc_stderr"] == pytest.approx(ours["acc_stderr"])


def test_eval_cli_lm_eval_results_land_in_results_json(base_model, local_task, tmp_path):  # noqa: F811
    _, include = local_task
    out = tmp_path / "eval"
    assert main(["eval", str(base_model), "--lm-eval", "tiny_mc", "--lm-eval-include", str(include),
                 "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["lm_eval"]["tiny_mc"]) >= {"acc", "acc_norm", "acc_stderr"}


def test_an_unknown_lm_eval_task_is_named(base_model, local_task, capsys):  # noqa: F811
    _, include = local_task
    assert main(["eval", str(base_model), "--lm-eval", "tiny_mc,no_such_task", "--lm-eval-include", str(include)]) == 2
    assert "no_such_task" in capsys.readouterr().err


def test_decontamination_reads_a_local_lm_eval_tasks_documents_and_names_a_missing_one(local_task, tmp_path,
                                                                                       capsys, caplog):
    from tokenmill.decontaminate import DecontaminateConfig, evaluation_texts
    data, include = local_task
    gone = yaml.safe_load((include / "tiny_mc.yaml").read_text())
    gone.update(task="gone_mc", dataset_kwargs={"data_files": {"test": str(data.with_name("not-here.jsonl"))}})
    (include / "gone_mc.yaml").write_text(yaml.safe_dump(gone))  # a task whose documents are not on this machine
    cfg = DecontaminateConfig(lm_eval=["tiny_mc", "gone_mc"], lm_eval_include=str(include))
    texts = evaluation_texts(cfg)
    assert list(texts) == ["tiny_mc"]  # gone_mc's data is not here: left out, and named
    assert texts["tiny_mc"][2] == "My lord said to his son the waves"  # the question and its right answer
    assert "gone_mc" in caplog.text and "not available here" in caplog.text
