"""The trainer: the model built (base, new vocabulary rows, LoRA), the data sampled, the loop run, checkpoints and
the final HF folder written. `tokenmill.train.run` and the other names of the package come from here."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from tokenmill.atomic import atomic_write_json
from tokenmill.device import autocast_for, compute_dtype, pick_device
from tokenmill.evaluation.progress import eval_bar
from tokenmill.evaluation.sets import same_vocabulary, split_windows, token_split
from tokenmill.losses import chunked_head, mean_loss, next_token_loss
from tokenmill.model import ModelConfig, build_model, count_parameters, embeddings, quantize
from tokenmill.model.lora import apply_lora, merge
from tokenmill.model.resolve import resolve_model_path
from tokenmill.tokenize.extend import read_extension
from tokenmill.tokenize.shards import bytes_per_token, open_split, read_meta
from tokenmill.train import perf
from tokenmill.train.checkpoint import load_checkpoint, resume_point, save_checkpoint
from tokenmill.train.config import RESUMABLE_CHANGES, TrainConfig
from tokenmill.train.data import Windows, WindowSampler
from tokenmill.train.ema import ExponentialAverage
from tokenmill.train.mixture import MixtureConfig, MixtureSampler, solve_plan, stage_seq_lens
from tokenmill.train.distributed import World, init_world, is_fsdp, local_device, shutdown, unwrap, wrap
from tokenmill.train.loop import LoopSettings, LossGuard, train
from tokenmill.train.metrics import ConsoleSink, JsonlSink, Sinks, TensorBoardSink, WandbSink
from tokenmill.train.optim import build_optimizer
from tokenmill.train.preemption import Preempted, StopSignals
from tokenmill.train.schedule import SCHEDULES

__all__ = ["RESUMABLE_CHANGES", "TrainConfig", "run"]
log = logging.getLogger(__name__)


def build(model_cfg: ModelConfig, cfg: TrainConfig, meta: dict, extension: dict | None = None,
          device: torch.device | None = None, corpus: embeddings.Corpus | None = None,
          transferred: dict | None = None) -> torch.nn.Module:
    """The model as trained, before any parallel wrapper, on `device`: base (4-bit for QLoRA; grown for an
    extended vocabulary, what was done written into `transferred`), then LoRA, then activation checkpointing."""
    model = build_model(model_cfg, meta["vocab_size"], meta["eos_id"], device)
    if extension and model_cfg.init_from:
        embeddings.check_base(model, extension, model_cfg.init_from)
        done = embeddings.transfer(model, extension, model_cfg.embeddings, cfg.seed, corpus)
        if transferred is not None:
            transferred.update(done)
    if model.config.vocab_size < meta["vocab_size"]:
        raise ValueError(f"model vocab_size {model.config.vocab_size} is below the tokenizer's {meta['vocab_size']}: "
                         "continued pre-training needs the base model's own tokenizer (tokenize.tokenizer), or "
                         "one extended from it (tokenize.extend)")
    if cfg.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"train.seq_len {cfg.seq_len} exceeds the model's max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    attention = cfg.attention_for(device or torch.device("cpu"))
    if attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    if model_cfg.quantize:
        model = quantize.prepare_for_training(model, cfg.activation_checkpointing)
    if model_cfg.lora:
        model = apply_lora(model, model_cfg.lora, train_embeddings=model_cfg.embeddings.train != "none")
    elif model_cfg.embeddings.train == "none":
        for weight in embeddings.embedding_weights(model):
            weight.requires_grad_(False)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model if model_cfg.quantize else model.to(device or "cpu")  # a 4-bit base was loaded onto it


def check_base_tokenizer(init_from: str, tokenizer, shards_dir: Path, extension: dict | None) -> None:
    """Continued pre-training needs shards made with the base model's own tokenizer, or one extended from it."""
    base_dir = resolve_model_path(init_from)
    if not (base_dir / "tokenizer_config.json").is_file():
        return  # a bare model folder: the vocabulary size check in build() is all we can do
    base = AutoTokenizer.from_pretrained(base_dir)
    if extension:
        vocab = tokenizer.get_vocab()
        if any(vocab.get(token) != i for token, i in base.get_vocab().items()):
            raise ValueError(f"{shards_dir}: the tokenizer was extended from another base than {init_from} (its "
                             f"base tokens or ids differ); extend {init_from}'s own tokenizer: tokenmill tokenizer "
                             f"extend {init_from} --corpus TEXT --add N -o DIR")
    elif not same_vocabulary(base, tokenizer):
        raise ValueError(f"{shards_dir}: these shards were made with another tokenizer than the base model's "
                         f"({init_from}): the vocabulary differs. Tokenize again with the base model's: "
                         f"tokenmill tokenize DOCS -o SHARDS --tokenizer {init_from}")


