"""Generate: sample text from a model folder, or from a GGUF file through llama.cpp (same flags).

    tokenmill generate runs/x/60_export --prompt "ROMEO:" --max-new-tokens 100 --temperature 0.8
    tokenmill generate runs/x/60_export/x-q8_0.gguf --prompt "ROMEO:" --temperature 0
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tokenmill.schema import StrictModel


class GenerateConfig(StrictModel):
    prompt: str = Field("", description="text to continue")
    max_new_tokens: int = Field(100, gt=0)
    temperature: float = Field(0.8, ge=0, description="0 decodes greedily")
    top_k: int | None = Field(50, gt=0)
    top_p: float | None = Field(0.95, gt=0, le=1)
    seed: int = 0


def generate(model_dir: Path, cfg: GenerateConfig, model=None, tokenizer=None) -> str:
    if str(model_dir).endswith(".gguf"):
        return generate_gguf(Path(model_dir), cfg)
    import torch  # here, not at the top: tokenmill.config imports this module for GenerateConfig
    from transformers import AutoTokenizer

    from tokenmill.device import pick_device
    from tokenmill.model import load_model
    model = model or load_model(model_dir).to(pick_device("auto"))
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(cfg.seed)
    # An empty prompt starts from EOS, the token every document follows in training.
    prompt_ids = tokenizer(cfg.prompt, return_tensors="pt", add_special_tokens=False).input_ids
    if prompt_ids.numel() == 0:
        prompt_ids = torch.tensor([[tokenizer.eos_token_id]])
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p}
    out = model.generate(prompt_ids.to(model.device), attention_mask=torch.ones_like(prompt_ids).to(model.device),
                         max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                         **(sampling if cfg.temperature > 0 else {"do_sample": False}))
    return cfg.prompt + tokenizer.decode(out[0, prompt_ids.shape[1]:], skip_special_tokens=True)


def generate_gguf(path: Path, cfg: GenerateConfig) -> str:
    """The same decoding through llama.cpp: greedy at temperature 0; top-k/top-p off when unset."""
    from tokenmill.export.llamacpp import LlamaCpp
    llm = LlamaCpp(path, n_ctx=max(512, 4 * cfg.max_new_tokens))
    prompt = cfg.prompt or llm.eos_token()  # as above: an empty prompt starts after an EOS
    text = llm.generate(prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k or 0, cfg.top_p or 1.0, cfg.seed)
    return cfg.prompt + text
