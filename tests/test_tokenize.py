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
