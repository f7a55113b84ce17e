"""Chats as token ids: the one renderer that fine-tuning, the Modelfile and serving share.

A conversation is rendered with the model's own Jinja chat template (`tokenizer.apply_chat_template`, what
transformers, vLLM and llama.cpp's server read from the exported model), or with ChatML when the model has
none (a model pre-trained from scratch); the template is then saved with the model, so that what was
trained is what is served. The tokens an assistant turn produces (its text and the end-of-turn marker) are
found by rendering each prefix of the conversation with the generation prompt: what lies between that prompt
and the end of the turn is the assistant's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLES = ("system", "user", "assistant")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEMPLATES = {"chatml": CHATML}


class ChatError(ValueError):
    """A conversation the template cannot render, or one with nothing to learn."""


def use_template(tokenizer, name: str = "auto") -> str:
    """Give the tokenizer its chat template: its own (`auto`), or a named one when it has none or when asked.
    Returns which was used."""
    if name == "auto" and getattr(tokenizer, "chat_template", None):
        return "own"
    chosen = "chatml" if name == "auto" else name
    if chosen not in TEMPLATES:
        raise ValueError(f"chat template {name!r}: not known; choose auto (the model's own) or {', '.join(TEMPLATES)}")
    tokenizer.chat_template = TEMPLATES[chosen]
    return chosen


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


@dataclass
class Encoded:
    ids: np.ndarray          # the rendered conversation's tokens
    assistant: np.ndarray    # True where the token is one an assistant turn produces

    def __len__(self) -> int:
        return len(self.ids)


def check_messages(messages) -> str | None:
    """What is wrong with a conversation's shape, or None."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"messages[{i}] must be {{role: str, content: str}}"
        if m["role"] not in ROLES:
            return f"messages[{i}]: role {m['role']!r} is not one of {', '.join(ROLES)}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn: nothing to learn from it"
    return None


def encode(tokenizer, messages: list[dict]) -> Encoded:
    """The conversation's tokens and which of them are the assistant's."""
    try:
        text = render(tokenizer, messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt, turn = render(tokenizer, messages[:i], True), render(tokenizer, messages[:i + 1])
            if not (text.startswith(prompt) and text.startswith(turn) and turn.startswith(prompt)):
                raise ChatError(f"the chat template does not render messages[{i}] (an assistant turn) after its "
                                "prompt as a continuation of it; it cannot say which tokens are the assistant's")
            spans.append((len(prompt), len(turn)))
    except ChatError:
        raise
    except Exception as e:  # jinja's TemplateError and the templates' own raise_exception
        raise ChatError(f"the chat template cannot render it ({type(e).__name__}: {e})") from e
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.array([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
    assistant = np.zeros(len(starts), dtype=bool)
    for start, end in spans:
        assistant |= (starts >= start) & (starts < end)
    return Encoded(np.array(encoded["input_ids"], dtype=np.int64), assistant)
