"""A Hugging Face causal LM → one GGUF file that llama.cpp (and Ollama) runs, written with the PyPI `gguf`
package: no network, no compiler.

    tokenmill export runs/x -o out --format gguf --outtype q8_0      # out/<name>-q8_0.gguf

Families: Llama (also Mistral and SmolLM2, which share its layout), Qwen2, GPT-2. What breaks converters,
handled here (see ../shared notes and the tests): Llama's Q/K rows permuted to llama.cpp's rope layout
(K with the KV head count); Qwen2's q/k/v biases, no permutation; GPT-2's Conv1D weights transposed and
its attention-mask buffers dropped; tied embeddings write no `output.weight`, a head untied by training
does; the vocabulary padded to `config.vocab_size`; 1-D tensors kept in F32; a row that does not fit a
quant block falls back to F16; `tokenizer.ggml.pre` named from tokenizer.json's structure.
f32/f16/bf16/q8_0/q4_0 are encoded by `gguf`; the k-quant mixes (q2_k ... q6_k) take llama.cpp's per-tensor
types and ggml's own quantizer (kquants.py): the same tensor bytes as `llama-quantize` on an f32 GGUF.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from tokenmill.export import K_QUANTS, OUTTYPES
from tokenmill.model import rope

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "GPT2LMHeadModel": "gpt2"}


def write_gguf(model, tokenizer, path: Path, outtype: str, name: str) -> dict:
    """Write `model` and `tokenizer` as `path` (atomically: a partial file is never left under that name)."""
    import gguf
    if outtype not in OUTTYPES:
        raise ValueError(f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")
    arch = architecture_of(model)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_name(name)
    add_hyperparameters(writer, arch, model.config)
    writer.add_file_type(file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_vocab = add_tokenizer(writer, tokenizer, model.config.vocab_size)
    counts, fallbacks = {}, {}
    if outtype in K_QUANTS:
        from tokenmill.export.kquants import quantized_tensors
        tensors, fallbacks = quantized_tensors(dict(gguf_tensors(model, arch)), outtype, layer_shape(model, arch))
    else:
        tensors = ((name, *encode(name, array, outtype)) for name, array in gguf_tensors(model, arch))
    for gguf_name, data, qtype in tensors:
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return {"file": str(path), "architecture": arch, "outtype": outtype, "vocab": n_vocab,
            "bytes": path.stat().st_size, "tensor_types": counts, "fallbacks": fallbacks}


def layer_shape(model, arch: str):
    """What llama.cpp's k-quant mixes read of a model (kquants.Model)."""
    from tokenmill.export.kquants import Model
    c = model.config
    n_layer = c.n_layer if arch == "gpt2" else c.num_hidden_layers
    n_head = c.n_head if arch == "gpt2" else c.num_attention_heads
    n_head_kv = n_head if arch == "gpt2" else (c.num_key_value_heads or n_head)
    tied = model.get_output_embeddings() is None or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return Model(n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, tied=tied,
                 is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv)


def architecture_of(model) -> str:
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    arch = next((ARCHITECTURES[n] for n in names if n in ARCHITECTURES), None)
    if arch is None:
        raise ValueError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {', '.join(names)}")
    return arch


def file_type(outtype: str):
    import gguf
    t = gguf.LlamaFileType
    if outtype in K_QUANTS:
        from tokenmill.export.kquants import MIXES
        return t(MIXES[outtype][0])
    return {"f32": t.ALL_F32, "f16": t.MOSTLY_F16, "bf16": t.MOSTLY_BF16, "q8_0": t.MOSTLY_Q8_0,
            "q4_0": t.MOSTLY_Q4_0}[outtype]


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or getattr(config, "rope_theta", 10000.0))


def add_hyperparameters(writer, arch: str, c) -> None:
    if arch == "gpt2":
        writer.add_context_length(c.n_positions)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(c.n_inner or 4 * c.n_embd)
        writer.add_block_count(c.n_layer)
        writer.add_head_count(c.n_head)
        writer.add_layer_norm_eps(c.layer_norm_epsilon)
        return
    scaling, _ = rope.gguf_fields(c)  # refuses a scaling llama.cpp would not be told about
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta(c))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    if scaling:
        import gguf
        writer.add_rope_scaling_type(gguf.RopeScalingType(scaling["type"]))
        writer.add_rope_scaling_factor(scaling["factor"])
        if "original_context_length" in scaling:
            writer.add_rope_scaling_orig_ctx_len(scaling["original_context_length"])


