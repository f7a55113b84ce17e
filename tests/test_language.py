"""A new language for a base model: the tokenizer grows by merges learned from the new text (base ids and
English tokenization unchanged, every new token reachable), fertility before and after, the embedding rows
transferred (FVT) with the base's logits kept, the new rows trained under LoRA and full training, and the
extended model in llama.cpp."""

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import make_text, tiny_pipeline
from tokenmill.model import embeddings
from tokenmill.tokenize.extend import CannotExtend, ExtendConfig, base_tokenizer, extend, read_extension, token_bytes
from tokenmill.tokenize.fertility import changed_share, fertility
from tokenmill.tokenize.scripts import implied_scripts, start_script
from tokenmill.tokenize.tokenizer import train_bpe

RU = ("система пакет управление установка сервер файл конфигурация пользователь сеть обновление версия "
      "программа команда каталог безопасность служба ядро модуль загрузка репозиторий зависимость архив "
      "при для это что как его она они можно нужно будет если когда также через после перед между").split()
JA = "パッケージ の 管理 システム を 使う サーバー 設定 ファイル ユーザー ネットワーク 更新 です ます こと".split()
# Scripts a byte-level base spells one byte per token (Korean syllables take three bytes, Thai letters three).
KO = ("이 대화 상자에서 이미지의 크기를 조정할 수 있습니다 정확한 값을 입력하십시오 레이어 선택 도구 "
      "색상 필터 경로 브러시 그림 창 메뉴 명령 옵션 설정 파일 저장 열기 편집 보기 도움말 사용자 정보").split()
TH = ("โปรแกรม นี้ ช่วย ให้ คุณ ปรับ ขนาด ภาพ ได้ อย่าง ง่ายดาย เลือก ไฟล์ บันทึก เปิด แก้ไข มุมมอง "
      "เครื่องมือ หน้าต่าง ข้อความ ตาราง แทรก รูปแบบ ตัวเลือก การตั้งค่า ช่วยเหลือ").split()
# Characters that share a lead byte with them (Yi and Vai with Hangul's EA; Lao and Devanagari with Thai's
# E0): text in them must keep the base's tokens.
NEIGHBOURS = "ꀀꀁꀂ ꀃꀄ ꔀꔁꔂ ສະບາຍດີ ພາສາລາວ नमस्ते दुनिया"
ENGLISH_HARD = "The café’s “naïve” résumé — 42 items… «quoted» and code: apt-get install -y nginx; x = f(3)"


def russian_text(rng, n_sentences):
    return "\n".join(" ".join(rng.choice(RU) for _ in range(rng.randint(6, 12))).capitalize() + "."
                     for _ in range(n_sentences))


def japanese_text(rng, n_sentences):
    return "\n".join("".join(rng.choice(JA) for _ in range(rng.randint(5, 10))) + "。" for _ in range(n_sentences))


@pytest.fixture(scope="module")
def base():
    rng = random.Random(0)
    return train_bpe([make_text(rng, 20) for _ in range(300)], 400)


@pytest.fixture(scope="module")
def target_texts():
    rng = random.Random(1)
    return [russian_text(rng, 30) + "\napt-get install nginx\n" + japanese_text(rng, 10) for _ in range(40)]


