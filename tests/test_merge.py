"""Merging after training: interpolation with the start model, the chat vector (mergekit's bytes), checkpoint
averages (a float64 reference), the weight chosen on evaluation sets, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tokenmill.merge import MergeConfig, run
from tokenmill.merge.weights import Weights, check_compatible

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=64)


def save_model(folder: Path, tokenizer, seed: int, like: Path | None = None, scale: float = 0.02,
               vocab: int | None = None, **shape) -> Path:
    """A tiny Llama: random (seed), or `like`'s weights plus noise of `scale` (a model trained from it)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab or len(tokenizer), tie_word_embeddings=False, **{**SHAPE, **shape})
    model = LlamaForCausalLM(config)
    if like is not None:
        start = load_file(like / "model.safetensors")
        with torch.no_grad():
            for name, p in model.named_parameters():
                rows = start[name].shape[0]
                p[:rows] = start[name] + scale * torch.randn_like(start[name])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def family(shards, tmp_path):
    """base, its instruct sibling, and base continued (trained)."""
    tokenizer = AutoTokenizer.from_pretrained(shards / "tokenizer")
    base = save_model(tmp_path / "base", tokenizer, 0)
    return {"tokenizer": tokenizer, "base": base, "instruct": save_model(tmp_path / "instruct", tokenizer, 1, base),
            "trained": save_model(tmp_path / "trained", tokenizer, 2, base)}


def test_task_arithmetic_writes_the_bytes_mergekit_writes(family, tmp_path):
    pytest.importorskip("mergekit")
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    lam = 0.37
    run(MergeConfig(method="task_arithmetic", base=str(family["base"]), instruct=str(family["instruct"]),
                    weights=[lam]), family["trained"], tmp_path / "ours", {}, 32)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(family["base"]), "dtype": "float32",
              "models": [{"model": str(family["trained"]), "parameters": {"weight": 1.0}},
                         {"model": str(family["instruct"]), "parameters": {"weight": lam}}]}
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump(recipe))), str(tmp_path / "mergekit"),
              options=MergeOptions(copy_tokenizer=False))
    ours, theirs = load_file(tmp_path / "ours" / "model.safetensors"), {}
    for file in (tmp_path / "mergekit").glob("*.safetensors"):
        theirs.update(load_file(file))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    trained = load_file(family["trained"] / "model.safetensors")
    assert not torch.equal(ours["model.norm.weight"], trained["model.norm.weight"])  # the vector was added


def test_interpolation_ends_at_its_models_and_matches_float64_between(family, tmp_path):
    start, trained = (load_file(family[k] / "model.safetensors") for k in ("base", "trained"))
    for alpha in (0.0, 0.3, 1.0):
        out = tmp_path / f"a{alpha}"
        run(MergeConfig(method="interpolate", weights=[alpha]), family["trained"], out, {}, 32, start=str(family["base"]))
        merged = load_file(out / "model.safetensors")
        for name, t in merged.items():
            expected = ((1 - alpha) * start[name].double() + alpha * trained[name].double()).float()
            if alpha in (0.0, 1.0):
                assert torch.equal(t, expected), name
            else:
                torch.testing.assert_close(t, expected, rtol=2.5e-7, atol=1e-8)  # an ulp or two
    assert json.loads((tmp_path / "a0.3" / "merge.json").read_text())["chosen"] == 0.3


def test_new_vocabulary_rows_take_no_vector_and_other_shapes_are_refused(family, tmp_path):
    tokenizer = family["tokenizer"]
    grown = save_model(tmp_path / "grown", tokenizer, 3, family["base"], vocab=len(tokenizer) + 8)
    run(MergeConfig(method="task_arithmetic", base=str(family["base"]), instruct=str(family["instruct"]), weights=[1.0]),
        grown, tmp_path / "merged", {}, 32)
    merged, trained = load_file(tmp_path / "merged" / "model.safetensors"), load_file(grown / "model.safetensors")
    base, instruct = (load_file(family[k] / "model.safetensors") for k in ("base", "instruct"))
    rows = len(tokenizer)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(merged[name][rows:], trained[name][rows:])  # the new rows as trained
        torch.testing.assert_close(merged[name][:rows], trained[name][:rows] + instruct[name] - base[name])

    other = save_model(tmp_path / "other", tokenizer, 4, intermediate_size=48)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight is \[48, 32\].*\[64, 32\]"):
        run(MergeConfig(method="interpolate", weights=[0.5]), family["trained"], tmp_path / "x", {}, 32, start=str(other))
    assert not (tmp_path / "x").exists()  # refused before anything was written
    from tokenmill.model.source import load_source
    model, _, _ = load_source(family["trained"])
    with pytest.raises(ValueError, match="vocabulary"):  # a start with more rows than the trained model
        check_compatible(model, {"start": Weights(grown)})


def test_a_chat_vector_needs_both_models_and_a_choice_needs_its_sets():
    with pytest.raises(ValueError, match="needs both merge.base and merge.instruct"):
        MergeConfig(method="task_arithmetic", base="x")
    with pytest.raises(ValueError, match="merge.objective"):
        MergeConfig(method="interpolate", weights=[0.5, 0.7])
    with pytest.raises(ValueError, match="checkpoint counts"):
        MergeConfig(method="average", weights=[0.5])


