"""Qwen3 checkpoints in the Hugging Face layout: config.json, model.safetensors, tokenizer.json.

Reading goes through Tunix's own safetensors loader; writing is the inverse of its key
mapping, so a model this trainer exports can be the base of the next run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from app.contract.model_catalog import CHECKPOINT_CONFIG
from app.contract.text_tokenizers import ByteTokenizer


def model_config_from_hf(checkpoint_dir: Path):
    """A Tunix Qwen3 ModelConfig from a checkpoint's config.json."""
    from tunix.models.qwen3 import model as qwen3

    hf = json.loads((checkpoint_dir / CHECKPOINT_CONFIG).read_text())
    if hf.get("model_type") != "qwen3":
        raise ValueError(f"{checkpoint_dir}: model_type {hf.get('model_type')!r} is not supported (only qwen3)")
    return qwen3.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf.get("rope_theta", 1_000_000)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), use_tied_embedding=bool(hf.get("tie_word_embeddings")))


def load_model(checkpoint_dir: Path):
    """Build a Qwen3 model with the checkpoint's weights (Tunix's safetensors loader)."""
    from tunix.models.qwen3 import params

    return params.create_model_from_safe_tensors(str(checkpoint_dir), model_config_from_hf(checkpoint_dir))


def _hf_config(cfg, tokenizer) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "torch_dtype": "float32",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "head_dim": cfg.head_dim,
        "num_key_value_heads": cfg.num_kv_heads, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.use_tied_embedding, "max_position_embeddings": 32768,
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
    }


def _hf_tensors(model) -> dict[str, np.ndarray]:
    """The model's weights under Hugging Face names, transposed back to (out, in)."""
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    cfg = model.config
    tensors = {"model.embed_tokens.weight": state["embedder"]["input_embedding"],
               "model.norm.weight": state["final_norm"]["w"]}
    if not cfg.use_tied_embedding:
        tensors["lm_head.weight"] = np.asarray(state["lm_head"]["w"]).T
    for i, layer in state["layers"].items():
        prefix = f"model.layers.{i}"
        attn, mlp = layer["attn"], layer["mlp"]
        for name in ("q_proj", "k_proj", "v_proj"):
            w = np.asarray(attn[name]["w"])  # (embed, heads, head_dim)
            tensors[f"{prefix}.self_attn.{name}.weight"] = w.reshape(w.shape[0], -1).T
        o = np.asarray(attn["o_proj"]["w"])  # (heads, head_dim, embed)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        tensors[f"{prefix}.self_attn.q_norm.weight"] = attn["q_norm"]["w"]
        tensors[f"{prefix}.self_attn.k_norm.weight"] = attn["k_norm"]["w"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            tensors[f"{prefix}.mlp.{name}.weight"] = np.asarray(mlp[name]["kernel"]).T
        tensors[f"{prefix}.input_layernorm.weight"] = layer["input_layernorm"]["w"]
        tensors[f"{prefix}.post_attention_layernorm.weight"] = layer["post_attention_layernorm"]["w"]
    return {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}


def _bytes_to_unicode() -> dict[int, str]:
    # The byte-to-character table of byte-level BPE (as in GPT-2), so every byte is one token.
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_byte_tokenizer_json(path: Path) -> None:
    """Save the presets' byte tokenizer as a `tokenizers` tokenizer.json with the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_tok = ByteTokenizer()
    vocab = {"<pad>": byte_tok.pad_id, "<bos>": byte_tok.bos_id, "<eos>": byte_tok.eos_id}
    vocab.update({char: b + byte_tok.offset for b, char in _bytes_to_unicode().items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    tokenizer.save(str(path))


def export(model, tokenizer, out_dir: Path, source_checkpoint: Path | None) -> Path:
    """Write a full-weight model as a Hugging Face layout checkpoint usable as a later run's model_id."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_hf_tensors(model), str(out_dir / "model.safetensors"))
    (out_dir / CHECKPOINT_CONFIG).write_text(json.dumps(_hf_config(model.config, tokenizer), indent=2))
    if source_checkpoint is not None:
        (out_dir / "tokenizer.json").write_bytes((source_checkpoint / "tokenizer.json").read_bytes())
    else:
        write_byte_tokenizer_json(out_dir / "tokenizer.json")
    return out_dir
