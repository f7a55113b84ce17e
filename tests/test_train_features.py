"""Document masking, LoRA and other families' continued pre-training, the chunked loss, metric sinks, the loss
guard, hub-cache resolution."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import tiny_pipeline
from tokenmill import export, train
from tokenmill.config import ConfigError, validate
from tokenmill.model.resolve import resolve_model_path
from tokenmill.train.data import document_positions
from tokenmill.train.loop import LossGuard, TrainingDiverged


def tiny_llama(vocab=64):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_document_positions_make_packed_documents_independent_without_a_mask(family):
    """Position ids that restart per document, and no attention mask: a document's logits are those of the
    document alone, and do not change when the document before it in the window changes."""
    from transformers import AutoConfig
    config = AutoConfig.for_model(family, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    model, eos = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval(), 0
    a, other_a, b = torch.tensor([5, 6, 7, eos]), torch.tensor([9, 3, 2, 8, 4, 1, eos]), torch.tensor([9, 10, 11, 12, 13])
    packed, repacked = torch.cat([a, b])[None], torch.cat([other_a, b])[None]
    extra = document_positions(packed, eos)
    assert set(extra) == {"position_ids"}  # nothing [T, T] travels with the batch
    assert extra["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4]]
    with torch.no_grad():
        masked = model(input_ids=packed, **extra, use_cache=False).logits[0]  # as the trainer calls it
        remasked = model(input_ids=repacked, **document_positions(repacked, eos), use_cache=False).logits[0]
        alone_a, alone_b = model(input_ids=a[None]).logits[0], model(input_ids=b[None]).logits[0]
        unmasked = model(input_ids=packed).logits[0]
    torch.testing.assert_close(masked[:4], alone_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[4:], alone_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(remasked[7:], masked[4:], rtol=1e-5, atol=1e-5)  # another document before b
    assert not torch.allclose(unmasked[4:], alone_b, atol=1e-3)  # without the positions b sees a
    from tokenmill.losses import next_token_loss
    labels = torch.roll(packed, -1, dims=1)
    with torch.no_grad():  # the trainer's own forward sees the documents apart too
        loss = next_token_loss(model, {"input_ids": packed, "labels": labels, **extra})
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(masked, labels[0]))


def base_model_dir(tmp_path, shards):
    """A 'pretrained' model folder with the corpus's tokenizer, to continue pre-training from."""
    from transformers import AutoTokenizer
    model = tiny_llama(vocab=320)
    model.save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(shards / "tokenizer").save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_lora_cpt_trains_adapters_and_embeddings_then_merges(shards, corpus, tmp_path):
    base = base_model_dir(tmp_path, shards)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base), "lora": {"r": 4, "alpha": 8},
                    "embeddings": {"lr_ratio": 0.5}}
    raw["tokenize"]["tokenizer"] = str(base)
    raw["train"].update(max_steps=8, save_every=4, eval_every=4)
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")

    before = AutoModelForCausalLM.from_pretrained(base)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert not any("lora" in k for k in after.state_dict())
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert "model.embed_tokens.weight" in changed and "model.layers.0.self_attn.q_proj.weight" in changed
    assert "model.norm.weight" not in changed  # frozen under LoRA
    adapter = json.loads((tmp_path / "ck" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4

    # A LoRA checkpoint exports on its own, merged, to the same weights as final/.
    export.run(export.ExportConfig(), tmp_path / "ck" / "step-00000008", tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    for key, value in after.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value)


def test_cpt_tokenizes_with_the_base_model_tokenizer_unless_told_otherwise(corpus):
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": "some/base"}
    assert validate(raw).tokenize.tokenizer == "some/base"
    raw["tokenize"] = {"tokenizer": "other/tok"}
    assert validate(raw).tokenize.tokenizer == "other/tok"


def test_tensorboard_sink_writes_events(shards, corpus, tmp_path):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=4, loggers=["jsonl", "tensorboard"])
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "ck" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/val/loss", "perf/tokens_per_s", "train/lr"} <= set(events.Tags()["scalars"])


def test_loss_guard_stops_on_nan_and_spikes():
    guard = LossGuard(spike_factor=2.0)
    for loss in [4.0, 3.9, 3.8]:
        guard.check(loss, 1)
    with pytest.raises(TrainingDiverged, match="spiked"):
        guard.check(9.0, 4)
    with pytest.raises(TrainingDiverged, match="nan"):
        LossGuard().check(float("nan"), 5)


def test_a_diverging_run_stops_and_keeps_its_last_checkpoint(shards, corpus, tmp_path):
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=40, lr_max=1e4, lr_min=1e3, grad_clip=1e9, save_every=1, log_every=1, eval_every=50)
    cfg = validate(raw)
    with pytest.raises(TrainingDiverged):
        train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    from tokenmill.checkpoints import checkpoint_dirs
    assert checkpoint_dirs(tmp_path / "ck") and not (tmp_path / "ck" / "final").exists()