def check_embedding_rows(model_cfg: ModelConfig, extension: dict | None, shards_dir: Path) -> None:
    rows = model_cfg.embeddings
    if extension and model_cfg.init_from and rows.train == "none":
        raise ValueError(f"{shards_dir}: the tokenizer adds {extension['added']:,} tokens to the base, whose "
                         "embedding rows would never train with model.embeddings.train: none; use new or all")
    if not extension and rows.reads_corpus:
        raise ValueError(f"{shards_dir}: model.embeddings.init: calibrated and distill_steps initialise the rows of "
                         "an extended vocabulary's new tokens, and this tokenizer was not extended; drop them, or "
                         "extend the tokenizer (tokenize.extend)")
    if not extension and (rows.train == "new" or rows.new_rows_first_steps):
        raise ValueError(f"{shards_dir}: model.embeddings.train: new and new_rows_first_steps need an extended "
                         "tokenizer (tokenize.extend), and this one adds no tokens")


def eval_set_windows(cfg: TrainConfig, default_sets: dict[str, str], tokenizer, cache_dir: Path, world: World,
                     eval_tokens: int) -> dict:
    """The evaluation windows of each named set (default: each dataset's val split, named after it; one
    dataset's is `val`), and each set's bytes per token; raw-text sets are tokenized once, by rank 0, with
    the run's tokenizer."""
    sets = {name: Path(path) for name, path in (cfg.eval_sets or default_sets).items()}
    if world.is_main:
        splits = {name: token_split(path, tokenizer, cache_dir) for name, path in sets.items()}
    world.barrier()
    if not world.is_main:
        splits = {name: token_split(path, tokenizer, cache_dir) for name, path in sets.items()}
    windows = {name: split_windows(split, cfg.seq_len, eval_tokens) for name, split in splits.items()}
    for name, found in windows.items():
        if not found:
            raise ValueError(f"train.eval_sets.{name} ({sets[name]}): fewer than train.seq_len + 1 = "
                             f"{cfg.seq_len + 1} tokens, too short for one evaluation window")
    return windows, {name: bytes_per_token(read_meta(split)) for name, split in splits.items()}


OVERLAP_SAMPLE_CHARS = 16_000_000  # of training text decoded for the check: a few seconds, whatever the data


def check_eval_overlap(cfg: TrainConfig, default_sets: dict[str, str], train_splits: list[Path], tokenizer,
                       cache_dir: Path) -> None:
    """Warn, naming the set, when an evaluation set shares passages with the training shards (the data stages
    decontaminate, but a run may start from shards made elsewhere)."""
    if cfg.eval_overlap_warn is None:
        return
    from tokenmill.decontaminate import check
    splits = {name: token_split(Path(path), tokenizer, cache_dir) for name, path in (cfg.eval_sets or default_sets).items()}
    training = (text for split in train_splits for text in check.decoded(split, tokenizer))
    result = check.overlap({name: check.decoded(split, tokenizer) for name, split in splits.items()},
                           _until_chars(training, OVERLAP_SAMPLE_CHARS))
    total = sum(read_meta(split)["n_bytes"] for split in train_splits)
    for line in check.describe(result, cfg.eval_overlap_warn, OVERLAP_SAMPLE_CHARS if total > OVERLAP_SAMPLE_CHARS else None):
        print(line, flush=True)


