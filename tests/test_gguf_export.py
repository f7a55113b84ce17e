"""GGUF export checked by its real consumer, llama.cpp (the prebuilt xllamacpp wheel): next-token
distributions against transformers on the same ids, tokenization, greedy text, and the layouts that break
converters (Llama Q/K permutation with GQA, Qwen2 biases, GPT-2 Conv1D and positions, tied and untied heads,
a padded vocabulary)."""

import json
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from conftest import make_text
from tokenmill.export.gguf_writer import pre_tokenizer_name, write_gguf
from tokenmill.tokenize.tokenizer import train_bpe

xllamacpp = pytest.importorskip("xllamacpp")
from tokenmill.export.llamacpp import LlamaCpp  # noqa: E402

HARD = "Digits 12345 and 3.14159, a run of     spaces,\ttabs\n\nnew lines, emoji 🙂👍🏽, CJK 漢字かな, don't we'll I'M"


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    return train_bpe([make_text(rng, 20) for _ in range(300)] + [HARD] * 3, 420)


def tiny(kind: str, tokenizer, vocab_size=None, tied=True):
    torch.manual_seed(0)
    v = vocab_size or len(tokenizer)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                             tie_word_embeddings=tied, rope_theta=50000.0))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                             tie_word_embeddings=tied))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    with torch.no_grad():
        for p in model.parameters():  # larger weights than the init, so that mistakes show in the logits
            p.normal_(0, 0.2)
    return model.eval()


def kl_and_top1(model, path, ids):
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
    llm = LlamaCpp(path, n_ctx=128, threads=2)
    got = llm.next_token_logprobs(ids, ref.numel())
    got = torch.tensor([got.get(i, -1e9) for i in range(ref.numel())], dtype=torch.float64)
    got = got - torch.logsumexp(got, 0)  # llama.cpp's float32 log-probs, renormalised
    return float((ref.exp() * (ref - got)).sum()), int(ref.argmax()) == int(got.argmax()), llm


@pytest.mark.parametrize("outtype, max_kl", [("f32", 1e-4), ("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 1e-2)])
def test_llama_with_gqa_matches_transformers(tokenizer, tmp_path, outtype, max_kl):
    model = tiny("llama", tokenizer)
    path = tmp_path / f"m-{outtype}.gguf"
    info = write_gguf(model, tokenizer, path, outtype, "m")
    ids = tokenizer("The king and queen of the realm have gone", add_special_tokens=False)["input_ids"]
    kl, same_top1, llm = kl_and_top1(model, path, ids)
    assert kl < max_kl and same_top1, (kl, info)
    assert llm.tokenize(HARD) == tokenizer(HARD, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_qwen2_biases_and_gpt2_conv1d_and_positions(tokenizer, tmp_path, kind):
    model = tiny(kind, tokenizer)
    path = tmp_path / f"{kind}.gguf"
    write_gguf(model, tokenizer, path, "f32", kind)
    ids = tokenizer("My lord said to his son be brave for the war", add_special_tokens=False)["input_ids"]
    kl, same_top1, _ = kl_and_top1(model, path, ids)
    assert kl < 1e-4 and same_top1, kl


def tensor_names(path):
    from gguf import GGUFReader
    return {t.name for t in GGUFReader(path).tensors}


def test_tied_head_is_not_written_an_untied_one_is_and_the_vocabulary_is_padded(tokenizer, tmp_path):
    tied = tiny("llama", tokenizer)
    write_gguf(tied, tokenizer, tmp_path / "tied.gguf", "f16", "t")
    assert "output.weight" not in tensor_names(tmp_path / "tied.gguf")
    untied = tiny("llama", tokenizer, vocab_size=len(tokenizer) + 12, tied=False)  # padded, as many models are
    write_gguf(untied, tokenizer, tmp_path / "untied.gguf", "f32", "u")
    assert "output.weight" in tensor_names(tmp_path / "untied.gguf")
    ids = tokenizer("A storm came over the sea", add_special_tokens=False)["input_ids"]
    kl, same_top1, _ = kl_and_top1(untied, tmp_path / "untied.gguf", ids)
    assert kl < 1e-4 and same_top1


def test_pre_tokenizer_names_follow_tokenizer_json():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name({"pre_tokenizer": smollm}) == "smollm"
    split = lambda regex: {"type": "Sequence", "pretokenizers": [  # noqa: E731
        {"type": "Split", "pattern": {"Regex": regex}}, {"type": "ByteLevel", "use_regex": False}]}
    assert pre_tokenizer_name({"pre_tokenizer": split(r"(?i:'s|'t)|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+")}) == "llama-bpe"
    assert pre_tokenizer_name({"pre_tokenizer": split(r"(?i:'s|'t)|\p{N}| ?[^\s\p{L}\p{N}]+")}) == "qwen2"
    with pytest.raises(ValueError, match="not one llama.cpp is known to tokenize the same way"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})


def test_cli_export_generate_a_k_quant_and_refuse_what_the_install_lacks(shards, corpus, tmp_path, capsys, monkeypatch):
    from conftest import tiny_pipeline
    from tokenmill import train
    from tokenmill.cli import main
    from tokenmill.config import ConfigError, validate
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=30, save_every=0, eval_every=0)
    cfg = validate(raw)
    run = tmp_path / "myrun"
    train.run(cfg.model, cfg.train, shards, run / "40_checkpoints")
    assert main(["export", str(run / "40_checkpoints"), "-o", str(tmp_path / "out"), "--format", "gguf",
                 "--outtype", "f16"]) == 0
    gguf_file = tmp_path / "out" / "myrun-f16.gguf"
    assert gguf_file.is_file() and not list((tmp_path / "out").glob("*.partial"))
    capsys.readouterr()
    greedy = ["--prompt", "The king", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(["generate", str(gguf_file), *greedy]) == 0
    from_gguf = capsys.readouterr().out
    assert main(["generate", str(run / "40_checkpoints" / "final"), *greedy]) == 0
    assert capsys.readouterr().out == from_gguf and len(from_gguf) > len("The king\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize binary, no compiler: not needed
    assert main(["export", str(run / "40_checkpoints"), "-o", str(tmp_path / "k"), "--format", "gguf",
                 "--outtype", "q4_k_m"]) == 0
    out = capsys.readouterr().out
    assert "q4_k_m: 14 of 20 tensors fall back" in out and "Q4_K → Q5_0" in out  # 32-wide rows
    assert main(["generate", str(tmp_path / "k" / "myrun-q4_k_m.gguf"), *greedy]) == 0

    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else real(name, *a))
    raw["export"] = {"formats": ["gguf"], "gguf_outtypes": ["f16", "q4_k_m"]}
    with pytest.raises(ConfigError, match=r"export.gguf_outtypes: f16, q4_k_m need xllamacpp, not installed"):
        validate(raw)  # refused with the config, before any stage runs


def test_tokenmill_bpe_uses_a_pre_tokenizer_llama_cpp_knows(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert pre_tokenizer_name(json.loads((tmp_path / "tokenizer.json").read_text())) == "smollm"
