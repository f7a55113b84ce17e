"""Peak memory per device of a training step, as a sum of named parts (GiB).

  weights      fp32 master weights (4 bytes/param); + a bf16 copy under autocast on GPU (its weight cache);
               QLoRA: the base's linear layers in 4 bits (+ one absmax per 64 weights)
  gradients    fp32, trainable parameters only (LoRA: the adapters); + DDP's bucket copy of them
  optimizer    AdamW's two fp32 moments (8 bytes/trainable param), allocated at the first step; Muon's one
               momentum buffer (4 bytes) for the matrices it takes (train.optimizer: muon)
  ema          train.ema: one fp32 copy of the weights that train (4 bytes/trainable param)
  activations  what backward needs, per token and layer (LLaMA layout, SDPA/flash attention: no seq² term):
               8·hidden + 3·kv_width + 4·intermediate values (norm inputs and outputs, q/k/v before and after
               rope, attention output, gate/up/act/product); with activation checkpointing one hidden state per
               layer plus one layer recomputed
  loss         the LM head's logits: one chunk x vocabulary, logits and gradient in fp32 (train.loss_chunk_tokens),
               or all tokens' logits, their fp32 log-softmax and gradient without chunking
  fsdp_buffers two gathered decoder layers (FSDP2 prefetches the next while computing one)
  runtime      CPU: this process's resident memory before training (interpreter, torch, transformers);
               GPU: the CUDA context (~0.5 GiB)
  checkpoint_file  CPU, continued pre-training: the base's safetensors file, memory-mapped when loaded, whose
               pages count in the process's resident memory
Sources: EleutherAI's Transformer Math 101, Megatron's memory calculator, the notes in ../shared/notes.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

GIB = 2**30
CUDA_CONTEXT_GIB = 0.5


@dataclass
class MemoryPlan:
    params: int
    trainable: int
    config: object            # the model's HF config
    micro_batch_size: int
    seq_len: int
    world_size: int
    parallel: str             # none | ddp | fsdp
    bf16: bool
    activation_checkpointing: bool
    loss_chunk_tokens: int | None
    cpu_offload: bool
    on_gpu: bool
    loaded_checkpoint: bool = False  # continued pre-training: the base's weights were read from disk
    quantized_params: int = 0        # QLoRA: base weights held in 4 bits (the decoder's linear layers)
    quantized_bytes_per_param: float = 0.5
    muon_params: int = 0             # train.optimizer muon: trainable weights with one moment, not AdamW's two
    ema: bool = False                # train.ema: a float32 copy of what trains


def memory_breakdown(p: MemoryPlan) -> dict[str, float]:
    c = p.config
    hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    inter = getattr(c, "intermediate_size", None) or 4 * hidden
    kv_width = hidden * getattr(c, "num_key_value_heads", c.num_attention_heads) // c.num_attention_heads
    act_bytes = 2 if p.bf16 else 4
    tokens = p.micro_batch_size * p.seq_len
    full = p.params - p.quantized_params  # fp32 master weights (+ a bf16 copy under autocast)
    parts = {"weights": 4 * full + (2 * full if p.bf16 else 0) + p.quantized_bytes_per_param * p.quantized_params,
             "gradients": 4 * p.trainable * (2 if p.parallel == "ddp" else 1),
             "optimizer": 8 * (p.trainable - p.muon_params) + 4 * p.muon_params}
    if p.ema:
        parts["ema"] = 4 * p.trainable
    if p.parallel == "fsdp":
        for key in ("weights", "gradients", "optimizer"):
            parts[key] = 0 if p.cpu_offload else parts[key] / p.world_size
        layer_params = (p.params - c.vocab_size * hidden) / layers
        parts["fsdp_buffers"] = 2 * layer_params * act_bytes
    per_token_layer = 8 * hidden + 3 * kv_width + 4 * inter
    if p.activation_checkpointing:
        parts["activations"] = tokens * act_bytes * (layers * hidden + per_token_layer + 3 * hidden)
    else:
        parts["activations"] = tokens * act_bytes * (layers * per_token_layer + 3 * hidden)
    chunk = min(p.loss_chunk_tokens or tokens, tokens)
    parts["loss"] = chunk * vocab * 4 * (2 if p.loss_chunk_tokens else 3)
    parts["runtime"] = CUDA_CONTEXT_GIB * GIB if p.on_gpu else process_rss_bytes()
    if p.loaded_checkpoint and not p.on_gpu and not p.quantized_params:
        parts["checkpoint_file"] = 4 * p.params  # safetensors maps the file: its pages stay in the resident set
    return {name: size / GIB for name, size in parts.items()}


def process_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB): what a training process holds
    before its first tensor, once torch and transformers are imported."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