@pytest.fixture(scope="module")
def extended(base, target_texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ext") / "tok"
    record = extend(base, "base", target_texts, ExtendConfig(add=200, scripts=["CYRILLIC", "KATAKANA", "HIRAGANA",
                                                                              "CJK"]), out)
    return AutoTokenizer.from_pretrained(out), record, out


def test_base_tokens_keep_their_ids_and_merges_are_appended(base, extended):
    tok, record, out = extended
    assert record["added"] == 200 and len(tok) == len(base) + 200
    vocab = tok.get_vocab()
    assert all(vocab[t] == i for t, i in base.get_vocab().items())
    spec, base_spec = json.loads((out / "tokenizer.json").read_text()), json.loads(base.backend_tokenizer.to_str())
    assert spec["model"]["merges"][:len(base_spec["model"]["merges"])] == base_spec["model"]["merges"]
    assert len(spec["model"]["merges"]) == len(base_spec["model"]["merges"]) + 200
    assert [t["id"] for t in record["new_tokens"]] == list(range(len(base), len(base) + 200))
    assert record["padded_vocab_size"] % 64 == 0 and record["padded_vocab_size"] >= len(tok)
    assert read_extension(out) == record
    assert base_tokenizer(tok, record).get_vocab() == base.get_vocab()


def test_every_new_token_is_reachable_and_english_tokenizes_as_before(base, extended, target_texts):
    tok, record, _ = extended
    model = tok.backend_tokenizer.model
    for new in record["new_tokens"]:
        assert [t.id for t in model.tokenize(new["token"])] == [new["id"]], new  # its bytes as one pre-token
        try:
            text = token_bytes(new["token"]).decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: reachable only inside its bytes, checked above
        assert tok(text, add_special_tokens=False).input_ids == [new["id"]], (new, text)  # the whole tokenizer
    english = [make_text(random.Random(5), 30) for _ in range(20)] + [ENGLISH_HARD]
    assert changed_share(base, tok, english) == 0.0
    assert changed_share(base, tok, target_texts) > 0.5


def test_fertility_falls_on_the_new_script_and_not_on_ascii(base, extended, target_texts):
    tok, _, _ = extended
    before, after = fertility(base, target_texts), fertility(tok, target_texts)
    assert after["own_script"]["tokens_per_byte"] < 0.6 * before["own_script"]["tokens_per_byte"]
    assert after["ascii"] == before["ascii"]  # "apt-get install nginx" is left alone
    assert after["all"]["bytes"] == before["all"]["bytes"] == sum(len(t.encode()) for t in target_texts)
    assert after["all"]["tokens"] == sum(len(tok(t, add_special_tokens=False).input_ids) for t in target_texts)
    assert fertility(base, [japanese_text(random.Random(0), 50)])["all"]["tokens_per_word"] is None  # no spaces
    assert before["all"]["tokens_per_word"] > after["all"]["tokens_per_word"] > 0


def test_a_script_rule_that_could_change_english_or_names_no_script_is_refused():
    with pytest.raises(ValueError, match="scripts: any would let new merges change the tokens of English"):
        ExtendConfig(add=10, scripts="any")
    with pytest.raises(ValueError, match=r"unknown script 'korean' \(did you mean HANGUL\?\)"):
        ExtendConfig(add=10, scripts=["korean"])
    assert ExtendConfig(add=10, scripts=["hangul", "THAI"]).scripts == ["HANGUL", "THAI"]


def test_which_bytes_imply_a_script():
    assert start_script("갈".encode()[:2]) == "HANGUL"  # EA B0: every completion is a syllable, U+AC00..U+AC3F
    assert start_script("갈".encode()[:1]) is None      # EA alone: Yi and Vai too
    assert start_script("ก".encode()[:2]) == "THAI"     # E0 B8: Thai (its unassigned points count for none)
    assert start_script("ก".encode()[:1]) is None
    assert implied_scripts("조".encode()) == {"HANGUL"}
    assert implied_scripts("조".encode()[1:]) == set()   # starts inside a character: any lead may precede
    assert implied_scripts(b" " + "조".encode()[:2]) == {"HANGUL"}
    assert implied_scripts("é—«".encode()) == {"LATIN"} and implied_scripts(b"abc") == set()


@pytest.mark.parametrize("words,script", [(KO, "HANGUL"), (TH, "THAI")], ids=["korean", "thai"])
def test_a_script_the_base_splits_into_bytes_gets_whole_characters(base, words, script, tmp_path):
    rng = random.Random(2)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 12))) + ". apt-get install gimp\n"
             for _ in range(300)]
    record = extend(base, "base", texts, ExtendConfig(add=120), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert record["rules"]["scripts"] == [script]
    new = [token_bytes(t["token"]) for t in record["new_tokens"]]
    assert all(script in implied_scripts(raw) for raw in new)
    assert any(start_script(raw) == script for raw in new)  # first merges of a character's bytes were taken
    before, after = fertility(base, texts), fertility(tok, texts)
    assert before["own_script"]["tokens_per_byte"] > 0.9  # one token per byte: the base never merged them
    assert after["own_script"]["tokens_per_byte"] < 0.55 * before["own_script"]["tokens_per_byte"]
    for t in record["new_tokens"]:
        assert [x.id for x in tok.backend_tokenizer.model.tokenize(t["token"])] == [t["id"]], t
    english = [make_text(random.Random(5), 30) for _ in range(10)] + [ENGLISH_HARD, NEIGHBOURS]
    assert changed_share(base, tok, english) == 0.0


def test_a_small_corpus_unknown_kinds_and_writes_nothing(base, tmp_path):
    with pytest.raises(ValueError, match=r"yields \d+ new tokens .* not the 5,000 asked: ask for \d+"):
        extend(base, "base", [russian_text(random.Random(0), 5)], ExtendConfig(add=5000), tmp_path / "small")
    assert not (tmp_path / "small").exists()
    few = extend(base, "base", [russian_text(random.Random(0), 5)], ExtendConfig(add=5000, allow_fewer=True),
                 tmp_path / "few")
    assert 0 < few["added"] < 5000

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0, byte_fallback=False))
    with pytest.raises(CannotExtend, match="a Unigram tokenizer"):
        extend(PreTrainedTokenizerFast(tokenizer_object=unigram, eos_token="<unk>"), "t5ish", ["text"],
               ExtendConfig(add=5), tmp_path / "u")
    llama2 = Tokenizer(models.BPE({"<unk>": 0, "▁": 1, "a": 2}, [], unk_token="<unk>", byte_fallback=True))
    llama2.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    llama2.pre_tokenizer = pre_tokenizers.Metaspace()
    llama2.decoder = decoders.Metaspace()
    with pytest.raises(CannotExtend, match="SentencePiece-style BPE .*Llama 2"):
        extend(PreTrainedTokenizerFast(tokenizer_object=llama2, eos_token="<unk>"), "llama2ish", ["text"],
               ExtendConfig(add=5), tmp_path / "s")
    assert not (tmp_path / "u").exists() and not (tmp_path / "s").exists()


