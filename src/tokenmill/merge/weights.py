"""The weights of the models a merge reads, one tensor at a time, and the three merges, tensor by tensor.

A source is a HF model folder (one or several safetensors files) or a full-weight checkpoint: its tensors are
read from memory-mapped files when asked for, so a merge holds the model it writes and a tensor or two of each
input, not every input at once. A LoRA or QLoRA checkpoint has no full weights on disk; it is loaded and its
adapters merged first (model/source.py), which holds that one model in memory.

Rows of the vocabulary that the trained model added (an extended tokenizer) exist in the trained model alone:
they keep the trained values, and no vector is added to them. Any other difference in names or shapes is
refused, naming the first tensor that differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tokenmill.checkpoints import EMA_FILE, is_checkpoint

EMBEDDING_NAMES = ("embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_out.weight")


class Weights:
    """Named tensors of one model on disk, read lazily; `name` as the model's own state dict names them.
    `moving_average`: a checkpoint's train.ema average in place of its weights (those that trained)."""

    def __init__(self, path: Path | str, moving_average: bool = False):
        self.path = Path(path)
        self.config = json.loads((self.path / "config.json").read_text())
        self._loaded: dict[str, torch.Tensor] | None = None
        self._where: dict[str, tuple[object, str]] = {}  # name → (its file, opened once and memory-mapped; key)
        if is_checkpoint(self.path) and not _full_weights(self.path):
            self._loaded = _merged_state(self.path, moving_average)
            return
        from safetensors import safe_open
        aliases = {}
        for file in sorted(self.path.glob("*.safetensors")):
            if file.name == EMA_FILE:
                continue
            f = safe_open(str(file), "pt")
            names = set(f.keys())
            self._where.update({name: (f, name) for name in names})
            # safetensors' save_model stores tied tensors once and names the others in the metadata
            aliases.update({k: v for k, v in (f.metadata() or {}).items() if v in names})
        if not self._where:
            raise FileNotFoundError(f"{self.path}: no safetensors weights (a HF model folder or a checkpoint)")
        if moving_average:  # the average holds what trained, under the model's first name for a tied tensor
            f = safe_open(str(self.path / EMA_FILE), "pt")
            self._where.update({name: (f, name) for name in f.keys()})
            averaged = set(f.keys())
            aliases = {stored if alias in averaged else alias: alias if alias in averaged else stored
                       for alias, stored in aliases.items()}
        for alias, stored in aliases.items():
            self._where[alias] = self._where[stored]

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    def names(self) -> set[str]:
        return set(self._loaded or self._where)

    def _stored_name(self, name: str) -> str | None:
        if name in self.names():
            return name
        if name.endswith("lm_head.weight") and self.tied:  # a tied head is the input embedding
            return next((n for n in self.names() if n.endswith("embed_tokens.weight")), None)
        return None

    def has(self, name: str) -> bool:
        return self._stored_name(name) is not None

    def shape(self, name: str) -> tuple[int, ...]:
        stored = self._stored_name(name)
        if self._loaded is not None:
            return tuple(self._loaded[stored].shape)
        f, key = self._where[stored]
        return tuple(f.get_slice(key).get_shape())

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        stored = self._stored_name(name)
        if stored is None:
            raise KeyError(f"{self.path}: no tensor {name}")
        if self._loaded is not None:
            return self._loaded[stored].to(dtype)
        f, key = self._where[stored]
        return f.get_tensor(key).to(dtype)


def _full_weights(checkpoint: Path) -> bool:
    """Whether a checkpoint's model.safetensors holds every weight under the model's own names (not LoRA
    adapters, not a QLoRA run's trainable part, not FSDP's dcp/ shards)."""
    from tokenmill.checkpoints import QUANTIZED_BASE
    return (checkpoint / "model.safetensors").is_file() and not (checkpoint / "adapter_config.json").is_file() \
        and not (checkpoint / QUANTIZED_BASE).is_file()


def _merged_state(checkpoint: Path, moving_average: bool) -> dict[str, torch.Tensor]:
    from tokenmill.model.source import load_source
    model, _, _ = load_source(checkpoint, moving_average)
    return {name: t.detach() for name, t in model.state_dict().items()}


def check_compatible(target, sources: dict[str, Weights]) -> None:
    """Every tensor of `target` (the model the merge writes into) in every source, with the same shape except
    for the rows an extended vocabulary added. Refused, before any tensor is read, naming the first that
    differs."""
    params = dict(target.named_parameters())
    for role, weights in sources.items():
        arch = weights.config.get("model_type")
        if arch != target.config.model_type:
            raise ValueError(f"{weights.path} ({role}): a {arch} model, and the trained one is "
                             f"{target.config.model_type}; a merge needs one architecture")
        for name, p in params.items():
            if not weights.has(name):
                raise ValueError(f"{weights.path} ({role}): no tensor {name}, which the trained model has; a merge "
                                 "needs models of one architecture and shape")
            shape = weights.shape(name)
            if shape != tuple(p.shape) and not (_is_vocabulary(name) and shape[1:] == tuple(p.shape[1:])
                                                and shape[0] <= p.shape[0]):
                raise ValueError(f"{weights.path} ({role}): {name} is {list(shape)}, and the trained model's is "
                                 f"{list(p.shape)}; a merge needs models of one shape (only an extended "
                                 "vocabulary's new rows may differ)")


def _is_vocabulary(name: str) -> bool:
    return name.endswith(EMBEDDING_NAMES)


def _shared_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return tensor[:rows] if tensor.shape[0] != rows else tensor


@torch.no_grad()
def interpolate(target, trained: Weights, start: Weights, alpha: float) -> None:
    """θ = (1 − α)·θ_start + α·θ_trained, into `target`'s parameters; new vocabulary rows stay trained."""
    for name, p in target.named_parameters():
        theta = trained.get(name)
        rows = start.shape(name)[0]
        theta[:rows] = torch.lerp(start.get(name), theta[:rows], alpha)
        p.copy_(theta.to(p.dtype))


@torch.no_grad()
def task_arithmetic(target, trained: Weights, base: Weights, instruct: Weights, lam: float) -> None:
    """θ_trained + λ·(θ_instruct − θ_base) (the chat vector), into `target`'s parameters; new vocabulary rows take
    no vector. Computed in float32 as mergekit's task_arithmetic does with the trained model weighted 1 and
    the instruct model λ over `base` (base + Σ wᵢ(θᵢ − base)), so the tensors are the same bytes as its."""
    for name, p in target.named_parameters():
        theta = trained.get(name)
        b = base.get(name)
        rows = b.shape[0]
        deltas = torch.stack([_shared_rows(theta, rows) - b, instruct.get(name) - b])
        weights = torch.tensor([1.0, lam], dtype=deltas.dtype).reshape(2, *([1] * b.dim()))
        theta[:rows] = b + (deltas * weights).sum(dim=0)
        p.copy_(theta.to(p.dtype))


@torch.no_grad()
def average(target, checkpoints: list[Weights]) -> None:
    """The mean of the checkpoints' weights, summed in float64, into `target`'s parameters."""
    for name, p in target.named_parameters():
        total = checkpoints[0].get(name, torch.float64)
        for weights in checkpoints[1:]:
            total += weights.get(name, torch.float64)
        p.copy_((total / len(checkpoints)).to(p.dtype))
