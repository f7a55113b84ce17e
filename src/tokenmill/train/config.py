"""TrainConfig: everything the training stage is told, with units in the names or the docs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokenmill.schema import StrictModel


class MuonConfig(StrictModel):
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, gt=0, description="Newton-Schulz iterations of the orthogonalization")
    adjust_lr: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw", description="match_rms_adamw: the update's RMS that of AdamW, so AdamW's lr carries over "
                                       "(Moonshot); original: Keller Jordan's sqrt(max(1, rows/cols)) scale")
    adamw_lr_ratio: float = Field(1.0, gt=0, description="the AdamW part (embeddings, head, norms, biases): its lr "
                                                         "as a share of the schedule's")


Logger = Literal["console", "jsonl", "tensorboard", "wandb"]

# What a run may change and still continue from its newest checkpoint, with no flag: how long it runs (more
# steps), how it is watched and saved, settings that change speed and not the result, and the mixture, whose
# sampler refuses on resume a change to a stage that has already begun. Any other change is refused with
# what to do (tokenmill.stage.prepare_resumable); a run's checkpoints are never deleted because of it.
# The layout of the global batch over ranks may change too (resume on another number of ranks); the global
# batch itself, in tokens per optimizer step, is checked on resume.
RESUMABLE_CHANGES = ("mixture", "train.max_steps", "train.log_every", "train.eval_every", "train.eval_tokens",
                     "train.eval_sets", "train.eval_at_start", "train.eval_overlap_warn", "train.save_every", "train.keep_last", "train.device",
                     "train.threads", "train.compile", "train.activation_checkpointing", "train.loss_chunk_tokens",
                     "train.attention",
                     "train.loggers", "train.wandb_project", "train.spike_factor", "train.micro_batch_size",
                     "train.grad_accum_steps", "train.batch_tokens", "train.parallel", "train.fsdp_cpu_offload")

# The evaluation budget when train.eval_tokens is not given: what a short run can afford (a 40-step CPT run
# with four sets and 65,536 tokens each spent more time evaluating than training), never more than the
# long-standing 65,536 tokens a set, never fewer than 8 windows (the intervals of results.json say how noisy).
EVAL_COMPUTE_SHARE, MAX_EVAL_TOKENS, MIN_EVAL_WINDOWS = 0.1, 65_536, 8
EVAL_TOKENS_RULE = (f"evaluation within {EVAL_COMPUTE_SHARE:.0%} of the run's compute, at most {MAX_EVAL_TOKENS:,} "
                    f"tokens and at least {MIN_EVAL_WINDOWS} windows a set")


class TrainConfig(StrictModel):
    seq_len: int = Field(256, gt=1, description="tokens per training sequence")
    micro_batch_size: int = Field(8, gt=0, description="sequences per forward pass, per rank")
    grad_accum_steps: int = Field(1, gt=0, description="micro-steps per optimizer step")
    batch_tokens: int | None = Field(None, gt=0, description="global tokens per optimizer step; sets grad_accum_steps")
    max_steps: int = Field(1000, gt=0, description="optimizer steps")
    lr_max: float = Field(3e-3, gt=0)
    lr_min: float = Field(3e-4, ge=0, description="final LR of the decay; when not given and lr_max is below "
                                                  "3e-4: lr_max / 10")
    warmup_steps: int = Field(50, ge=0, description="optimizer steps of linear warmup")
    schedule: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of max_steps spent decaying")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="muon: torch.optim.Muon for the hidden matrices, AdamW for embeddings, head, norms and "
                             "biases (for pre-training from scratch; see train.muon)")
    muon: MuonConfig = Field(default_factory=MuonConfig, description="train.optimizer: muon's settings")
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's (with muon: the AdamW part's)")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    log_every: int = Field(10, gt=0, description="optimizer steps between metric rows")
    eval_every: int | None = Field(100, ge=0, description="optimizer steps between evaluations; 0 or null: only "
                                                          "at the end")
    eval_tokens: int | None = Field(None, gt=0, description="tokens per evaluation set; null: scaled to the run ("
                                                            + EVAL_TOKENS_RULE + ")")
    eval_sets: dict[str, str] | None = Field(
        None, description="named evaluation sets, NAME: token shards or raw text (tokenized with the run's "
                          "tokenizer); logged as val/NAME/loss. Default: the shards' val split as `val`")
    eval_at_start: bool | None = Field(None, description="evaluate every set at step 0, before the first update "
                                                         "(the 'before' of continued pre-training); default: "
                                                         "when model.init_from is set")
    eval_overlap_warn: float | None = Field(
        0.01, ge=0, le=1, description="warn before training when more than this share of an evaluation set's "
        "documents shares a 13-word / 50-character passage with the training shards; null: no check")
    save_every: int | None = Field(200, ge=0, description="optimizer steps between checkpoints; 0 or null: only "
                                                          "at the end")
    keep_last: int = Field(2, gt=0, description="checkpoints kept")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    parallel: Literal["auto", "none", "ddp", "fsdp"] = Field("auto", description="under torchrun; auto: ddp")
    fsdp_cpu_offload: bool = Field(False, description="FSDP: keep parameters and optimizer state in CPU memory")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    document_masking: bool = Field(False, description="packed documents do not attend to each other")
    attention: Literal["auto", "sdpa", "flex_attention", "flash_attention_2"] = Field(
        "auto", description="transformers' attention; auto: sdpa, except flex_attention on a GPU with "
                            "document_masking (SDPA builds a T x T mask from the position ids, flex a block mask)")
    compile: bool = Field(False, description="torch.compile the model")
    loss_chunk_tokens: int | None = Field(
        1024, gt=0, description="apply the LM head and the loss this many tokens at a time: the same loss without "
                                "holding all logits (Llama, Mistral, Qwen2/3, GPT-2); null: all at once")
    threads: int | None = Field(None, gt=0, description="CPU threads for torch (default: torch's choice)")
    loggers: list[Logger] = Field(default_factory=lambda: ["console", "jsonl"], description="metric sinks (rank 0)")
    wandb_project: str = Field("tokenmill", description="W&B project; offline unless WANDB_API_KEY is set")
    spike_factor: float | None = Field(None, gt=1, description="stop when a logged loss exceeds this x its running mean")
    ema: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the weights that "
                              "train, with this decay per optimizer step (0.999 covers about the last 1,000 steps), "
                              "in every checkpoint; merge.method average takes it as the weight `ema`")

    @model_validator(mode="after")
    def _check(self):
        problems = []
        if self.lr_min > self.lr_max and "lr_min" not in self.model_fields_set:
            # A small lr_max (continued pre-training) must not trip over a default the user never wrote.
            object.__setattr__(self, "lr_min", self.lr_max / 10)  # not validate_assignment: this is the validator
        if self.lr_min > self.lr_max:
            problems.append(f"lr_min ({self.lr_min}) is above lr_max ({self.lr_max})")
        if self.warmup_steps >= self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.batch_tokens is not None and self.batch_tokens % (self.seq_len * self.micro_batch_size):
            problems.append(f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len x micro_batch_size "
                            f"({self.seq_len * self.micro_batch_size})")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            problems.append("train.optimizer muon orthogonalizes each whole matrix, and FSDP shards them (torch.optim."
                            "Muon takes no sharded tensors): use train.parallel ddp or none with muon, or adamw")
        if self.ema is not None and self.parallel == "fsdp":
            problems.append("train.ema is kept of whole weights, and FSDP shards them: use train.parallel ddp or "
                            "none with train.ema, or drop it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def attention_for(self, device) -> str:
        if self.attention != "auto":
            return self.attention
        return "flex_attention" if self.document_masking and device.type == "cuda" else "sdpa"

    def evaluations(self, at_start: bool) -> int:
        """How many times the loop evaluates: at step 0 (CPT), every eval_every steps, and at the end."""
        every = self.eval_every or self.max_steps
        return at_start + self.max_steps // every + bool(self.max_steps % every)

    def eval_tokens_per_set(self, n_sets: int, at_start: bool, tokens_per_step: int) -> int:
        """train.eval_tokens, or the rule's: evaluation's forward passes (a third of a training token's FLOPs)
        within EVAL_COMPUTE_SHARE of the run, between MIN_EVAL_WINDOWS windows and MAX_EVAL_TOKENS a set."""
        if self.eval_tokens:
            return self.eval_tokens
        affordable = EVAL_COMPUTE_SHARE * 3 * self.max_steps * tokens_per_step / (n_sets * self.evaluations(at_start))
        windows = min(int(affordable // self.seq_len), max(MAX_EVAL_TOKENS // self.seq_len, 1))
        return max(windows, MIN_EVAL_WINDOWS) * self.seq_len

    def accum_steps(self, world_size: int = 1) -> int:
        if self.batch_tokens is None:
            return self.grad_accum_steps
        per_micro_step = self.seq_len * self.micro_batch_size * world_size
        if self.batch_tokens % per_micro_step:
            raise ValueError(f"train.batch_tokens ({self.batch_tokens}) is not a multiple of seq_len x micro_batch_size"
                             f" x ranks ({per_micro_step}); change it or the number of ranks")
        return self.batch_tokens // per_micro_step