def tiny_base(base, tied):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(base), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_transfer_keeps_the_base_logits_and_initialises_by_fvt(base, extended, tied):
    tok, record, _ = extended
    model = tiny_base(base, tied)
    ids = torch.tensor([base("The king and queen of the realm", add_special_tokens=False).input_ids])
    with torch.no_grad():
        before = model(ids).logits
        old_input = model.get_input_embeddings().weight.clone()
        old_head = model.get_output_embeddings().weight.clone()
    embeddings.transfer(model, record)
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == record["padded_vocab_size"]
    assert (model.get_output_embeddings().weight is rows) == tied and model.config.tie_word_embeddings == tied
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after[..., :len(base)], before, rtol=0, atol=0)
    new = record["new_tokens"][7]
    torch.testing.assert_close(rows[new["id"]], old_input[new["base_ids"]].mean(0))
    if not tied:  # the head's own rows, not the input's
        torch.testing.assert_close(model.get_output_embeddings().weight[new["id"]], old_head[new["base_ids"]].mean(0))

    mean_model = tiny_base(base, tied)
    embeddings.transfer(mean_model, record, embeddings.EmbeddingsConfig(init="mean"))
    new_rows = mean_model.get_input_embeddings().weight[[t["id"] for t in record["new_tokens"]]]
    assert torch.equal(new_rows[0], new_rows[-1])  # one vector for every new row


