"""QLoRA on CPU (bitsandbytes >= 0.49): a 4-bit NF4 base with LoRA adapters trains with the step-0 evaluation
on, its gradients are those of an fp32 model holding the dequantized weights, the adapters are merged into
the full-precision base (not the 4-bit one), and a checkpoint holds only what trains and resumes exactly."""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import tiny_pipeline
from tokenmill import train
from tokenmill.config import ConfigError, validate

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture
def base(tmp_path, shards):
    """A 'pretrained' base with the corpus's tokenizer; widths are multiples of 64 (4-bit blocks)."""
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(shards / "tokenizer").save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def qlora_config(corpus, base, **train_overrides):
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base), "lora": {"r": 4, "alpha": 8},
                    "quantize": {"type": "nf4", "compute_dtype": "fp32"}, "embeddings": {"train": "none"}}
    raw["tokenize"]["tokenizer"] = str(base)
    raw["train"].update({"max_steps": 8, "save_every": 4, "eval_every": 4, "log_every": 1, "eval_at_start": True,
                         **train_overrides})
    return validate(raw)


def test_quantize_needs_a_base_and_lora(corpus):
    raw = tiny_pipeline(corpus)
    raw["model"]["quantize"] = {"bits": 4}
    with pytest.raises(ConfigError, match="quantize .a 4-bit base. needs init_from"):
        validate(raw)


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_qlora_trains_and_merges_into_the_full_precision_base(base, corpus, shards, tmp_path):
    cfg = qlora_config(corpus, base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    unregistered = [w for w in caught if "autograd kernel was not registered" in str(w.message)]
    assert not unregistered, unregistered[0].message
    curve = losses(tmp_path / "ck")
    assert curve[8] < curve[1]

    before = AutoModelForCausalLM.from_pretrained(base)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert "quantization_config" not in json.loads((tmp_path / "ck" / "final" / "config.json").read_text())
    from safetensors.torch import load_file
    lora = load_file(tmp_path / "ck" / "adapter" / "adapter_model.safetensors")
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    key = "model.layers.0.self_attn.q_proj.weight"
    merged_delta = after.state_dict()[key] - before.state_dict()[key]
    # base + B A x alpha/r exactly: the full-precision base, not its 4-bit rounding (off by ~1e-2 here)
    torch.testing.assert_close(merged_delta, (b @ a) * 2.0, atol=1e-6, rtol=1e-4)
    assert torch.equal(after.state_dict()["model.norm.weight"], before.state_dict()["model.norm.weight"])

    # A checkpoint holds only what trains, and exports to the same merged model.
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ck" / "step-00000008" / "model.safetensors"), "pt") as f:
        assert all("lora_" in k for k in f.keys())
    from tokenmill import export
    export.run(export.ExportConfig(), tmp_path / "ck" / "step-00000008", tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for name, value in after.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name], value)


def test_a_qlora_run_resumes_exactly(base, corpus, shards, tmp_path):
    import shutil
    cfg = qlora_config(corpus, base)
    run = tmp_path / "run"
    train.run(cfg.model, cfg.train, shards, run)
    straight = losses(run)
    shutil.rmtree(run / "step-00000008")  # as if killed after the step-4 checkpoint
    shutil.rmtree(run / "final")
    saved = (run / "step-00000004" / "state.json").stat().st_mtime_ns
    train.run(cfg.model, cfg.train, shards, run)
    assert (run / "step-00000004" / "state.json").stat().st_mtime_ns == saved  # resumed from it
    assert losses(run) == pytest.approx(straight, rel=1e-5)


def test_qlora_gradients_match_fp32_with_the_dequantized_weights(base, shards):
    """After an eval-mode forward (the step-0 evaluation), which repacks the 4-bit weights for bitsandbytes'
    fused CPU inference unless tokenmill turns it off."""
    from peft import LoraConfig, get_peft_model

    from tokenmill.model.quantize import QuantizeConfig, bnb_config, prepare_for_training
    quantized = AutoModelForCausalLM.from_pretrained(base, quantization_config=bnb_config(QuantizeConfig(compute_dtype="fp32")),
                                                     device_map="cpu", dtype=torch.float32)
    quantized = prepare_for_training(quantized, activation_checkpointing=False)
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():  # the reference holds exactly the weights the 4-bit layers compute with
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                reference.get_submodule(name).weight.copy_(weight.to(torch.float32))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    torch.manual_seed(1)
    quantized = get_peft_model(quantized, lora)
    torch.manual_seed(1)
    reference = get_peft_model(reference, lora)
    with torch.no_grad():
        for (_, p), (_, q) in zip(quantized.named_parameters(), reference.named_parameters()):
            if p.requires_grad:
                p.normal_(0, 0.05)
                q.copy_(p)
    ids = torch.randint(0, 320, (2, 32))
    quantized.eval()
    with torch.no_grad():
        quantized(input_ids=ids)  # the trap: this forward would repack the weights
    grads = {}
    for model in (quantized, reference):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads[model is quantized] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) == 12
    for name, grad in grads[True].items():
        assert grad is not None, name
        expected = grads[False][name]
        assert (grad - expected).norm() / expected.norm() < 0.03, name


def test_the_estimate_knows_the_4bit_base(base, corpus):
    from tokenmill.estimate import estimate
    cfg = qlora_config(corpus, base)
    plain = validate({**tiny_pipeline(corpus), "model": {"preset": None, "init_from": str(base), "lora": {"r": 4}}})
    four_bit, lora = estimate(cfg, "cpu")["memory_breakdown_gib"], estimate(plain, "cpu")["memory_breakdown_gib"]
    model = AutoModelForCausalLM.from_pretrained(base)
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    saved = (4 - cfg.model.quantize.bytes_per_param()) * linear / 2**30
    assert lora["weights"] - four_bit["weights"] == pytest.approx(saved)
