"""Tokenize: train or load a tokenizer, split documents into train/val, pack them into token shards.

    tokenize/stage.py      the stage (TokenizeConfig, run) on the datatrove executors
    tokenize/shards.py     the token shards the trainer reads
    tokenize/tokenizer.py  training a BPE, loading one
    tokenize/extend.py     growing a base's tokenizer for a new language
    tokenize/fertility.py  tokens per word, base against extended

The stage's names (`from tokenmill.tokenize import TokenizeConfig, run`) load the stage, and with it datatrove,
when first asked for: the trainer reads shards through tokenize/shards.py without the data stages'
dependencies (a GPU machine may have none of them).
"""

from __future__ import annotations


def __getattr__(name: str):
    import importlib
    stage = importlib.import_module("tokenmill.tokenize.stage")  # not `from . import`: that asks this hook again
    try:
        return getattr(stage, name)
    except AttributeError:
        raise AttributeError(f"module 'tokenmill.tokenize' has no attribute {name!r}") from None
