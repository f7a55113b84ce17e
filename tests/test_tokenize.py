import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from tokenmill.documents import Document, read_documents, write_documents
from tokenmill.tokenize import TokenizeConfig, run, split_of, validation_ids
from tokenmill.tokenize.shards import ShardWriter, check_split, open_shard, open_split, read_meta


@pytest.fixture
def tokenized(tmp_path, corpus):
    from tokenmill.ingest import IngestConfig
    from tokenmill.ingest import run as ingest
    ingest(IngestConfig(paths=[str(corpus)]), tmp_path / "docs")
    counts = run(TokenizeConfig(vocab_size=300, val_fraction=0.2), tmp_path / "docs", tmp_path / "shards")
    return tmp_path / "docs", tmp_path / "shards", counts


def test_docs_to_shards_to_text_is_lossless(tokenized):
    docs_dir, shards, counts = tokenized
    tok = AutoTokenizer.from_pretrained(shards / "tokenizer")
    val_ids = validation_ids(docs_dir, TokenizeConfig(val_fraction=0.2))
    originals = list(read_documents(docs_dir))
    decoded = {split: [tok.decode(d.tolist()) for s in open_split(shards / split) for d in s.documents()]
               for split in ("train", "val")}
    assert decoded["train"] == [d.text for d in originals if d.id not in val_ids]
    assert decoded["val"] == [d.text for d in originals if d.id in val_ids]
    assert counts["train_n_docs"] + counts["val_n_docs"] == len(originals)


def test_documents_end_with_eos_and_meta_counts_match(tokenized):
    _, shards, counts = tokenized
    meta = check_split(shards / "train")
    shard = open_split(shards / "train")[0]
    ends = np.append(shard.doc_offsets[1:], len(shard.tokens)) - 1
    assert (shard.tokens[ends] == meta["eos_id"]).all()
    assert shard.tokens.dtype == np.uint16 and meta["n_tokens"] == counts["train_n_tokens"]
    assert 0 < meta["unigram_entropy_nats"] < np.log(meta["vocab_size"])


def test_large_vocab_uses_uint32(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=70_000, eos_id=69_999)
    writer.add([1, 65_600, 3])
    writer.close()
    shard = open_split(tmp_path)[0]
    assert shard.tokens.dtype == np.uint32 and shard.tokens.tolist() == [1, 65_600, 3, 69_999]


def test_shards_roll_at_the_token_limit(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=100, eos_id=0, tokens_per_shard=10)
    for _ in range(5):
        writer.add([1, 2, 3, 4])
    meta = writer.close()
    assert [s["n_tokens"] for s in meta["shards"]] == [10, 10, 5]
    assert [len(list(s.documents())) for s in open_split(tmp_path)] == [2, 2, 1]


def test_truncated_shard_is_refused(tokenized):
    _, shards, _ = tokenized
    path = shards / "train" / read_meta(shards / "train")["shards"][0]["file"]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        open_shard(path)


def test_split_is_by_document_seeded_and_never_empty(tmp_path):
    docs = [Document(f"id{i}", f"text {i}") for i in range(7)]
    write_documents(docs, tmp_path / "d")
    write_documents(list(reversed(docs)), tmp_path / "r")
    cfg = TokenizeConfig(val_fraction=0.01)
    val = validation_ids(tmp_path / "d", cfg)
    assert len(val) == 1 and val == validation_ids(tmp_path / "r", cfg)  # order does not matter
    assert split_of("id1", 0) != split_of("id1", 1)
    write_documents([Document("only", "one document")], tmp_path / "one")
    with pytest.raises(ValueError, match="at least 2"):
        validation_ids(tmp_path / "one", cfg)


def test_tokenization_on_the_executor_gives_the_same_ids_in_the_same_order_for_any_task_count(tmp_path):
    """Reference: one process encoding every document in order. Parallel tasks write parts per document shard,
    merged into one meta.json; the split reads as the same stream whatever the task count."""
    from conftest import make_text

    from tokenmill.tokenize.tokenizer import train_bpe
    rng = random.Random(5)
    docs = [Document(f"doc{i:03d}", make_text(rng, rng.randint(3, 12))) for i in range(60)]
    write_documents(docs, tmp_path / "docs", docs_per_shard=13)  # 5 shards
    tok = train_bpe((d.text for d in docs), 400)
    tok.save_pretrained(tmp_path / "tok")
    val = validation_ids(tmp_path / "docs", TokenizeConfig(tokenizer=str(tmp_path / "tok")))
    expected = {split: [tok(d.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                        for d in docs if (d.id in val) == (split == "val")] for split in ("train", "val")}
    metas = []
    for executor in ({}, {"tasks": 1}, {"tasks": 2, "workers": 2}):
        out = tmp_path / f"out{len(metas)}"
        cfg = TokenizeConfig(tokenizer=str(tmp_path / "tok"), tokens_per_shard=300, executor=executor)
        counts = run(cfg, tmp_path / "docs", out)
        for split in ("train", "val"):
            meta = check_split(out / split)
            stream = np.concatenate([s.tokens for s in open_split(out / split)]).tolist()
            assert stream == [t for ids in expected[split] for t in ids], (executor, split)
            assert meta["n_docs"] == len(expected[split]) and not list((out / split).glob("part-*"))
            metas.append(meta)
        assert counts["docs_in"] == 60
    assert metas[0] == metas[2] == metas[4] and metas[1] == metas[3] == metas[5]
    assert len(metas[0]["shards"]) > 5  # per document shard, and cut at tokens_per_shard


FORK_AFTER_RUST_THREADS = """
import os, sys
os.environ["TOKENIZERS_PARALLELISM"] = "true"  # as the CLI sets it
from pathlib import Path
from tokenmill.documents import Document, write_documents
from tokenmill.tokenize import TokenizeConfig, run
from tokenmill.tokenize.tokenizer import train_bpe
out = Path(sys.argv[1])
docs = [Document(f"d{i:03d}", f"text number {i} " * 40) for i in range(200)]
write_documents(docs, out / "docs", docs_per_shard=50)
tok = train_bpe((d.text for d in docs), 300)
tok.save_pretrained(out / "tok")
tok.backend_tokenizer.encode_batch([d.text for d in docs] * 10)  # the parent has used the Rust thread pool
print(run(TokenizeConfig(tokenizer=str(out / "tok"), executor={"workers": 2}), out / "docs", out / "shards")["docs_in"])
"""


def test_forked_tokenize_workers_do_not_hang_after_the_parent_used_rust_threads(tmp_path):
    """Without one thread per task, the forked workers hang in encode_batch (the suite hung here once)."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", FORK_AFTER_RUST_THREADS, str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "200"


def test_a_reused_tokenizer_without_eos_is_refused_before_the_split_is_encoded(tmp_path, corpus):
    """The reused tokenizer is saved in a forked process beside the split's read; its error still comes back,
    whole, before anything is encoded."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from tokenmill.ingest import IngestConfig
    from tokenmill.ingest import run as ingest
    ingest(IngestConfig(paths=[str(corpus)]), tmp_path / "docs")
    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel()
    bare.train_from_iterator((d.text for d in read_documents(tmp_path / "docs")), trainers.BpeTrainer(vocab_size=300))
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="tokenizer.json: tokenizer has no EOS token; set tokenize.eos_token"):
        run(TokenizeConfig(tokenizer=str(tmp_path / "tokenizer.json")), tmp_path / "docs", tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()