def test_calibrated_head_and_distilled_rows(base, extended, target_texts):
    import numpy as np
    tok, record, _ = extended

    class Shard:  # the training text in extended ids, as a tokenize shard holds it
        tokens = np.array([i for t in target_texts for i in tok(t, add_special_tokens=False).input_ids])
    corpus = embeddings.corpus_sample([Shard], record, seq_len=64, windows=8)
    assert all(len(b) <= 64 and int(e[-1]) == len(b) - 1 for _, b, e in corpus.pairs)
    model = tiny_base(base, tied=True)
    english = torch.tensor([base("The king and queen of the realm", add_special_tokens=False).input_ids])
    with torch.no_grad():
        old_rows, before = model.get_input_embeddings().weight.clone(), model(english).logits[0]
    done = embeddings.transfer(model, record, embeddings.EmbeddingsConfig(init="calibrated", distill_steps=30),
                               corpus=corpus)
    rows, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert done["untied"] and head is not rows and not model.config.tie_word_embeddings
    assert done["head_parameters_added"] == head.numel() and abs(done["h_dot_v"][0] - 1) < 0.05
    assert done["distill_loss"][1] < done["distill_loss"][0]  # the new input rows learned
    base_ids = list(range(len(base)))
    assert torch.equal(rows[base_ids], old_rows[base_ids])  # only new input rows moved
    # a new token's output row is its first piece's, moved along v by the log of its share of the piece's group
    # (the piece's own row moved by its share, when only the target's script uses it)
    v = embeddings.fit_direction(embeddings.base_hidden_states(tiny_base(base, tied=True), corpus.pairs), "cpu")[0]
    counts = corpus.counts.astype(float) + 0.5
    fvt_head = tiny_base(base, tied=True)
    embeddings.transfer(fvt_head, record)
    for x in sorted(record["new_tokens"], key=lambda t: -corpus.counts[t["id"]])[:20]:
        f = x["base_ids"][0]
        if not x["first_piece_in_script"]:  # "Ġ": English predicts it too, the group keeps FVT rows
            torch.testing.assert_close(head[x["id"]], fvt_head.get_output_embeddings().weight[x["id"]])
            continue
        group = [f] + [t["id"] for t in record["new_tokens"] if t["base_ids"][0] == f]
        share = lambda i: float(np.log(counts[i] / counts[group].sum()))  # noqa: E731
        torch.testing.assert_close(head[x["id"]] - head[f], (share(x["id"]) - share(f)) * v, rtol=1e-4, atol=1e-5)
    # every base id scores English as the base did, but the pieces only the target's script uses
    lowered = {t["base_ids"][0] for t in record["new_tokens"] if t["first_piece_in_script"]}
    assert lowered and len(lowered) < len({t["base_ids"][0] for t in record["new_tokens"]})  # "Ġ" is not lowered
    keep = [i for i in base_ids if i not in lowered]
    with torch.no_grad():
        torch.testing.assert_close(model(english).logits[0][:, keep], before[:, keep])
    line = embeddings.describe_transfer(done)
    assert "untied" in line and f"+{head.numel() / 1e6:.1f}M parameters" in line and "distilled" in line


def extended_run(tmp_path, corpus, base_tok, target_texts, tied, **model_extra):
    """A base model folder, an English + Russian corpus tokenized with its extended tokenizer, and a config."""
    from tokenmill.ingest import IngestConfig
    from tokenmill.ingest import run as ingest
    from tokenmill.tokenize import TokenizeConfig
    from tokenmill.tokenize import run as tokenize
    base_dir = tmp_path / f"base-{tied}"
    tiny_base(base_tok, tied).save_pretrained(base_dir)
    base_tok.save_pretrained(base_dir)
    (corpus / "ru.txt").write_text("\n\n".join(target_texts))
    ingest(IngestConfig(paths=[str(corpus)]), tmp_path / f"docs-{tied}")
    tokenize(TokenizeConfig(tokenizer=str(base_dir), extend=ExtendConfig(add=100, scripts=["CYRILLIC"]),
                            val_fraction=0.15), tmp_path / f"docs-{tied}", tmp_path / f"shards-{tied}")
    raw = tiny_pipeline(corpus)
    raw["model"] = {"preset": None, "init_from": str(base_dir), **model_extra}
    raw["train"].update(max_steps=6, save_every=3, eval_every=3, lr_max=1e-2, seq_len=32)
    return base_dir, tmp_path / f"shards-{tied}", raw


def transferred_start(base_tok, base_dir, record, tied):
    """The model training starts from: the base with its rows transferred."""
    start = AutoModelForCausalLM.from_pretrained(base_dir)
    embeddings.transfer(start, record)
    return start


