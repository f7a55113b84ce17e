"""An exponential moving average of the weights, kept by the trainer (`train.ema`).

    θ_ema ← d·θ_ema + (1 − d)·θ        after every optimizer step

It starts at the weights training starts from and covers about 1/(1 − d) of the latest steps: a smoothed model
without a decay run (the checkpoint averaging of Megatron-LM#5114 and OLMo-core #558, kept as one running sum).
Only the weights that train are averaged, in float32 on their own device; a frozen weight's average is itself.
Every checkpoint holds it as ema.safetensors, so a resumed run continues the same average, and `merge` reads it
(`method: average`, weight `ema`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tokenmill.checkpoints import EMA_FILE

__all__ = ["EMA_FILE", "ExponentialAverage", "load_average"]
DECAY_KEY = "tokenmill.ema_decay"  # safetensors metadata


class ExponentialAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trained]
        self.params = [p for _, p in trained]
        self.restart()

    def restart(self) -> None:
        """From the weights as they are now (a run resumed from a checkpoint kept without an average)."""
        self.average = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        current = [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in self.params]
        torch._foreach_lerp_(self.average, current, 1.0 - self.decay)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file
        tensors = {name: t.detach().cpu().contiguous() for name, t in zip(self.names, self.average)}
        save_file(tensors, str(path), metadata={"format": "pt", DECAY_KEY: repr(self.decay)})

    def load(self, path: Path) -> None:
        """The average a checkpoint holds; refused when it was kept over other weights or with another decay."""
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            saved_decay = float((f.metadata() or {}).get(DECAY_KEY, "nan"))
            if set(f.keys()) != set(self.names):
                raise ValueError(f"{path}: its average covers other weights than this run trains "
                                 f"({sorted(set(f.keys()) ^ set(self.names))[:3]}); was it saved with another "
                                 "model.lora or model.embeddings.train?")
            if saved_decay != self.decay:
                raise ValueError(f"{path}: kept with train.ema {saved_decay}, and this run has {self.decay}; "
                                 "resume with the same decay, or start another run (-o)")
            for name, average in zip(self.names, self.average):
                average.copy_(f.get_tensor(name))


def load_average(model: torch.nn.Module, path: Path) -> None:
    """A checkpoint's average written into `model`'s weights in place (the weights it does not hold were frozen:
    their average is the checkpoint's own value)."""
    from safetensors.torch import load_file
    result = model.load_state_dict(load_file(str(path)), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: weights this model does not have ({result.unexpected_keys[:3]})")