def test_hf_urls_resolve_through_the_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    tiny_llama().save_pretrained(snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("hf://org/tiny") == snapshot
    with pytest.raises(FileNotFoundError, match="huggingface-cli download org/missing"):
        resolve_model_path("hf://org/missing")


def test_wandb_sink_runs_offline_without_a_key(shards, corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    raw = tiny_pipeline(corpus)
    raw["train"].update(max_steps=4, loggers=["wandb"], wandb_project="tokenmill-test")
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    # wandb's service process writes the run file and may still be flushing when finish() returns (CI read a
    # bare header once); at exit wandb tears the service down, which closes the file. Do the same here.
    import wandb
    wandb.teardown()
    runs = list((tmp_path / "ck" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    recorded = runs[0].read_bytes()
    assert b"train/loss" in recorded and b"val/val/loss" in recorded and b"perf/mfu" in recorded


def test_any_transformers_config_trains_from_scratch(shards, corpus, tmp_path):
    from transformers import Qwen2Config
    Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64).save_pretrained(tmp_path / "qwen2")
    raw = tiny_pipeline(corpus)
    raw["model"] = {"config": str(tmp_path / "qwen2")}  # the default preset gives way
    raw["train"].update(max_steps=6, eval_every=6, save_every=6)
    cfg = validate(raw)
    counts = train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == 320
    assert counts["val_loss"] < 6.0
    with pytest.raises(ConfigError, match="one of preset, init_from or config"):
        validate({"model": {"preset": "tiny", "config": str(tmp_path / "qwen2")}})


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_head_gives_the_loss_and_gradients_of_full_logits(tied):
    from tokenmill.losses import chunked_head, next_token_loss
    cfg = tiny_llama().config
    cfg.tie_word_embeddings = tied
    torch.manual_seed(0)
    reference, chunked = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    chunked.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, 64, (3, 17))
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    head = chunked_head(chunked)
    assert head is chunked.lm_head and chunked(input_ids=tokens).logits.shape[-1] == cfg.hidden_size
    expected, got = next_token_loss(reference, batch), next_token_loss(chunked, batch, head=head, chunk_tokens=7)
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected)
    grads = {n: p.grad for n, p in chunked.named_parameters()}
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert set(chunked.state_dict()) == set(reference.state_dict())  # checkpoints and exports unchanged


def test_chunked_head_declines_heads_it_cannot_reproduce():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from tokenmill.losses import chunked_head
    gemma_like = tiny_llama()
    gemma_like.config.model_type = "gemma2"  # soft-capped logits
    assert chunked_head(gemma_like) is None and "forward" not in vars(gemma_like.lm_head)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    assert chunked_head(qwen) is qwen.lm_head and chunked_head(gpt2) is gpt2.lm_head


def test_training_with_and_without_the_chunked_head_gives_the_same_losses(shards, corpus, tmp_path):
    losses = {}
    for chunk in (None, 100):
        raw = tiny_pipeline(corpus)
        raw["train"].update(max_steps=4, log_every=1, eval_every=2, loss_chunk_tokens=chunk)
        cfg = validate(raw)
        result = train.run(cfg.model, cfg.train, shards, tmp_path / f"ck{chunk}")
        rows = [json.loads(line) for line in (tmp_path / f"ck{chunk}" / "metrics.jsonl").read_text().splitlines()]
        losses[chunk] = [r["train/loss"] for r in rows if "train/loss" in r] + [result["val_loss"]]
    assert losses[None] == pytest.approx(losses[100], rel=1e-4)


def family_model(family: str, vocab: int):
    from transformers import (GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
    shape = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    return {"mistral": lambda: MistralForCausalLM(MistralConfig(**shape)),
            "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**shape))}[family]()


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gpt2"])
def test_cpt_from_other_model_families(family, shards, corpus, tmp_path):
    from transformers import AutoTokenizer
    base = tmp_path / "base"
    family_model(family, 320).save_pretrained(base)
    AutoTokenizer.from_pretrained(shards / "tokenizer").save_pretrained(base)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base)}
    raw["tokenize"]["tokenizer"] = str(base)
    raw["train"].update(max_steps=6, eval_every=6, save_every=3, lr_max=3e-3, log_every=1)
    cfg = validate(raw)
    counts = train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    rows = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]  # it learns
    before, after = AutoModelForCausalLM.from_pretrained(base), AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert type(after) is type(before) and counts["steps"] == 6
    assert any(not torch.equal(v, before.state_dict()[k]) for k, v in after.state_dict().items())


def test_a_lora_run_on_the_command_line_shows_no_library_noise(shards, corpus, tmp_path):
    """peft's import makes bitsandbytes warn that it could not fetch CPU kernels, and transformers issues
    FutureWarnings: they go to the stage's log file, the terminal keeps tokenmill's lines (a real process)."""
    import subprocess
    import sys

    import yaml
    base = base_model_dir(tmp_path, shards)
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base), "lora": {"r": 4, "alpha": 8}}
    raw["tokenize"]["tokenizer"] = str(base)
    raw["train"].update(max_steps=4, save_every=0, eval_every=0, activation_checkpointing=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "ck"
    done = subprocess.run([sys.executable, "-W", "always", "-m", "tokenmill", "train", str(shards), "-o", str(out),
                           "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    for noise in ("gemm_4bit_forward", "Warning", "warnings.warn"):
        assert noise not in terminal, terminal
    assert "[train]" in terminal and "[eval]" in terminal  # tokenmill's own lines stay
    assert (out / "logs" / "train.log").is_file()


def test_library_logs_keeps_tokenmill_on_the_terminal_and_sends_the_rest_to_the_file(tmp_path, capfd):
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from tokenmill.logs import library_logs
    terminal = logging.StreamHandler()
    logging.getLogger().addHandler(terminal)
    try:
        with library_logs(tmp_path / "x.log"):
            logging.getLogger("bitsandbytes.backends.cpu").warning("kernel noise")
            hf_logging.get_logger("transformers.modeling_utils").warning("hf noise")
            warnings.warn("a FutureWarning of a library", FutureWarning)
            logging.getLogger("tokenmill.train").warning("our own line")
        logging.getLogger("tokenmill.train").warning("after the block")
    finally:
        logging.getLogger().removeHandler(terminal)
    err = capfd.readouterr().err
    text = (tmp_path / "x.log").read_text()
    assert "kernel noise" in text and "hf noise" in text and "FutureWarning of a library" in text
    assert "kernel noise" not in err and "hf noise" not in err and "FutureWarning" not in err
    assert "our own line" in err and "after the block" in err