def _until_chars(texts, limit: int):
    seen = 0
    for text in texts:
        yield text
        seen += len(text)
        if seen >= limit:
            return


def describe_eval_cost(cfg: TrainConfig, val_sets: dict, evaluations: int, tokens_per_step: int,
                       train_flops: float, model) -> str:
    """What evaluation will cost, said before it starts: its tokens and its share of the run's compute."""
    tokens = sum(len(w) for w in val_sets.values()) * cfg.seq_len * evaluations
    forward = perf.forward_flops(*perf.matmul_parameters(model), model.config, cfg.seq_len)
    train_tokens = cfg.max_steps * tokens_per_step
    share = tokens * forward / (tokens * forward + train_tokens * train_flops)
    sizing = "train.eval_tokens" if cfg.eval_tokens else "scaled to the run; set train.eval_tokens to choose"
    return (f"[eval] {len(val_sets)} set(s) x {tokens // max(evaluations * len(val_sets), 1):,} tokens x "
            f"{evaluations} evaluations = {tokens:,} tokens, {share:.0%} of the run's compute ({sizing})")


def resume(checkpoint: Path, model, optimizer, sampler, cfg: TrainConfig, accum: int, world: World,
           ema: ExponentialAverage | None = None) -> dict:
    """Load a checkpoint into the run, refusing one it cannot continue exactly."""
    state = load_checkpoint(checkpoint, model, optimizer, world, ema)
    tokens_per_step = cfg.seq_len * cfg.micro_batch_size * accum * world.size
    if state["step"] and state["tokens"] != state["step"] * tokens_per_step:
        raise ValueError(f"{checkpoint}: its run took {state['tokens'] // state['step']:,} tokens per optimizer "
                         f"step, this one {tokens_per_step:,} (seq_len x micro_batch_size x accumulation x "
                         f"{world.size} rank(s)); keep the global batch to resume exactly: set train.batch_tokens"
                         f" to {state['tokens'] // state['step']}")
    if state["step"] > cfg.max_steps:
        raise ValueError(f"{checkpoint}: the run is at step {state['step']}, past train.max_steps "
                         f"{cfg.max_steps}; raise max_steps to continue it, or export this checkpoint as it is")
    sampler.load_state_dict(state.pop("loader"))
    log.info("resuming from %s (step %d)", checkpoint, state["step"])
    return state


def make_sinks(cfg: TrainConfig, world: World, out_dir: Path, metrics_path: Path, start_step: int, config: dict) -> Sinks:
    if not world.is_main:
        return Sinks([])
    makers = {"console": lambda: ConsoleSink(cfg.max_steps, start_step),
              "jsonl": lambda: JsonlSink(metrics_path, resume_step=start_step),
              "tensorboard": lambda: TensorBoardSink(out_dir / "tensorboard"),
              "wandb": lambda: WandbSink(cfg.wandb_project, out_dir, config)}
    return Sinks([makers[name]() for name in cfg.loggers])


