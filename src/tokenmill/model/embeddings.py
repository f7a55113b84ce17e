"""The embedding rows of a model: grown for an extended vocabulary, and which of them train, at what rate.

A tokenizer extended with `tokenmill tokenizer extend` carries `extension.json`: each new token's id and
the base tokens it replaces. `transfer` resizes the input embedding and the LM head (a tied head stays
tied: one matrix) to the padded vocabulary and initialises each new row:
  - fvt: the mean of the base rows of the token's base segmentation (Gee et al. 2022; Swallow and EEVE do
    this), for the input rows and, when untied, separately for the head's rows;
  - mean: the mean of all base rows, the same vector for every new row (what transformers'
    `resize_token_embeddings` gives, up to its 1e-9 noise);
  - random: normal(0, initializer_range), as a fresh model's rows.
Rows the tokenizer never produces (padding to a multiple of 64, special and reserved tokens) stay out of
every mean; padding rows get the mean of the base rows, so they take no more probability than a typical row.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from tokenmill.schema import StrictModel


class EmbeddingsConfig(StrictModel):
    init: Literal["fvt", "mean", "random"] = Field("fvt", description="rows of tokens new to the base model "
                                                                      "(an extended tokenizer)")
    train: Literal["all", "new", "none"] = Field(
        "all", description="which rows of the input embedding and LM head train: all, only an extended "
                           "vocabulary's new ones, or none (with LoRA: the adapters alone)")
    lr_ratio: float | None = Field(None, gt=0, le=10, description="their learning rate as a multiple of lr_max "
                                                                 "(default: 0.1 with LoRA, 1 otherwise)")
    new_rows_first_steps: int = Field(0, ge=0, description="optimizer steps at the start of the run that train "
                                                           "only the new rows (EEVE's first stage), before the "
                                                           "normal run")


def new_token_ids(extension: dict | None) -> list[int]:
    return [t["id"] for t in extension["new_tokens"]] if extension else []


def check_base(model, extension: dict, where: str) -> None:
    """The base model must be the one the tokenizer was extended from: its rows cover the base vocabulary."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < extension["base_vocab_size"] or rows > extension["padded_vocab_size"] + 1024:
        raise ValueError(f"{where}: the tokenizer was extended from a base of {extension['base_vocab_size']:,} "
                         f"tokens ({extension['base']}), but this model has {rows:,} embedding rows; extend the "
                         "tokenizer of this model (tokenmill tokenizer extend MODEL ...), or train the model it "
                         "was extended from")


@torch.no_grad()
def transfer(model, extension: dict, init: str = "fvt", seed: int = 0) -> None:
    """Grow the model's vocabulary to the extension's padded size and initialise the new rows in place."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    rows = max(old_rows, extension["padded_vocab_size"])
    produced = torch.tensor([i for i in extension["produced_base_ids"] if i < old_rows])
    model.resize_token_embeddings(rows, mean_resizing=False)
    tied = model.get_output_embeddings() is None or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    matrices = [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight])
    new_ids = set(new_token_ids(extension))
    padding = [i for i in range(extension["base_vocab_size"], rows) if i not in new_ids and i >= old_rows]
    generator = torch.Generator().manual_seed(seed)
    for weight in matrices:
        mean = weight[produced].float().mean(0)
        for token in extension["new_tokens"]:
            if init == "fvt":
                weight[token["id"]] = weight[torch.tensor(token["base_ids"])].float().mean(0).to(weight.dtype)
            elif init == "mean":
                weight[token["id"]] = mean.to(weight.dtype)
            else:
                std = getattr(model.config, "initializer_range", 0.02)
                weight[token["id"]] = (torch.randn(weight.shape[1], generator=generator) * std).to(weight.dtype)
        if padding:
            weight[torch.tensor(padding)] = mean.to(weight.dtype)


def embedding_weights(model) -> list[torch.nn.Parameter]:
    """The input embedding and, when it is a matrix of its own (untied), the LM head."""
    params = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not params[0]:
        params.append(head.weight)
    return params


class RowGradients:
    """Keeps the embedding rows that must not train at their values, by zeroing their gradient rows before
    each optimizer step; during the first `new_rows_first_steps` steps also drops every other gradient, so
    that only the new rows train (AdamW skips a parameter without a gradient: its moments stay untouched).
    A row with a zero gradient from the first step has zero moments, and AdamW does not move it (embeddings
    have no weight decay here)."""

    def __init__(self, model, cfg: EmbeddingsConfig, new_ids: list[int]):
        """`model` already on its device: the masks are made there once, not at every step."""
        self.weights = embedding_weights(model)
        self.first_steps, self.others = cfg.new_rows_first_steps, None
        new_only = _mask(self.weights[0], new_ids)
        self.rows = new_only if cfg.train == "new" else None  # "none" is frozen by requires_grad (build)
        self.first_rows = new_only
        if self.first_steps:
            ids = {id(w) for w in self.weights}
            self.others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]

    @property
    def active(self) -> bool:
        return self.rows is not None or bool(self.first_steps)

    def __call__(self, step: int) -> None:
        first = step < self.first_steps
        rows = self.first_rows if first else self.rows
        if first:
            for p in self.others:
                p.grad = None
        if rows is None:
            return
        for weight in self.weights:
            if weight.grad is not None:
                weight.grad.mul_(rows)


def _mask(weight: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """A [rows, 1] column of 1 for `ids` and 0 elsewhere, on the weight's device and in its dtype."""
    mask = torch.zeros(weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    if ids:
        mask[torch.tensor(ids, device=weight.device)] = 1.0
    return mask