@pytest.mark.parametrize("tied, lora, rows", [(True, True, "new"), (False, True, "all"), (True, False, "new")])
def test_new_rows_train_old_ones_as_configured_and_a_tie_stays(base, target_texts, corpus, tmp_path, tied, lora, rows):
    from tokenmill import train
    from tokenmill.config import validate
    extra = {"lora": {"r": 4, "alpha": 8}} if lora else {}
    base_dir, shards, raw = extended_run(tmp_path, corpus, base, target_texts, tied,
                                         embeddings={"train": rows}, **extra)
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    record = read_extension(shards / "tokenizer")
    start = transferred_start(base, base_dir, record, tied)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert after.config.tie_word_embeddings == tied
    assert (after.get_output_embeddings().weight is after.get_input_embeddings().weight) == tied
    new_ids, old_ids = [t["id"] for t in record["new_tokens"]], list(range(len(base)))
    for name in ("get_input_embeddings", "get_output_embeddings"):
        trained, initial = getattr(after, name)().weight.detach(), getattr(start, name)().weight.detach()
        assert trained.shape[0] == record["padded_vocab_size"]
        assert torch.equal(trained[old_ids], initial[old_ids]) == (rows == "new"), name
        assert not torch.allclose(trained[new_ids], initial[new_ids]), name
        padding = list(range(record["vocab_size"], record["padded_vocab_size"]))
        assert torch.equal(trained[padding], initial[padding]) or rows == "all"