def permute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores Q/K rows as [first halves | second halves] per head (rotate_half); llama.cpp's rope pairs
    adjacent rows. The same reshuffle as llama.cpp's convert_hf_to_gguf.py `permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model, arch: str):
    """(gguf name, float32 array) for every weight, converted to llama.cpp's layout."""
    import gguf
    c = model.config
    n_layers = c.n_layer if arch == "gpt2" else c.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    state = model.state_dict()
    embed_key = "transformer.wte.weight" if arch == "gpt2" else "model.embed_tokens.weight"
    head_is_embedding = "lm_head.weight" not in state or torch.equal(state["lm_head.weight"], state[embed_key])
    for hf_name, tensor in state.items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias")) or "rotary_emb" in hf_name:
            continue  # buffers, not weights
        if hf_name == "lm_head.weight" and head_is_embedding:
            continue  # tied: llama.cpp reuses token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{hf_name}: no GGUF name for this tensor of a {arch} model")
        w = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            w = permute_for_rope(w, c.num_attention_heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            w = permute_for_rope(w, c.num_key_value_heads)
        elif arch == "gpt2" and hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            w = w.T  # Conv1D stores (in, out)
        yield name, np.ascontiguousarray(w)
    if arch != "gpt2":
        yield from rope.gguf_fields(c)[1].items()  # Llama 3's rope_freqs


def encode(name: str, w: np.ndarray, outtype: str):
    """(data, GGML type) for one tensor: 1-D tensors and position embeddings stay F32; a row that does not
    fit the quant block falls back to F16; q4_0 files keep the embedding and head at Q8_0 (as llama.cpp
    keeps them above 4 bits)."""
    import gguf
    from gguf.quants import QuantError, quantize
    q = gguf.GGMLQuantizationType
    if w.ndim == 1 or name.startswith("position_embd") or outtype == "f32":
        return w.astype(np.float32), q.F32
    qtype = {"f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0, "q4_0": q.Q4_0}[outtype]
    if qtype == q.Q4_0 and name.startswith(("token_embd", "output.")):
        qtype = q.Q8_0
    if qtype == q.F16:
        return w.astype(np.float16), q.F16
    try:
        return quantize(w, qtype), qtype
    except QuantError:
        return w.astype(np.float16), q.F16


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer (`tokenizer.ggml.pre`): it loads a missing one with degraded
    tokenization and refuses an unknown one, so an unsupported structure is an error here."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = json.dumps(parts[0].get("pattern", {}))
        if "\\\\p{N}{1,3}" in regex:
            return "llama-bpe"
        if "\\\\p{N}" in regex:
            return "qwen2"
    raise ValueError(f"tokenizer pre-tokenizer {json.dumps(pre)[:200]}: not one llama.cpp is known to tokenize "
                     "the same way (supported: gpt-2, smollm, qwen2, llama-bpe byte-level BPEs)")


def add_tokenizer(writer, tokenizer, n_vocab: int) -> int:
    """Tokens (padded to the model's vocab size), their types, merges, special ids and BOS/EOS behaviour
    exactly as the HF tokenizer has them."""
    import gguf
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        spec = json.loads((Path(tmp) / "tokenizer.json").read_text())
        if spec["model"]["type"] != "BPE":
            raise ValueError(f"GGUF export supports byte-level BPE tokenizers; this one is {spec['model']['type']}")
        vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
        size = max(n_vocab, max(vocab.values()) + 1)
        tokens = [f"[PAD{i}]" for i in range(size)]
        types = [gguf.TokenType.UNUSED] * size
        for text, i in vocab.items():
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
        for t in spec["added_tokens"]:
            types[t["id"]] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(spec))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=size)
        # Whether BOS/EOS are added is what the HF tokenizer does, not what its config files claim.
        special.add_special_token = adds_special_tokens(tokenizer)
        special.add_to_gguf(writer)
    return size


def adds_special_tokens(tokenizer) -> dict[str, bool]:
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos is not None and with_special[:1] == [bos] and plain[:1] != [bos],
            "eos": eos is not None and with_special[-1:] == [eos] and plain[-1:] != [eos]}