def save_final(model, rebuild, tokenizer, out_dir: Path, world: World, save_embeddings: bool) -> None:
    """final/ (merged HF model + tokenizer) and, for LoRA, adapter/; rank 0 writes, FSDP shards are gathered."""
    plain = unwrap(model)
    if is_fsdp(model) or quantize.is_quantized(plain):
        # Into a model built again: FSDP's gathered shards (a collective: every rank takes part), or what trained
        # on a 4-bit base, which goes on the full-precision base that `rebuild` loads.
        if is_fsdp(model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            state = {name: p.detach().cpu() for name, p in plain.named_parameters() if p.requires_grad}
        plain = rebuild() if world.is_main else None
        if plain is not None:
            unexpected = plain.load_state_dict(state, strict=is_fsdp(model)).unexpected_keys
            assert not unexpected, f"internal: trained weights without a place in the model: {unexpected[:3]}"
    if world.is_main:
        plain = plain.to("cpu")
        if hasattr(plain, "peft_config"):
            plain.save_pretrained(out_dir / "adapter", save_embedding_layers=save_embeddings)
        merge(plain).save_pretrained(out_dir / "final")
        tokenizer.save_pretrained(out_dir / "final")
    world.barrier()


def make_sampler(cfg: TrainConfig, datasets: dict[str, Path] | None, shards_dir: Path, mixture: MixtureConfig | None,
                 accum: int, world: World, eos_id: int, out_dir: Path):
    """One dataset: windows in a seeded order. Named datasets: the mixture plan, solved and written to
    plan.json before the first step."""
    mask_at = eos_id if cfg.document_masking else None
    if datasets is None:
        return WindowSampler(open_split(shards_dir / "train"), cfg.seq_len, cfg.micro_batch_size, cfg.seed,
                             world.rank, world.size, mask_at)
    lengths = sorted(set(stage_seq_lens(mixture or MixtureConfig(), cfg.seq_len)))
    splits = {name: open_split(Path(path) / "train") for name, path in datasets.items()}
    windows = {name: {length: Windows(split, length) for length in lengths} for name, split in splits.items()}
    (mixture or MixtureConfig()).restrict(windows)
    plan = solve_plan(mixture or MixtureConfig(), {n: {k: w.n for k, w in by.items()} for n, by in windows.items()},
                      cfg.seq_len, cfg.micro_batch_size * accum * world.size, cfg.max_steps, cfg.warmup_steps,
                      lambda step: SCHEDULES[cfg.schedule](step, cfg), cfg.lr_max, cfg.micro_batch_size)
    if world.is_main:
        atomic_write_json(out_dir / "plan.json", plan.to_json())
        print(describe_plan(plan))
    return MixtureSampler(windows, plan, cfg.micro_batch_size, accum, cfg.seed, world.rank, world.size, mask_at)


def describe_data(datasets: dict[str, Path] | None, meta: dict) -> str:
    """Train tokens and bytes, for each dataset of a mixture."""
    if not datasets:
        return f"{meta['n_tokens']:,} train tokens ({meta['n_bytes']:,} bytes)"
    metas = {name: read_meta(path / "train") for name, path in datasets.items()}
    return "train tokens " + ", ".join(f"{name} {m['n_tokens']:,} ({m['n_bytes']:,} bytes)" for name, m in metas.items())


def describe_plan(plan) -> str:
    info = plan.to_json()
    lengths = {s["seq_len"] for s in info["stages"]}
    lines = ["[mixture] " + ", ".join(f"stage {i} from step {s['start_step']}: " + " ".join(
        f"{n} {w:.0%}" for n, w in s["weights"].items() if w) + (f" at {s['seq_len']} tokens" if len(lengths) > 1 else "")
        for i, s in enumerate(info["stages"]))]
    lines += [f"[mixture] {n}: {info['tokens'][n]:,} tokens, {info['epochs'][n]:.2f} epochs" for n in plan.datasets]
    return "\n".join(lines)


def run(model_cfg: ModelConfig, cfg: TrainConfig, shards_dir: Path | dict[str, Path], out_dir: Path,
        metrics_path: Path | None = None, mixture: MixtureConfig | None = None, resume_from: Path | None = None) -> dict:
    """Train on one tokenize output (`shards_dir`), or on named ones ({name: shards dir}) mixed by `mixture`.
    Continues from `resume_from` (a step folder, possibly another run's) or else from out_dir's newest checkpoint."""
    datasets = {n: Path(p) for n, p in shards_dir.items()} if isinstance(shards_dir, dict) else None
    shards_dir = next(iter(datasets.values())) if datasets else Path(shards_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = init_world(pick_device(cfg.device))
    device = local_device(pick_device(cfg.device), world)
    dtype = compute_dtype(device, cfg.precision)
    meta = read_meta(shards_dir / "train")
    tokenizer = AutoTokenizer.from_pretrained(shards_dir / "tokenizer")
    for name, path in (datasets or {}).items():
        if not same_vocabulary(AutoTokenizer.from_pretrained(path / "tokenizer"), tokenizer):
            raise ValueError(f"{name}={path}: tokenized with another vocabulary than {shards_dir}; every dataset "
                             "of a mixture needs the same tokenizer")

    extension = read_extension(shards_dir / "tokenizer")
    check_embedding_rows(model_cfg, extension, shards_dir)
    if model_cfg.init_from:
        check_base_tokenizer(model_cfg.init_from, tokenizer, shards_dir, extension)
    accum = cfg.accum_steps(world.size)
    sampler = make_sampler(cfg, datasets, shards_dir, mixture, accum, world, meta["eos_id"], out_dir)  # before the model: a bad plan stops here
    resume_from = resume_point(out_dir, resume_from)
    corpus = embeddings.corpus_sample([s for path in (datasets or {"": shards_dir}).values()
                                       for s in open_split(Path(path) / "train")], extension, cfg.seq_len) \
        if extension and model_cfg.init_from and model_cfg.embeddings.reads_corpus \
        and not resume_from else None  # a resumed run's rows come from its checkpoint
    transferred: dict = {}
    model = build(model_cfg, cfg, meta, extension, device, corpus, transferred)
    longest = max(stage_seq_lens(mixture or MixtureConfig(), cfg.seq_len) if datasets else [cfg.seq_len])
    if longest > model.config.max_position_embeddings:
        raise ValueError(f"a mixture stage's seq_len {longest} exceeds the model's max_position_embeddings "
                         f"{model.config.max_position_embeddings}: raise model.max_position_embeddings (with "
                         "model.rope for a base trained shorter)")
    n_params, flops = count_parameters(model), perf.flops_per_token(unwrap(model), cfg.seq_len)
    head = chunked_head(model) if cfg.loss_chunk_tokens else None
    rows = embeddings.RowGradients(model, model_cfg.embeddings, embeddings.new_token_ids(extension))
    if rows.active and cfg.parallel == "fsdp":
        raise ValueError("model.embeddings.train: new and new_rows_first_steps mask gradient rows, which FSDP's "
                         "sharded gradients do not support yet; use train.parallel: ddp")
    model = wrap(model, cfg.parallel, world, device, dtype, cfg.fsdp_cpu_offload)
    optimizer = build_optimizer(unwrap(model), cfg.lr_max, cfg.betas, cfg.weight_decay, device,
                                model_cfg.embedding_lr_ratio(), cfg.optimizer, cfg.muon)
    default_sets = {name: str(path / "val") for name, path in (datasets or {"val": shards_dir}).items()}
    eval_at_start = cfg.eval_at_start if cfg.eval_at_start is not None else bool(model_cfg.init_from)
    tokens_per_step = cfg.seq_len * cfg.micro_batch_size * accum * world.size
    eval_tokens = cfg.eval_tokens_per_set(len(cfg.eval_sets or default_sets), eval_at_start, tokens_per_step)
    val_sets, val_bytes_per_token = eval_set_windows(cfg, default_sets, tokenizer, out_dir / "eval_sets", world,
                                                     eval_tokens)

    ema = ExponentialAverage(unwrap(model), cfg.ema) if cfg.ema else None
    state = {"step": 0, "tokens": 0}
    if resume_from:
        state = resume(resume_from, model, optimizer, sampler, cfg, accum, world, ema)
    forward_model = torch.compile(model) if cfg.compile else model

    if world.is_main and cfg.optimizer == "muon" and model_cfg.init_from and not model_cfg.lora:
        print("[train] warning: Muon on every weight of a base trained with AdamW is reported to do worse than AdamW "
              "(arXiv 2605.10468); it is meant for pre-training from scratch, and for LoRA", flush=True)
    if world.is_main and transferred and not resume_from:  # a resumed run's rows were made by its first start
        print(embeddings.describe_transfer(transferred), flush=True)
    if world.is_main:
        print(f"[train] {n_params / 1e6:.2f}M parameters ({count_parameters(model, trainable=True) / 1e6:.2f}M trainable), "
              f"{describe_data(datasets, meta)}, {world.size} rank(s), {device}, {dtype}")
    autocast = autocast_for(device, dtype)
    loss_fn = functools.partial(next_token_loss, autocast=autocast, head=head, chunk_tokens=cfg.loss_chunk_tokens)
    sinks = make_sinks(cfg, world, out_dir, metrics_path or out_dir / "metrics.jsonl", state["step"],
                       {"model": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json")})

    def save(loop_state: dict) -> None:
        save_checkpoint(out_dir, model, optimizer, {**loop_state, "loader": sampler.state_dict()}, cfg.keep_last, world,
                        sharded=cfg.parallel == "fsdp", ema=ema)

    if world.is_main:
        check_eval_overlap(cfg, default_sets, [Path(p) / "train" for p in (datasets or {"": shards_dir}).values()],
                           tokenizer, out_dir / "eval_sets")
        print(describe_eval_cost(cfg, val_sets, cfg.evaluations(eval_at_start), tokens_per_step, flops,
                                 unwrap(model)), flush=True)

    def evaluate_sets(m) -> dict[str, float]:
        losses = {}
        for i, (name, windows) in enumerate(val_sets.items()):
            label = f"eval {name} ({i + 1}/{len(val_sets)})"
            with eval_bar(label, len(windows) * cfg.seq_len, enabled=world.is_main) as progress:
                losses[name] = mean_loss(m, windows, cfg.micro_batch_size, device, world, loss_fn, progress)
        return losses

    loop = LoopSettings(max_steps=cfg.max_steps, grad_accum_steps=accum, grad_clip=cfg.grad_clip,
                        log_every=cfg.log_every, eval_every=cfg.eval_every, save_every=cfg.save_every,
                        tokens_per_step=tokens_per_step,
                        eval_at_start=eval_at_start,
                        bytes_per_token=val_bytes_per_token)
    try:
        with StopSignals(world, device) as stop:  # a launcher's SIGTERM/USR1: checkpoint, exit 143
            state = train(forward_model, optimizer, lambda step: SCHEDULES[cfg.schedule](step, cfg), sampler.next_batch,
                          evaluate_sets, sinks, save,
                          loop, state, device, loss_fn, flops, perf.device_peak_flops(device, dtype),
                          on_log=lambda: {"mem/peak_gib": perf.peak_memory_gib(device),
                                          **(sampler.metrics() if datasets else {})}, world=world,
                          guard=LossGuard(cfg.spike_factor), before_step=rows if rows.active else None,
                          after_step=ema.update if ema else None, stop=stop)
            full_precision = model_cfg.model_copy(update={"quantize": None})  # QLoRA merges into the unquantized base
            save_final(model, lambda: build(full_precision, cfg, meta, extension), tokenizer, out_dir, world,
                       bool(model_cfg.lora and model_cfg.embeddings.train != "none"))
            if stop.requested():  # it came during the last evaluation or the final save: the run is whole, and the
                # command (a plan's next proxy, a pipeline's next stage) stops as asked instead of going on
                raise Preempted(state["step"], stop.signum)
    finally:
        sinks.close()
        shutdown(world)
    return {"params": n_params, "steps": state["step"], "tokens": state["tokens"],
            "train_loss": state.get("train_loss"), "val_loss": state.get("val_loss"),
            "val_losses": state.get("val_losses", {}), **({"embeddings": transferred} if transferred else {})}
