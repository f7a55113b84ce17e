"""Export: a run or a checkpoint → a Hugging Face folder that plain `transformers` loads, and/or GGUF files
that llama.cpp and Ollama run (`60_export/`).

    tokenmill export runs/x -o my-model                                   # HF folder (safetensors + tokenizer)
    tokenmill export runs/x -o my-model --format gguf --outtype q8_0      # my-model/x-q8_0.gguf
    tokenmill export runs/x/40_checkpoints/step-00000200 -o my-model      # a checkpoint (LoRA merged first)
    tokenmill export runs/x -o my-model --push-to-hub my-org/my-model     # and upload it (needs a token)

The folder gets a model card (README.md, see card.py) written from the run, and each GGUF an Ollama
Modelfile beside it (modelfile.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from tokenmill.atomic import atomic_write_text
from tokenmill.schema import StrictModel

# The GGUF types: those the `gguf` package encodes, and llama.cpp's k-quant mixes (kquants.py). Here, with the
# section's schema and not in gguf_writer.py: tokenmill.config and the CLI read them without importing torch.
WRITTEN_HERE = ("f32", "f16", "bf16", "q8_0", "q4_0")
K_QUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_s", "q3_k_m", "q3_k_l", "q2_k")
OUTTYPES = WRITTEN_HERE + K_QUANTS
OutType = Literal[OUTTYPES]


class ExportConfig(StrictModel):
    formats: list[Literal["hf", "gguf"]] = Field(default_factory=lambda: ["hf"], min_length=1,
                                                 description="hf: save_pretrained folder; gguf: llama.cpp files")
    gguf_outtypes: list[OutType] = Field(default_factory=lambda: ["f16"],
                                         description="GGUF tensor types: f32 f16 bf16 q8_0 q4_0, and llama.cpp's "
                                                     "k-quant mixes q4_k_m q4_k_s q5_k_m q5_k_s q6_k q3_k_s "
                                                     "q3_k_m q3_k_l q2_k (same bytes as llama-quantize)")
    license: str | None = Field(None, description="the model card's license (an SPDX id such as apache-2.0); "
                                                  "default: other")


def export_name(source: Path) -> str:
    """The run's name for a run, checkpoint or export folder (runs/x/40_checkpoints/step-N → x-step-N)."""
    path = Path(source).resolve()
    parts = [p.name for p in (path, *path.parents)]
    if parts[0].startswith("step-") and len(parts) > 2:
        return f"{parts[2]}-{parts[0]}"
    if parts[0] in ("final", "40_checkpoints", "41_merge", "42_sft", "60_export") and len(parts) > 1:
        return parts[1] if parts[0] != "final" else parts[2]
    return parts[0]


def run(cfg: ExportConfig, source: Path, out_dir: Path) -> dict:
    from tokenmill.export.card import model_card
    from tokenmill.export.modelfile import write_modelfile
    from tokenmill.model.source import load_source
    model, tokenizer, source = load_source(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"source": str(source), "params": sum(p.numel() for p in model.parameters())}
    if "hf" in cfg.formats:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    name = export_name(source)
    if "gguf" in cfg.formats:
        counts["gguf"] = [export_gguf(model, tokenizer, out_dir / f"{name}-{t}.gguf", t, name)
                          for t in cfg.gguf_outtypes]
        for g in counts["gguf"]:
            write_modelfile(Path(g["file"]), tokenizer, model.config.max_position_embeddings)
    gguf_files = [Path(g["file"]).name for g in counts.get("gguf", [])]
    atomic_write_text(out_dir / "README.md", model_card(name, source, cfg.license, gguf_files, counts["params"]))
    return counts


def export_gguf(model, tokenizer, path: Path, outtype: str, name: str) -> dict:
    from tokenmill.export.gguf_writer import write_gguf
    info = write_gguf(model, tokenizer, path, outtype, name)
    if info["fallbacks"]:  # rows that are not whole k-quant blocks (256), as llama-quantize warns
        changes = Counter(change.split(" (")[0] for change in info["fallbacks"].values())
        print(f"[export] {outtype}: {len(info['fallbacks'])} of {sum(info['tensor_types'].values())} tensors fall "
              f"back, their rows not being a multiple of 256: " + ", ".join(f"{c} x{n}" for c, n in changes.items()))
    return info