def test_new_rows_first_trains_only_the_new_rows(base, target_texts, corpus, tmp_path):
    from safetensors.torch import load_file
    from tokenmill import train
    from tokenmill.config import validate
    base_dir, shards, raw = extended_run(tmp_path, corpus, base, target_texts, True,
                                         embeddings={"new_rows_first_steps": 3})
    cfg = validate(raw)
    train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    record = read_extension(shards / "tokenizer")
    initial = transferred_start(base, base_dir, record, True).state_dict()
    at3 = load_file(tmp_path / "ck" / "step-00000003" / "model.safetensors")
    at6 = load_file(tmp_path / "ck" / "step-00000006" / "model.safetensors")
    new_ids = [t["id"] for t in record["new_tokens"]]
    embed = next(n for n in ("model.embed_tokens.weight", "lm_head.weight") if n in at3)  # one name for the tie
    for name, value in at3.items():
        if name not in (embed, "lm_head.weight"):  # the head is tied to the embedding
            assert torch.equal(value, initial[name]), name  # only the embedding moved in the first phase
    assert torch.equal(at3[embed][:len(base)], initial[embed][:len(base)])
    assert not torch.equal(at3[embed][new_ids], initial[embed][new_ids])
    assert not torch.equal(at6["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(at6[embed][:len(base)], initial[embed][:len(base)])  # then all rows (train: all)


def test_pipeline_extends_on_the_named_dataset_and_reports_fertility_then_llama_cpp_agrees(
        base, target_texts, corpus, tmp_path, capsys):
    import yaml
    from tokenmill.cli import main
    base_dir = tmp_path / "base"
    tiny_base(base, True).save_pretrained(base_dir)
    base.save_pretrained(base_dir)
    ru = tmp_path / "ru"
    ru.mkdir()
    for i, text in enumerate(target_texts):
        (ru / f"ru{i:02d}.txt").write_text(text)
    raw = tiny_pipeline(corpus)
    del raw["ingest"]
    raw["datasets"] = {"en": {"paths": [str(corpus)]}, "ru": {"paths": [str(ru)]}}
    raw["filter"] = {"steps": [{"name": "length", "min_chars": 100}]}
    raw["tokenize"] = {"extend": {"add": 150, "datasets": ["ru"]}, "val_fraction": 0.15}
    raw["model"] = {"preset": None, "init_from": str(base_dir)}
    raw["mixture"] = {"stages": [{"weights": {"en": 0.3, "ru": 0.7}}]}
    raw["train"].update(max_steps=8, save_every=4, eval_every=4, lr_max=1e-2, seq_len=32)
    raw["export"] = {"formats": ["hf", "gguf"], "gguf_outtypes": ["f16"]}
    raw["generate"] = {"prompt": "Система", "max_new_tokens": 8}
    config = tmp_path / "lang.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    assert main(["run", str(config), "-o", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "extended" in out and "bits/byte (extended tokenizer" in out
    assert "train tokens en " in out and " bytes), ru " in out  # each dataset's tokens and bytes
    record = read_extension(run / "30_tokenizer" / "tokenizer")
    # auto: the scripts of >= 5% of the text's non-ASCII letters (the Japanese lines are few)
    assert record["added"] == 150 and record["rules"]["scripts"] == ["CYRILLIC", "KATAKANA"]
    ru_counts = json.loads((run / "datasets" / "ru" / "30_shards" / "manifest.json").read_text())["counts"]
    assert ru_counts["fertility"]["ratio"]["own_script"] < 0.6 and ru_counts["fertility"]["ratio"]["ascii"] == 1.0
    en_counts = json.loads((run / "datasets" / "en" / "30_shards" / "manifest.json").read_text())["counts"]
    assert en_counts["fertility"]["ratio"]["all"] == 1.0  # English keeps the base's tokens
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["step"] == 0 and "val/ru/bits_per_byte" in r for r in rows)  # the extended model at step 0
    report = (run / "report.html").read_text()
    assert "<h2>Vocabulary</h2>" in report and 'alt="bits per byte"' in report and "own script" in report
    card = (run / "60_export" / "README.md").read_text()
    assert "## Tokenizer" in card and "| ru | own script |" in card and "bits_per_byte before" in card

    hf = AutoTokenizer.from_pretrained(run / "60_export")
    assert len(hf) == record["vocab_size"]
    from tokenmill.export.llamacpp import LlamaCpp
    gguf_file = next((run / "60_export").glob("*-f16.gguf"))
    llm = LlamaCpp(gguf_file, n_ctx=128, threads=2)
    for text in ("Система управление пакет через сервер.", "パッケージの管理システムを使う。", ENGLISH_HARD):
        ids = hf(text, add_special_tokens=False).input_ids
        assert llm.tokenize(text) == ids, text
    assert any(i >= len(base) for i in hf("Система управление пакет", add_special_tokens=False).input_ids)
    greedy = ["--prompt", "Система управление", "--max-new-tokens", "10", "--temperature", "0"]
    capsys.readouterr()
    assert main(["generate", str(gguf_file), *greedy]) == 0
    from_gguf = capsys.readouterr().out
    assert main(["generate", str(run / "60_export"), *greedy]) == 0
    assert capsys.readouterr().out == from_gguf


def test_a_run_with_calibrated_rows_says_the_head_was_untied_and_resumes_without_distilling_again(
        base, target_texts, corpus, tmp_path, capsys):
    from tokenmill import train
    from tokenmill.config import validate
    base_dir, shards, raw = extended_run(tmp_path, corpus, base, target_texts, True,
                                         embeddings={"init": "calibrated", "distill_steps": 4})
    raw["train"]["max_steps"] = 3
    cfg = validate(raw)
    counts = train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    out = capsys.readouterr().out
    assert "[embeddings] 100 new rows: input rows by FVT, output rows by their first base piece" in out
    assert "the tied head was untied" in out and counts["embeddings"]["untied"]
    from tokenmill.export.card import training_section
    from tokenmill.stage import MANIFEST
    (tmp_path / "run" / "40_checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "40_checkpoints" / MANIFEST).write_text(json.dumps({"counts": counts}))
    card = "\n".join(training_section(tmp_path / "run"))
    assert "the tied head was untied so that new tokens' output rows can differ from their input rows" in card
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "final")
    assert not final.config.tie_word_embeddings
    assert final.get_output_embeddings().weight is not final.get_input_embeddings().weight
    cfg.train.max_steps = 6  # resumed: the rows come from the checkpoint, nothing is distilled again
    resumed = train.run(cfg.model, cfg.train, shards, tmp_path / "ck")
    assert resumed["steps"] == 6 and "distill_loss" not in resumed["embeddings"] and resumed["embeddings"]["untied"]

    plain_dir, plain_shards = tmp_path / "plain", tmp_path / "plain-shards"
    from tokenmill.tokenize import TokenizeConfig
    from tokenmill.tokenize import run as tokenize
    tokenize(TokenizeConfig(tokenizer=str(base_dir), val_fraction=0.15), tmp_path / "docs-True", plain_shards)
    with pytest.raises(ValueError, match="init: calibrated and distill_steps initialise the rows of an extended"):
        train.run(cfg.model, cfg.train, plain_shards, plain_dir)
