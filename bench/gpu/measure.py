"""The measurements of bench/gpu/run.py. Each one builds its model with tokenmill's own code (train.build, the
optimizer, the chunked loss, bf16 autocast) and times tokenmill's own training loop (train.loop.train) on
token batches made in memory: the figures are the trainer's, without the data stages (which the GPU machine
cannot import) and without checkpoint writes (which would time the disk).

`--dry-run` runs everything on the CPU at toy shapes, 2 steps each: the code paths and the JSON fields, never
figures to quote.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent.parent
TOY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@dataclass
class Context:
    dry_run: bool
    device: torch.device
    dtype: torch.dtype
    out: Path
    seq_len: int
    vocab: int
    steps: int                      # timed optimizer steps
    warmup: int                     # untimed steps first (compilation, allocator)
    batches: list[int]              # micro-batch sizes tried, largest first
    compile_backend: str            # inductor (what train.compile uses); the dry run: eager, to check the path fast
    found: dict = field(default_factory=dict)  # preset → the largest micro-batch that fit
    measured: dict = field(default_factory=dict)  # (preset, compile) → the throughput step's figures

    @classmethod
    def make(cls, dry_run: bool, out: Path) -> "Context":
        if dry_run:
            return cls(True, torch.device("cpu"), torch.float32, out, seq_len=64, vocab=512, steps=2, warmup=1,
                       batches=[4, 2], compile_backend="eager")
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the script on a CPU")
        torch.backends.cuda.matmul.allow_tf32 = True
        return cls(False, torch.device("cuda"), torch.bfloat16, out, seq_len=2048, vocab=32_000, steps=10, warmup=3,
                   batches=[64, 32, 16, 8, 4, 2, 1], compile_backend="inductor")

    def model_config(self, preset: str, **extra):
        from tokenmill.model import ModelConfig
        return ModelConfig(preset=preset, **(TOY if self.dry_run else {}), **extra)

    def train_config(self, **extra):
        from tokenmill.train.config import TrainConfig
        settings = dict(seq_len=self.seq_len, micro_batch_size=1, max_steps=10_000, warmup_steps=1,
                        precision="auto", loss_chunk_tokens=1024, loggers=[])
        return TrainConfig(**{**settings, **extra})

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        from tokenmill.train import perf
        return round(perf.peak_memory_gib(self.device), 2)


class Rows:
    """A metric sink that keeps the loop's rows (tokens/s and MFU as the trainer computes them)."""

    def __init__(self):
        self.rows = []

    def log(self, metrics: dict, step: int) -> None:
        self.rows.append({"step": step, **metrics})

    def close(self) -> None:
        pass


