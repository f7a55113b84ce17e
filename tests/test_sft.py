"""Supervised fine-tuning: the chat template token for token, loss on assistant tokens only, packing that does
not leak between conversations, the bad input named, and a run that learns its held-out answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokenmill.chat import ChatError, encode, render
from tokenmill.documents import Document
from tokenmill.sft.data import IGNORE, encode_all, pack

CHAT = [{"role": "user", "content": "What is Python?"}, {"role": "assistant", "content": "A language."},
        {"role": "user", "content": "Who made it?"}, {"role": "assistant", "content": "Guido van Rossum."}]


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2):
    return AutoTokenizer.from_pretrained(smollm2)


def test_training_tokens_are_the_chat_templates_and_the_assistant_mask_is_its_turns(smol_tokenizer):
    encoded = encode(smol_tokenizer, CHAT)
    served = smol_tokenizer.apply_chat_template(CHAT, tokenize=True)["input_ids"]
    assert encoded.ids.tolist() == served  # what transformers, vLLM and llama.cpp's server render
    prompt = smol_tokenizer.apply_chat_template(CHAT[:3], tokenize=True, add_generation_prompt=True)["input_ids"]
    assert encoded.ids[:len(prompt)].tolist() == prompt  # a served prompt is a prefix of what was trained
    assert smol_tokenizer.decode(encoded.ids[encoded.assistant]) == \
        "A language.<|im_end|>\nGuido van Rossum.<|im_end|>\n"


def test_the_loss_is_the_assistant_tokens_alone_and_neighbours_change_nothing(smollm2, smol_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32, attn_implementation="sdpa").eval()
    other = [{"role": "user", "content": "Name a snake."}, {"role": "assistant", "content": "A python, of course."}]
    a, b = encode(smol_tokenizer, CHAT), encode(smol_tokenizer, other)
    alone = pack([a], 128, 0, 0, smol_tokenizer)
    together = pack([b, a], 160, 0, 0, smol_tokenizer)
    assert len(together) == 1
    assert (alone.labels != IGNORE).sum() == a.assistant[1:].sum()
    with torch.no_grad():
        def per_token(rows):
            batch = rows.batch(np.arange(len(rows)))
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            return torch.nn.functional.cross_entropy(logits[0], batch["labels"][0], reduction="none")
        mine, shared = per_token(alone), per_token(together)
    n = len(a) - 1
    row = together.input_ids[0].tolist()
    at = next(i for i in range(len(row) - n + 1) if row[i:i + n] == a.ids[:-1].tolist())
    assert together.position_ids[0, at] == 0 and (together.labels[0, at:at + n] == alone.labels[0, :n]).all()
    scored = torch.from_numpy(alone.labels[0, :n] != IGNORE)
    torch.testing.assert_close(shared[at:at + n][scored], mine[:n][scored], rtol=1e-4, atol=1e-4)
    from tokenmill.losses import next_token_loss
    batch = alone.batch(np.arange(1))
    assert next_token_loss(model, batch).item() == pytest.approx(mine[:n][scored].mean().item(), rel=1e-5)


def test_overlong_conversations_are_counted_and_templates_that_fail_name_the_line(smol_tokenizer):
    docs = [Document(id=f"chats.jsonl:{i}", text="x", metadata={"messages": CHAT, "where": f"chats.jsonl:{i}"})
            for i in range(1, 4)]
    long = len(encode(smol_tokenizer, CHAT)) - 1
    assert encode_all(docs, smol_tokenizer, long, "drop", 0).counts["dropped_too_long"] == 0
    dropped = encode_all(docs, smol_tokenizer, long - 1, "drop", 0)
    assert dropped.counts["dropped_too_long"] == 3 and not dropped.train
    cut = encode_all(docs, smol_tokenizer, long - 1, "truncate", 0)
    assert cut.counts["truncated"] == 3 and all(len(c) == long for c in cut.train)
    smol_tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer.name_or_path)
    smol_tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                                    "{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}")
    bad = [Document(id="c:7", text="x", metadata={"messages": [{"role": "system", "content": "s"}, *CHAT],
                                                  "where": "chats.jsonl:7"})]
    with pytest.raises(ChatError, match="chats.jsonl:7: the chat template cannot render it.*no system role"):
        encode_all(bad, smol_tokenizer, 512, "drop", 0)


def test_ingest_reads_chats_and_names_the_bad_records(tmp_path, caplog):
    from tokenmill.documents import read_documents
    from tokenmill.ingest import IngestConfig
    from tokenmill.ingest import run as ingest
    lines = [{"messages": CHAT}, {"prompt": "2+2?", "completion": "4"},
             {"messages": [{"role": "user", "content": "hi"}]},            # no assistant turn
             {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
             {"text": "plain"}]
    (tmp_path / "chats.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    counts = ingest(IngestConfig(paths=[str(tmp_path / "chats.jsonl")], records="chat"), tmp_path / "docs")
    assert counts["docs_out"] == 2 and counts["bad_records"] == 3
    docs = list(read_documents(tmp_path / "docs"))
    assert docs[1].metadata["messages"][1] == {"role": "assistant", "content": "4"}
    assert "chats.jsonl:3: no assistant turn" in caplog.text and "chats.jsonl:4: messages[0]: role 'tool'" in caplog.text


def write_chats(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    animals = ["cat", "dog", "horse", "owl", "fox", "bee", "cow", "hen"]
    with path.open("w") as f:
        for i in range(n):
            a = animals[rng.integers(len(animals))]
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Which sound does the {a} make? ({i})"},
                                             {"role": "assistant", "content": f"The {a} makes the {a} sound."}]}) + "\n")
    return path


def test_sft_learns_the_held_out_answers_and_keeps_the_template(shards, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenmill.ingest import run as ingest
    from tokenmill.sft import SFTConfig, run
    tokenizer = AutoTokenizer.from_pretrained(shards / "tokenizer")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    cfg = SFTConfig(data={"paths": [str(write_chats(tmp_path / "chats.jsonl", 120))]}, held_out=0.2,
                    train={"seq_len": 256, "micro_batch_size": 2, "max_steps": 40, "lr_max": 3e-3, "eval_every": 0,
                           "save_every": 0})
    ingest(cfg.data, tmp_path / "chats")
    counts = run(cfg, tmp_path / "m", tmp_path / "chats", tmp_path / "sft")
    results = json.loads((tmp_path / "sft" / "results.json").read_text())
    assert results["template"] == "chatml" and counts["held_out_conversations"] > 10
    assert counts["train_rows"] < counts["train_conversations"]  # packed several to a row
    assert results["after"]["bits_per_byte"] < 0.7 * results["before"]["bits_per_byte"]
    final = AutoTokenizer.from_pretrained(tmp_path / "sft" / "final")
    assert render(final, CHAT[:1], True).endswith("<|im_start|>assistant\n")  # trained as it will be served


def test_a_run_with_an_sft_section_fine_tunes_then_evaluates_and_exports_that_model(tiny_config, tmp_path):
    from tokenmill.config import validate
    from tokenmill.pipeline import run_pipeline
    tiny_config["model"]["max_position_embeddings"] = 256
    tiny_config["sft"] = {"data": {"paths": [str(write_chats(tmp_path / "chats.jsonl", 60))]}, "held_out": 0.2,
                          "train": {"seq_len": 96, "micro_batch_size": 4, "max_steps": 6, "eval_every": 0}}
    out = run_pipeline(validate(tiny_config), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "50_eval" / "results.json").read_text())["model"].endswith("42_sft")
    results = json.loads((tmp_path / "run" / "42_sft" / "results.json").read_text())
    assert results["counts"]["truncated"] > 0  # seq_len 96 is shorter than some chats: counted, not silent
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(out["model"]).chat_template


def test_tokenmill_sft_from_the_command_line(smollm2, tmp_path, capsys):
    from tokenmill.cli import main
    code = main(["sft", str(smollm2), str(write_chats(tmp_path / "chats.jsonl", 30)), "-o", str(tmp_path / "sft"),
                 "--set", "sft.train.max_steps=2", "--set", "sft.train.warmup_steps=1", "--set", "sft.train.seq_len=128", "--set", "sft.held_out=0.2",
                 "--set", "sft.lora.r=4"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "template: own" in printed and "held-out answers:" in printed
    assert (tmp_path / "sft" / "final" / "config.json").is_file() and (tmp_path / "sft" / "adapter").is_dir()


def test_a_chat_set_scores_the_answers_in_the_template(smollm2, smol_tokenizer, tmp_path):
    from tokenmill.evaluation import EvalConfig, evaluate
    from tokenmill.evaluation.chats import is_chat_set
    chats = write_chats(tmp_path / "held.jsonl", 12)
    (tmp_path / "plain.jsonl").write_text(json.dumps({"text": "not a chat"}) + "\n")
    assert is_chat_set(chats) and not is_chat_set(tmp_path / "plain.jsonl")
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    results, units = evaluate(model, smol_tokenizer, EvalConfig(), {"answers": chats}, 256, tmp_path / "cache")
    r = results["sets"]["answers"]
    assert r["interval_units"] == "conversations" and r["n_units"] == 12
    # by hand: the first conversation's answer tokens alone
    conv = encode(smol_tokenizer, json.loads(chats.read_text().splitlines()[0])["messages"])
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(conv.ids[None, :-1])).logits[0]
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(conv.ids[1:]), reduction="none")
    assert units["sets"]["answers"].num[0] == pytest.approx(ce[torch.from_numpy(conv.assistant[1:])].sum().item(), rel=1e-4)
    assert r["loss_ci"][0] <= r["loss"] <= r["loss_ci"][1]


@pytest.mark.slow
def test_the_fine_tuned_model_served_answers_a_chat_as_transformers_does(smollm2, tmp_path):
    pytest.importorskip("xllamacpp")
    openai = pytest.importorskip("openai")
    import signal

    from tests.test_serve import free_port, start_server
    from tokenmill.cli import main
    assert main(["sft", str(smollm2), str(write_chats(tmp_path / "chats.jsonl", 24)), "-o", str(tmp_path / "sft"),
                 "--set", "sft.train.max_steps=3", "--set", "sft.train.warmup_steps=1", "--set", "sft.held_out=0.0",
                 "--set", "sft.train.seq_len=128", "--set", "sft.train.lr_max=1e-3"]) == 0
    final = tmp_path / "sft" / "final"
    port = free_port()
    proc = start_server(final, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        messages = [{"role": "user", "content": "Which sound does the owl make?"}]
        served = client.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = served.choices[0].message.content
    assert text and text == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
