"""What only a GPU exercises (`pytest -m gpu`; bench/gpu/run.py runs these first on the GPU machine). Skipped
where there is no CUDA device. Each builds what it needs (tiny random models, token batches): the GPU machine
has no network and none of the data stages' dependencies.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=8192)


def tiny(attention: str = "sdpa", seed: int = 0, **shape):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(LlamaConfig(**{**SHAPE, **shape}), attn_implementation=attention).cuda()


def batch(rows: int = 4, seq_len: int = 256, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, SHAPE["vocab_size"], (rows, seq_len + 1), generator=g)
    return {"input_ids": ids[:, :-1].cuda(), "labels": ids[:, 1:].cuda()}


def test_bf16_autocast_keeps_float32_master_weights():
    from tokenmill.device import autocast_for, compute_dtype
    from tokenmill.losses import next_token_loss
    device = torch.device("cuda")
    dtype = compute_dtype(device, "auto")
    assert dtype == torch.bfloat16  # auto: bf16 on a GPU
    model = tiny()
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = next_token_loss(model, batch(), autocast=autocast_for(device, dtype))
    loss.backward()
    optimizer.step()
    assert seen == [torch.bfloat16]  # the matmuls ran in bf16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights stayed fp32
    assert all(v.dtype == torch.float32 for s in optimizer.state.values() for v in s.values() if v.dim())


def test_fused_adamw_is_chosen_on_cuda_and_steps_as_the_loop_does():
    from tokenmill.train.optim import build_optimizer
    model = tiny()
    optimizer = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, torch.device("cuda"))
    assert optimizer.defaults["fused"] is True
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    from tokenmill.losses import next_token_loss
    next_token_loss(model, batch()).backward()
    optimizer.step()
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("attention", ["auto", "sdpa"])
def test_document_masking_at_8k_keeps_documents_apart_and_auto_builds_no_square_mask(attention, capsys):
    """Packed documents told apart by position ids alone, at 8,192 tokens, in the model as train.build makes it
    (train.document_masking on a GPU: attention auto → flex_attention). Each document's logits are its own, and
    with auto the forward holds no T x T mask: its extra memory over an unpacked forward is far below the
    64 MiB an 8k boolean mask takes. SDPA's figures (it builds that mask from the position ids) are printed."""
    from tokenmill.model import ModelConfig
    from tokenmill.train import TrainConfig, build
    from tokenmill.train.data import document_positions
    cfg = TrainConfig(seq_len=8192, document_masking=True, attention=attention)
    model_cfg = ModelConfig(preset=None, **{k: v for k, v in SHAPE.items() if k != "vocab_size"})
    model = build(model_cfg, cfg, {"vocab_size": SHAPE["vocab_size"], "eos_id": 0}, device=torch.device("cuda"))
    model = model.to(torch.bfloat16).eval()
    assert model.config._attn_implementation == ("flex_attention" if attention == "auto" else "sdpa")
    eos, seq_len = 0, 8192
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, SHAPE["vocab_size"], (1, seq_len), generator=g)
    ids[0, 4095] = eos  # two documents of 4,096 tokens
    ids = ids.cuda()
    extra = document_positions(ids, eos)
    with torch.no_grad():
        model(input_ids=ids, **extra, use_cache=False)  # compiles flex's kernels outside the measurement
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        plain = model(input_ids=ids, use_cache=False).logits
        plain_peak = torch.cuda.max_memory_allocated() - base
        del plain
        torch.cuda.reset_peak_memory_stats()
        packed = model(input_ids=ids, **extra, use_cache=False).logits
        packed_peak = torch.cuda.max_memory_allocated() - base
        second_alone = model(input_ids=ids[:, 4096:], use_cache=False).logits
    torch.testing.assert_close(packed[0, 4096:].float(), second_alone[0].float(), rtol=3e-2, atol=3e-2)
    square_mask = seq_len * seq_len  # bytes of a boolean mask
    print(json.dumps({"attention": model.config._attn_implementation, "packed_peak_mib": packed_peak / 2**20,
                      "plain_peak_mib": plain_peak / 2**20, "square_mask_mib": square_mask / 2**20}))
    if attention == "auto":
        assert packed_peak - plain_peak < square_mask / 4, (packed_peak, plain_peak)


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.distributed.is_nccl_available(), reason="needs NCCL")
def test_fsdp2_on_nccl_at_world_size_one_trains_and_gathers(tmp_path, monkeypatch):
    import torch.distributed as dist
    from tokenmill.train.distributed import World, unwrap, wrap
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = tiny()
        reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
        wrapped = wrap(model, "fsdp", World(), torch.device("cuda"), torch.bfloat16)
        from torch.distributed.fsdp import FSDPModule
        assert isinstance(unwrap(wrapped), FSDPModule) or isinstance(wrapped, FSDPModule)
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
        from tokenmill.losses import next_token_loss
        loss = next_token_loss(wrapped, batch())
        loss.backward()
        optimizer.step()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        assert set(full) == set(reference)
        assert any(not torch.equal(full[k].cuda(), reference[k]) for k in reference)
    finally:
        dist.destroy_process_group()


