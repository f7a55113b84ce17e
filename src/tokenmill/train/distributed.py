"""Data parallelism under torchrun: DDP, or FSDP2 (`fully_shard` per decoder layer, then the root).

    torchrun --nproc_per_node=8 -m tokenmill train runs/x/30_shards -o runs/x/40_checkpoints
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 -m tokenmill train ...

Without torchrun's environment everything here is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average over ranks (every rank gets it)."""
        if self.size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.size
        return value

    def max(self, value: torch.Tensor) -> torch.Tensor:
        """The largest over ranks (every rank gets it)."""
        if self.size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value


def init_world(device: torch.device) -> World:
    """Join torchrun's process group if there is one (NCCL on GPU, gloo on CPU). `accelerate launch
    --multi_gpu` starts its processes through torchrun, so it lands here too, on a CPU machine as well."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        if os.environ.get("ACCELERATE_USE_CPU") == "True":  # accelerate 1.x's --cpu: one process, whatever --num_processes
            print("[train] note: `accelerate launch --cpu` starts one process; for N processes on CPUs use "
                  "`accelerate launch --multi_gpu --num_processes N` (gloo) or torchrun")
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def local_device(device: torch.device, world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if device.type == "cuda" else device


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, strategy: str, world: World, device: torch.device, dtype: torch.dtype,
         cpu_offload: bool = False) -> torch.nn.Module:
    """DDP or FSDP2 around the model; `strategy` is none, ddp or fsdp (auto: ddp with >1 rank)."""
    if strategy == "auto":
        strategy = "ddp" if world.size > 1 else "none"
    if strategy == "none" or (world.size == 1 and not (strategy == "fsdp" and dist.is_initialized())):
        return model  # one process: nothing to split, unless a process group asks FSDP's code path (tests/test_gpu.py)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[world.local_rank] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (world.size,))
    # bf16 compute, fp32 gradient reduction: the standard FSDP2 mixed-precision recipe (torchtitan).
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    offload = {"offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda")} if cpu_offload else {}
    options = {"mesh": mesh, "mp_policy": policy, **offload}
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a HF causal LM (model.model.layers for Llama, Qwen2, Mistral, SmolLM)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for attr in ("model.layers", "transformer.h", "gpt_neox.layers"):
        node = base
        for part in attr.split("."):
            node = getattr(node, part, None)
        if node is not None:
            return list(node)
    raise ValueError(f"{type(base).__name__}: cannot find its decoder layers to shard")


def is_fsdp(model: torch.nn.Module) -> bool:
    return type(model).__name__.startswith("FSDP")  # fully_shard swaps in an FSDP<Class> subclass


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def grad_sync(model: torch.nn.Module, enabled: bool):
    """Skip the gradient all-reduce on micro-steps that are not the last of an accumulation."""
    if hasattr(model, "no_sync") and not enabled:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()
