"""An Ollama Modelfile beside each exported GGUF, so that `ollama create NAME -f NAME-q4_k_m.Modelfile` runs it.

Ollama's TEMPLATE is a Go template, not the tokenizer's Jinja chat template, so the chat format is
recognised by its markers (ChatML, Llama 3, Mistral [INST], Gemma) and written as Ollama's own template for
it, with its stop tokens and the default system prompt the Jinja template inserts (SmolLM2's does). A model
without a chat template (pre-trained from scratch) gets a plain completion template and its EOS as the stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenmill.atomic import atomic_write_text
from tokenmill.chat import render

# num_ctx: the trained context, at most this (Ollama allocates the whole KV cache up front).
MAX_DEFAULT_CTX = 4096


@dataclass(frozen=True)
class ChatFormat:
    marker: str          # a string the Jinja template renders that names the format
    template: str        # Ollama's Go template for it
    stops: tuple[str, ...]
    system_open: str     # what opens a rendered system message, to read a default system prompt back
    system_close: str


FORMATS = {
    "chatml": ChatFormat(
        "<|im_start|>",
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ("<|im_start|>", "<|im_end|>"), "<|im_start|>system\n", "<|im_end|>"),
    "llama3": ChatFormat(
        "<|start_header_id|>",
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|start_header_id|>system<|end_header_id|>\n\n",
        "<|eot_id|>"),
    "gemma": ChatFormat(
        "<start_of_turn>",
        "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ("<start_of_turn>", "<end_of_turn>"), "", ""),
    "mistral": ChatFormat(
        "[INST]",
        "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]{{ else }}{{ .Content }}</s>"
        "{{ end }}{{ end }}",
        ("[INST]", "[/INST]"), "", ""),
}


def chat_format(tokenizer) -> tuple[str, ChatFormat] | None:
    """The chat format the tokenizer's Jinja template renders, or None (no template, or one not known)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    rendered = render(tokenizer, [{"role": "user", "content": "hi"}], generation_prompt=True)
    return next(((name, f) for name, f in FORMATS.items() if f.marker in rendered), None)


def default_system(tokenizer, fmt: ChatFormat) -> str | None:
    """The system prompt the Jinja template adds when the chat has none (SmolLM2's names itself)."""
    if not fmt.system_open:
        return None
    rendered = render(tokenizer, [{"role": "user", "content": "hi"}], generation_prompt=True)
    start = rendered.find(fmt.system_open)
    if start < 0:
        return None
    start += len(fmt.system_open)
    return rendered[start:rendered.index(fmt.system_close, start)]


def modelfile(gguf: Path, tokenizer, context_length: int) -> str:
    """The Modelfile text for one GGUF file in the same folder."""
    lines = [f"FROM ./{gguf.name}", ""]
    found = chat_format(tokenizer)
    if found:
        _, fmt = found
        lines.append(f'TEMPLATE """{fmt.template}"""')
        system = default_system(tokenizer, fmt)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        stops = list(fmt.stops)
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
        stops = []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    lines += [""] + [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER num_ctx {context_length}", "PARAMETER temperature 0.7", "PARAMETER top_p 0.9", ""]
    return "\n".join(lines)


def write_modelfile(gguf: Path, tokenizer, context_length: int) -> Path:
    path = gguf.with_suffix(".Modelfile")
    atomic_write_text(path, modelfile(gguf, tokenizer, min(context_length, MAX_DEFAULT_CTX)))
    # the name only: the stage writes into a staging folder that is renamed when whole
    print(f"[export] Ollama, in the export folder: ollama create {gguf.stem} -f {path.name}")
    return path