def test_torch_compile_gives_the_eager_loss():
    from tokenmill.losses import next_token_loss
    model = tiny()
    data = batch()
    eager = next_token_loss(model, data)
    compiled = next_token_loss(torch.compile(model), data)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_the_chunked_loss_on_cuda_equals_the_whole_one_and_holds_fewer_logits():
    from tokenmill.losses import chunked_head, next_token_loss
    model = tiny(vocab_size=32_000)
    data = batch(rows=2, seq_len=2048)
    torch.cuda.reset_peak_memory_stats()
    whole = next_token_loss(model, data)
    whole.backward()
    whole_peak = torch.cuda.max_memory_allocated()
    model.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    chunked = next_token_loss(model, data, head=chunked_head(model), chunk_tokens=512)
    chunked.backward()
    chunked_peak = torch.cuda.max_memory_allocated()
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert chunked_peak < whole_peak


def test_an_exact_resume_on_the_gpu(tmp_path):
    """Checkpoint at step 3 of 6, resume, and the weights at step 6 are the straight run's, bit for bit."""
    from tokenmill.losses import next_token_loss
    from tokenmill.train.checkpoint import load_checkpoint, save_checkpoint
    from tokenmill.train.optim import build_optimizer
    batches = [batch(seed=s) for s in range(6)]

    def steps(model, optimizer, which):
        for i in which:
            next_token_loss(model, batches[i]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    model = tiny()
    optimizer = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, torch.device("cuda"))
    steps(model, optimizer, range(3))
    save_checkpoint(tmp_path, model, optimizer, {"step": 3, "tokens": 0}, keep_last=1)
    steps(model, optimizer, range(3, 6))
    straight = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model = tiny(seed=5)  # other weights: the checkpoint must bring them all back
    optimizer = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, torch.device("cuda"))
    load_checkpoint(tmp_path / "step-00000003", model, optimizer)
    steps(model, optimizer, range(3, 6))
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_qlora_trains_on_bitsandbytes_cuda_kernels(tmp_path):
    pytest.importorskip("bitsandbytes")
    from tokenmill.losses import next_token_loss
    from tokenmill.model import ModelConfig
    from tokenmill.train import TrainConfig, build
    tiny().cpu().save_pretrained(tmp_path / "base")
    model_cfg = ModelConfig(preset=None, init_from=str(tmp_path / "base"), quantize="nf4", lora={"r": 8, "alpha": 16})
    model = build(model_cfg, TrainConfig(seq_len=256), {"vocab_size": SHAPE["vocab_size"], "eos_id": 0},
                  device=torch.device("cuda"))
    import bitsandbytes as bnb
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    before = [p.detach().clone() for p in trainable]
    loss = next_token_loss(model, batch(), autocast=functools.partial(torch.autocast, "cuda", torch.bfloat16))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, trainable))
