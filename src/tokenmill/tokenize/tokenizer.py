"""Train a byte-level BPE tokenizer, or load an existing one; always returned as a HF fast tokenizer.

Saved with `save_pretrained`, so `AutoTokenizer.from_pretrained(dir)` loads it next to the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:  # transformers (and torch with it) is imported when a tokenizer is made: not by the config
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    # Digits one by one, then GPT-2's byte-level split: numbers tokenize consistently (as in Llama 3, Qwen2
    # and SmolLM2), and llama.cpp knows this pre-tokenizer by name (`smollm`), so GGUF exports tokenize the
    # same as here.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   clean_up_tokenization_spaces=False)


def load_tokenizer(path: str | Path, eos_token: str | None = None) -> PreTrainedTokenizerFast:
    """A `tokenizer.json` file or a HF tokenizer folder (a base model's, for continued pre-training)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    path = Path(path)
    if path.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False)
    elif path.is_dir():
        tok = AutoTokenizer.from_pretrained(path)
    else:
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer folder here (tokenize.tokenizer)")
    if eos_token:
        tok.eos_token = eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: tokenizer has no EOS token; set tokenize.eos_token to one of its tokens")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
