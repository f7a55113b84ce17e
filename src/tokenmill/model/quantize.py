"""QLoRA's 4-bit base: `model.quantize` loads the base model's linear layers in 4 bits (bitsandbytes NF4 or
FP4, through transformers' BitsAndBytesConfig) and LoRA trains on top, as on CUDA, so on x86 CPUs too
(bitsandbytes >= 0.49).

What trains is small (adapters, and the embeddings when they train), so a QLoRA checkpoint holds only that;
the 4-bit base is made again from `model.init_from` on resume, and the final model merges the adapters into
the full-precision base, not the 4-bit one (peft warns of rounding when merging into 4 bits).
"""

from __future__ import annotations

from tokenmill.model.config import QuantizeConfig


def require_bitsandbytes():
    import logging
    # Its CPU backend warns at import that an optional inference kernel (the `kernels` package) is missing;
    # training never uses that path (prepare_for_training turns it off).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError("model.quantize needs bitsandbytes: pip install 'tokenmill[qlora]' (or pip install "
                          "'bitsandbytes>=0.49'; on CPU it needs an x86-64 machine)") from e
    return bitsandbytes


def bnb_config(cfg: QuantizeConfig):
    import torch
    from transformers import BitsAndBytesConfig
    require_bitsandbytes()
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.type,
                              bnb_4bit_compute_dtype=dtypes[cfg.compute_dtype],
                              bnb_4bit_use_double_quant=cfg.double_quant)


def prepare_for_training(model, activation_checkpointing: bool):
    """peft's k-bit preparation (norms in fp32, input grads for checkpointing), and every 4-bit layer kept
    off bitsandbytes' fused CPU inference path: its first eval-mode forward repacks the weights in place for
    `gemv_4bit`, which has no backward, and LoRA's gradients then come back None or wrong (notes/qlora.md)."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.weight.requires_grad_(False)
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(getattr(model, "base_model", None),
                                                                      "is_loaded_in_4bit", False))