def random_batches(ctx: Context, micro_batch: int, seq_len: int | None = None, n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    length = seq_len or ctx.seq_len
    ids = torch.randint(1, ctx.vocab, (n, micro_batch, length + 1), generator=g)
    return [{"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()} for x in ids]


class Trainee:
    """A model as tokenmill trains it: built, optimizer, loss (chunked head, autocast), optionally compiled."""

    def __init__(self, ctx: Context, model_cfg, train_cfg):
        from tokenmill.device import autocast_for
        from tokenmill.losses import chunked_head, next_token_loss
        from tokenmill.train import build, perf
        from tokenmill.train.optim import build_optimizer
        self.ctx, self.cfg = ctx, train_cfg
        torch.manual_seed(train_cfg.seed)
        self.model = build(model_cfg, train_cfg, {"vocab_size": ctx.vocab, "eos_id": 0}, device=ctx.device)
        head = chunked_head(self.model) if train_cfg.loss_chunk_tokens else None
        self.optimizer = build_optimizer(self.model, train_cfg.lr_max, train_cfg.betas, train_cfg.weight_decay,
                                         ctx.device, kind=train_cfg.optimizer, muon=train_cfg.muon)
        self.loss_fn = functools.partial(next_token_loss, autocast=autocast_for(ctx.device, ctx.dtype), head=head,
                                         chunk_tokens=train_cfg.loss_chunk_tokens)
        self.forward = torch.compile(self.model, backend=ctx.compile_backend) if train_cfg.compile else self.model
        self.flops = perf.flops_per_token(self.model, train_cfg.seq_len)
        self.peak = perf.device_peak_flops(ctx.device, ctx.dtype)
        self.state = {"step": 0, "tokens": 0}
        self.parameters = sum(p.numel() for p in self.model.parameters())

    def run(self, steps: int, batches: list[dict], lr=lambda step: 1e-4, evaluate=None) -> dict:
        """`steps` more optimizer steps through tokenmill's loop; the loop's last row (its window is these steps)."""
        from tokenmill.train.loop import LoopSettings, train
        micro, length = batches[0]["input_ids"].shape
        feed = iter(batches * (steps // len(batches) + 2))
        sink = Rows()
        loop = LoopSettings(max_steps=self.state["step"] + steps, grad_accum_steps=1, grad_clip=1.0,
                            log_every=10**9, eval_every=None, save_every=None, tokens_per_step=micro * length)
        train(self.forward, self.optimizer, lr, lambda: next(feed), evaluate or (lambda m: {}), sink,
              lambda s: None, loop, self.state, self.ctx.device, self.loss_fn, self.flops, self.peak)
        return sink.rows[-1]


def largest_micro_batch(ctx: Context, model_cfg, train_cfg) -> int:
    """The largest micro-batch of ctx.batches whose eager training step fits in memory."""
    trainee = Trainee(ctx, model_cfg, train_cfg.model_copy(update={"compile": False}))
    try:
        for micro in ctx.batches:
            try:
                trainee.run(1, random_batches(ctx, micro, n=1))
                return micro
            except torch.OutOfMemoryError:
                pass  # freed below, once the exception (whose frames hold the step's tensors) is gone
            trainee.optimizer.zero_grad(set_to_none=True)
            ctx.free()
        raise RuntimeError(f"not even a micro-batch of {ctx.batches[-1]} fits")
    finally:
        del trainee
        ctx.free()


def timed(ctx: Context, preset: str, micro: int | None = None, **train_extra) -> dict:
    """Warm-up steps, then ctx.steps timed ones through the loop. The micro-batch is the largest that fits
    eagerly (or the one given); should the compiled model need more memory, half of it."""
    model_cfg, train_cfg = ctx.model_config(preset), ctx.train_config(**train_extra)
    micro = micro or largest_micro_batch(ctx, model_cfg, train_cfg)
    while True:
        ctx.free()
        trainee = Trainee(ctx, model_cfg, train_cfg.model_copy(update={"micro_batch_size": micro}))
        batches = random_batches(ctx, micro)
        t0 = time.time()
        try:
            trainee.run(ctx.warmup, batches)
            break
        except torch.OutOfMemoryError:
            if micro == 1:
                raise
        del trainee, batches
        micro //= 2
    warm_s = time.time() - t0
    row = trainee.run(ctx.steps, batches)
    result = {"preset": preset, "parameters": trainee.parameters, "seq_len": ctx.seq_len, "micro_batch": micro,
              "compile": train_cfg.compile, "activation_checkpointing": train_cfg.activation_checkpointing,
              "tokens_per_s": round(row["perf/tokens_per_s"]), "mfu": round(row["perf/mfu"], 4),
              "peak_gib": ctx.peak_gib(), "warmup_s": round(warm_s, 1), "loss": round(row["train/loss"], 4)}
    del trainee
    ctx.free()
    return result


def throughput(ctx: Context) -> dict:
    runs = []

    def attempt(preset: str, micro: int | None, **extra) -> dict:
        """One configuration; its failure is its row, and the others still run."""
        try:
            runs.append(timed(ctx, preset, micro, **extra))
        except Exception as error:  # noqa: BLE001
            runs.append({"preset": preset, **extra, "error": f"{type(error).__name__}: {error}"[:1000]})
            ctx.free()
        return runs[-1]

    for preset in ("125m", "350m", "1b"):
        ctx.found[preset] = attempt(preset, None, compile=True).get("micro_batch")
    eager = attempt("1b", ctx.found["1b"], compile=False)
    attempt("1b", None, compile=False, activation_checkpointing=True)
    ctx.measured = {key: run for key, run in ((("1b", True), runs[2]), (("1b", False), eager)) if "error" not in run}
    return {"runs": runs, "peak_tflops": round(_peak(ctx) / 1e12, 1)}


def _peak(ctx: Context) -> float:
    from tokenmill.train import perf
    return perf.device_peak_flops(ctx.device, ctx.dtype)


def trainer_side_by_side(ctx: Context) -> dict:
    """transformers.Trainer on the 1b shape: the same random batches, micro-batch, bf16 autocast with fp32
    weights, SDPA attention and fused AdamW; tokens/s over the steps after the warm-up, and peak memory."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from tokenmill.model import build_model
    micro = ctx.found.get("1b") or ctx.batches[-1]
    model = build_model(ctx.model_config("1b"), ctx.vocab, 0, ctx.device)
    data = [{"input_ids": b["input_ids"][i], "labels": b["input_ids"][i]}
            for b in random_batches(ctx, micro, n=2) for i in range(micro)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = {}

        def on_step_end(self, args, state, control, **kwargs):
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            self.marks[state.global_step] = time.perf_counter()

    clock = Clock()
    steps = ctx.warmup + ctx.steps
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=micro, max_steps=steps,
                                 learning_rate=1e-4, bf16=ctx.device.type == "cuda", use_cpu=ctx.device.type != "cuda",
                                 optim="adamw_torch_fused" if ctx.device.type == "cuda" else "adamw_torch",
                                 logging_steps=10**6, save_strategy="no", report_to=[], dataloader_num_workers=0,
                                 max_grad_norm=1.0, disable_tqdm=True)
        ctx.free()
        Trainer(model=model, args=args, train_dataset=data, callbacks=[clock]).train()
    seconds = clock.marks[steps] - clock.marks[ctx.warmup]
    trainer = {"tokens_per_s": round(ctx.steps * micro * ctx.seq_len / seconds), "peak_gib": ctx.peak_gib(),
               "micro_batch": micro}
    del model
    ctx.free()
    # tokenmill's own figures at this micro-batch: the throughput step's, else measured now
    ours = ctx.measured.get(("1b", False)) or timed(ctx, "1b", micro, compile=False)
    compiled = ctx.measured.get(("1b", True)) or timed(ctx, "1b", micro, compile=True)
    return {"trainer": trainer, "tokenmill_eager": ours, "tokenmill_compiled": compiled,
            "speedup_eager": round(ours["tokens_per_s"] / trainer["tokens_per_s"], 3),
            "speedup_compiled": round(compiled["tokens_per_s"] / trainer["tokens_per_s"], 3)}


def qlora_memory(ctx: Context) -> dict:
    """Peak memory of one training step of LoRA and of QLoRA (r 16) on the 1b shape with random weights, built
    in place and saved as the base (memory does not depend on the values)."""
    from tokenmill.model import build_model
    results = {}
    micro = 4 if not ctx.dry_run else 2
    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(ctx.model_config("1b"), ctx.vocab, 0, ctx.device)
        base.to(torch.bfloat16).save_pretrained(Path(tmp) / "base")
        del base
        ctx.free()
        for variant in ("lora", "qlora"):
            from tokenmill.model import ModelConfig
            model_cfg = ModelConfig(preset=None, init_from=str(Path(tmp) / "base"), lora={"r": 16, "alpha": 32},
                                    quantize={"type": "nf4"} if variant == "qlora" else None)
            try:
                trainee = Trainee(ctx, model_cfg, ctx.train_config(micro_batch_size=micro))
            except ImportError as error:  # bitsandbytes not brought
                results[variant] = {"error": f"{type(error).__name__}: {error}"}
                continue
            trainee.run(1, random_batches(ctx, micro, n=1))
            ctx.free()
            row = trainee.run(2, random_batches(ctx, micro, n=2))
            results[variant] = {"peak_gib": ctx.peak_gib(), "tokens_per_s": round(row["perf/tokens_per_s"]),
                                "trainable": sum(p.numel() for p in trainee.model.parameters() if p.requires_grad)}
            del trainee
            ctx.free()
    if "peak_gib" in results.get("lora", {}) and "peak_gib" in results.get("qlora", {}):
        results["qlora_over_lora"] = round(results["qlora"]["peak_gib"] / results["lora"]["peak_gib"], 3)
    return {"micro_batch": micro, "seq_len": ctx.seq_len, **results}


def stdlib_tokens(ctx: Context, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real text that the GPU machine has without a network: Python's own standard library, a byte-level BPE
    trained on it; files held out by a hash of their name for validation."""
    from tokenizers import ByteLevelBPETokenizer
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    budget = 2_000_000 if ctx.dry_run else 12_000_000  # characters: a BPE in seconds, and ~3M tokens
    texts, size = [], 0
    for f in files:
        if "test" in f.parts or size > budget:
            continue
        text = f.read_text(errors="replace")
        texts.append((f.name, text))
        size += len(text)
    held = lambda name: int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) % 20 == 0  # noqa: E731
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator((t for _, t in texts), vocab_size=vocab, min_frequency=2, show_progress=False)
    split = {True: [], False: []}
    for (name, _), encoding in zip(texts, tok.encode_batch([t for _, t in texts])):
        split[held(name)] += encoding.ids + [0]
    return torch.tensor(split[False]), torch.tensor(split[True])


def muon_vs_adamw(ctx: Context) -> dict:
    """The 125m shape on the standard library's text, AdamW and Muon at the same learning rate (Muon's update
    scaled to AdamW's RMS, so the rate carries over), the same seed, batches and cosine schedule: the
    validation loss every few steps, and the tokens each takes to reach AdamW's final loss."""
    from tokenmill.train.schedule import SCHEDULES
    vocab, seq_len = (512, 64) if ctx.dry_run else (8192, 1024)
    micro, steps, every = (2, 4, 2) if ctx.dry_run else (16, 160, 20)
    train_ids, val_ids = stdlib_tokens(ctx, vocab)
    windows = train_ids[: len(train_ids) // (seq_len + 1) * (seq_len + 1)].view(-1, seq_len + 1)
    val = val_ids[: len(val_ids) // (seq_len + 1) * (seq_len + 1)].view(-1, seq_len + 1)[:64 if not ctx.dry_run else 2]
    g = torch.Generator().manual_seed(0)
    order = torch.randint(0, len(windows), (steps, micro), generator=g)
    batches = [{"input_ids": windows[i, :-1], "labels": windows[i, 1:]} for i in order]
    vctx = Context(**{**ctx.__dict__, "vocab": vocab, "seq_len": seq_len})
    curves = {}
    for kind in ("adamw", "muon"):
        cfg = vctx.train_config(micro_batch_size=micro, max_steps=steps, warmup_steps=max(steps // 20, 1),
                                lr_max=1.5e-3, lr_min=1.5e-4, schedule="cosine", optimizer=kind)
        trainee = Trainee(vctx, vctx.model_config("125m"), cfg)
        curve, t0 = [], time.time()
        for start in range(0, steps, every):
            trainee.run(every, batches[start:start + every], lr=lambda s: SCHEDULES["cosine"](s, cfg))
            curve.append((trainee.state["tokens"], _val_loss(trainee, val)))
        curves[kind] = {"curve": curve, "seconds": round(time.time() - t0, 1),
                        "tokens_per_s": round(trainee.state["tokens"] / (time.time() - t0))}
        del trainee
        ctx.free()
    target = curves["adamw"]["curve"][-1][1]
    reach = {k: tokens_to(c["curve"], target) for k, c in curves.items()}
    return {"shape": "125m", "vocab": vocab, "seq_len": seq_len, "micro_batch": micro, "steps": steps,
            "adamw_final_val_loss": round(target, 4), "tokens_to_adamw_final": reach,
            "muon_tokens_ratio": round(reach["muon"] / reach["adamw"], 3) if reach["muon"] else None,
            "time_per_token_ratio": round(curves["adamw"]["tokens_per_s"] / curves["muon"]["tokens_per_s"], 3),
            **curves}


@torch.no_grad()
def _val_loss(trainee: Trainee, val: torch.Tensor) -> float:
    trainee.model.eval()
    losses = [trainee.loss_fn(trainee.model, {"input_ids": w[None, :-1].to(trainee.ctx.device),
                                              "labels": w[None, 1:].to(trainee.ctx.device)}).item() for w in val]
    trainee.model.train()
    return sum(losses) / len(losses)


def tokens_to(curve: list[tuple[int, float]], target: float) -> float | None:
    """The tokens at which a curve first reaches `target`, between its evaluation points by linear
    interpolation; None when it never does."""
    previous = None
    for tokens, loss in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(tokens)
            (t0, l0) = previous
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        previous = (tokens, loss)
    return None


def profile(ctx: Context) -> dict:
    """torch.profiler over three eager steps of the 1b shape: the ten kernels with the most device time."""
    from torch.profiler import ProfilerActivity
    micro = min(ctx.found.get("1b") or ctx.batches[-1], 8)
    trainee = Trainee(ctx, ctx.model_config("1b"), ctx.train_config(micro_batch_size=micro))
    batches = random_batches(ctx, micro, n=3)
    trainee.run(1, batches)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        trainee.run(3, batches)
    device_time = "self_device_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, device_time), reverse=True)
    total = sum(getattr(e, device_time) for e in events) or 1
    top = [{"name": e.key[:120], "calls": e.count, "self_ms": round(getattr(e, device_time) / 1e3, 2),
            "share": round(getattr(e, device_time) / total, 4)} for e in events[:10]]
    del trainee
    return {"micro_batch": micro, "compile": False, "steps": 3, "time": device_time, "top": top}


def gpu_tests(ctx: Context) -> dict:
    """pytest -m gpu on tests/test_gpu.py, each test's outcome, time and message (skipped without CUDA)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", str(ROOT / "tests" / "test_gpu.py"),
                               "-q", "-p", "no:cacheprovider", "--noconftest", f"--junitxml={report}",
                               "-o", "junit_logging=system-out", "-o", "addopts="],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        tests = []
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                found = case.find(tag)
                if found is not None:
                    outcome, message = tag, (found.get("message") or "")[:500] + (found.text or "")[-1500:]
            out = case.find("system-out")
            tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                          "message": message, "stdout": (out.text or "")[-1000:] if out is not None else ""})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
    return {"exit_code": done.returncode, "counts": counts, "tests": tests, "tail": done.stdout[-1500:]}
