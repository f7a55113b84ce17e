"""model.rope: a new RoPE base or a scaling (linear, YaRN, Llama 3) on the HF config as transformers 5 reads
it, kept by continued pre-training and export, and written to GGUF so that llama.cpp computes the same
logits at positions beyond the original length."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import tiny_pipeline
from tokenmill.config import ConfigError, validate
from tokenmill.model import build_model
from tokenmill.model.rope import RopeConfig, apply

pytest.importorskip("gguf")
pytest.importorskip("xllamacpp")
from test_gguf_export import tiny, tokenizer  # noqa: E402,F401  (the fixture and the model maker)

from tokenmill.export.gguf_writer import write_gguf  # noqa: E402
from tokenmill.export.llamacpp import LlamaCpp  # noqa: E402

ORIGINAL, LONG = 128, 512
ROPES = {"theta": RopeConfig(theta=200_000.0),
         "linear": RopeConfig(scaling="linear", factor=4),
         "yarn": RopeConfig(scaling="yarn", factor=4),
         "llama3": RopeConfig(scaling="llama3", factor=4, high_freq_factor=2.0)}


def last_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)


@pytest.mark.parametrize("kind", list(ROPES))
def test_llama_cpp_gives_the_hf_logits_beyond_the_original_length(tokenizer, tmp_path, kind):  # noqa: F811
    base = tiny("llama", tokenizer)  # trained, so to speak, at max_position_embeddings 128
    base.save_pretrained(tmp_path / "base")
    config = AutoConfig.from_pretrained(tmp_path / "base")
    apply(config, ROPES[kind], LONG)
    assert config.max_position_embeddings == LONG and config.rope_parameters["rope_type"] == \
        {"theta": "default"}.get(kind, kind)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", config=config, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "long")
    saved = json.loads((tmp_path / "long" / "config.json").read_text())
    assert saved["rope_parameters"] == config.rope_parameters  # kept in the exported config.json

    torch.manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (300,)).tolist()  # 300 positions: well past 128
    ref = last_logprobs(model, ids)
    unchanged = last_logprobs(base, ids)
    change = float((ref.exp() * (ref - unchanged)).sum())

    path = tmp_path / "long.gguf"
    write_gguf(model, tokenizer, path, "f32", "long")
    llm = LlamaCpp(path, n_ctx=LONG, threads=2)
    got = llm.next_token_logprobs(ids, ref.numel())
    got = torch.tensor([got.get(i, -1e9) for i in range(ref.numel())], dtype=torch.float64)
    got = got - torch.logsumexp(got, 0)
    kl = float((ref.exp() * (ref - got)).sum())
    # llama.cpp follows the scaling: its distance to HF is far below what the scaling changed
    assert kl < 1e-4 and kl < change / 50, (kl, change)


def test_model_rope_is_applied_to_the_base_and_checked(tmp_path, corpus, tokenizer):  # noqa: F811
    tiny("llama", tokenizer).save_pretrained(tmp_path / "base")
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(tmp_path / "base"), "max_position_embeddings": LONG,
                    "rope": {"scaling": "yarn", "factor": 4}}
    model = build_model(validate(raw).model, len(tokenizer), 0)
    assert model.config.max_position_embeddings == LONG
    assert model.config.rope_parameters == {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0,
                                            "original_max_position_embeddings": ORIGINAL, "beta_fast": 32.0,
                                            "beta_slow": 1.0}
    raw["model"]["rope"] = {"scaling": "yarn"}
    with pytest.raises(ConfigError, match="scaling yarn needs a factor"):
        validate(raw)