def test_checkpoints_average_to_their_float64_mean(shards, tmp_path):
    from tokenmill.model import ModelConfig
    from tokenmill.train import TrainConfig
    from tokenmill.train import run as train
    train(ModelConfig(preset="tiny", **SHAPE), TrainConfig(seq_len=32, micro_batch_size=4, max_steps=12, warmup_steps=1,
                                                          save_every=4, keep_last=3, eval_every=0, eval_tokens=256),
          shards, tmp_path / "ck")
    run(MergeConfig(method="average", weights=[3]), tmp_path / "ck", tmp_path / "avg", {}, 32)
    kept = sorted((tmp_path / "ck").glob("step-*"))
    assert [p.name for p in kept] == ["step-00000004", "step-00000008", "step-00000012"]
    states = [load_file(p / "model.safetensors") for p in kept]
    merged = load_file(tmp_path / "avg" / "model.safetensors")
    for name, t in merged.items():
        stored = name if name in states[0] else "lm_head.weight"  # the tiny preset ties its head: stored once
        assert torch.equal(t, (sum(s[stored].double() for s in states) / 3).float()), name


def test_auto_keeps_the_most_domain_gain_within_the_limit(family, corpus, tmp_path):
    from tests.conftest import write_corpus
    general = write_corpus(tmp_path / "general", n_docs=6, seed=5)
    sets = {"domain": corpus, "general": general}
    cfg = MergeConfig(method="interpolate", weights="auto", eval_tokens=512, objective={"set": "domain"},
                      constraint={"set": "general", "max_rise_bits_per_byte": 0.003})
    counts = run(cfg, family["trained"], tmp_path / "auto", sets, 32, start=str(family["base"]))
    record = json.loads((tmp_path / "auto" / "merge.json").read_text())
    table = [c for c in record["candidates"] if c["role"] == "candidate"]
    feasible = [c for c in table if c["feasible"]]
    best = min(feasible, key=lambda c: c["bits_per_byte"]["domain"])
    assert record["chosen"] == best["weight"] == counts["weight"]
    assert {c["role"] for c in record["candidates"]} == {"reference", "trained", "candidate"}
    for c in record["candidates"]:
        assert c["feasible"] == (c["rise"] <= 0.003 + 1e-12)
    reference = next(c for c in record["candidates"] if c["role"] == "reference")
    assert next(c for c in table if c["weight"] == 0.0)["bits_per_byte"] == pytest.approx(reference["bits_per_byte"])
    assert any(not c["feasible"] for c in table)  # the limit binds inside the grid, so it was refined there
    refined = [c["weight"] for c in table if c["weight"] not in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    assert len(refined) == 2


def test_a_run_with_a_merge_section_evaluates_exports_and_reports_the_merged_model(tiny_config, tmp_path):
    from tokenmill.config import validate
    from tokenmill.pipeline import run_pipeline
    tiny_config["train"].update(keep_last=3, ema=0.9)
    tiny_config["merge"] = {"method": "average", "objective": {"set": "val"},
                            "constraint": {"set": "val", "max_rise_bits_per_byte": 0.5}}
    out = run_pipeline(validate(tiny_config), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "41_merge" / "merge.json").read_text())
    assert [c["weight"] for c in record["candidates"] if c["role"] == "candidate"] == [1, 2, 3, "ema"]
    evaluated = json.loads((tmp_path / "run" / "50_eval" / "results.json").read_text())
    assert evaluated["model"].endswith("41_merge") and evaluated["merge"]["chosen"] == record["chosen"]
    chosen = next(c for c in record["candidates"] if c["role"] == "candidate" and c["weight"] == record["chosen"])
    assert out["sets"]["val"]["bits_per_byte"] == pytest.approx(chosen["bits_per_byte"]["val"], rel=0.05)
    card = (tmp_path / "run" / "60_export" / "README.md").read_text()
    assert "## Merge" in card and "| EMA |" in card
    assert "Merge: average" in Path(out["report"]).read_text()


def test_merge_config_problems_are_named_before_training(tiny_config):
    from tokenmill.config import ConfigError, validate
    tiny_config["merge"] = {"method": "interpolate", "weights": "auto", "objective": {"set": "domain"},
                            "constraint": {"set": "val", "max_rise_bits_per_byte": 0.1}}
    with pytest.raises(ConfigError) as e:
        validate(tiny_config)
    assert "merge.objective.set: 'domain' is not an evaluation set" in str(e.value)
    assert "merge.start: interpolate needs the model training started from" in str(e.value)


def test_tokenmill_merge_from_the_command_line(family, corpus, tmp_path, capsys):
    from tokenmill.cli import main
    code = main(["merge", str(family["trained"]), f"domain={corpus}", "-o", str(tmp_path / "m"), "--method",
                 "interpolate", "--start", str(family["base"]), "--weights", "0.5", "1.0", "--objective", "domain",
                 "--constraint", "domain:0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "α = 0.5" in printed and "merged model:" in printed
    assert json.loads((tmp_path / "m" / "merge.json").read_text())["chosen"] in (0.5, 1.0)
    assert main(["merge", str(family["trained"]), "-o", str(tmp_path / "n"), "--method", "task_arithmetic",
                 "--base", str(family["base"])]) == 2
    assert "needs both merge.base and merge.instruct" in capsys.readouterr().err


def test_a_run_cannot_average_more_checkpoints_than_it_keeps(tiny_config, tmp_path):
    from tokenmill.config import validate
    from tokenmill.pipeline import run_pipeline
    tiny_config["merge"] = {"method": "average", "weights": [3]}
    with pytest.raises(ValueError, match="needs train.keep_last at least that"):
        run_pipeline(validate(tiny_config), tmp_path / "run")
    assert not (tmp_path / "run" / "00_raw").exists()  # said before the data stages
