"""Tiny random checkpoints of each family in the Hugging Face layout, written with numpy alone.

They stand in for the real checkpoints of each family (which cannot be downloaded here): the same
config.json keys, tensor names, shapes and tied or untied heads that Hugging Face writes, at a size a
CPU trains in seconds. Nothing of Tunix or of our exporter writes them, so loading them tests
Tunix's loaders and our config reading against the layout itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 2, 64, 4, 2, 16, 128
VOCAB = 264  # the byte tokenizer's ids (app.contract.text_tokenizers.ByteTokenizer)
PAD, BOS, EOS = 0, 1, 2

FAMILY_CONFIGS = {
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "rope_theta": 1_000_000, "tie_word_embeddings": False,
              "rms_norm_eps": 1e-6},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "rope_theta": 1_000_000, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-6},
    "llama": {"architectures": ["LlamaForCausalLM"], "rope_theta": 500_000, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-5},
    "gemma3_text": {"architectures": ["Gemma3ForCausalLM"], "rope_theta": 1_000_000, "rope_local_base_freq": 10_000,
                    "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": HEAD_DIM,
                    "tie_word_embeddings": True, "rms_norm_eps": 1e-6},
    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "rope_theta": 10_000, "sliding_window": 4096,
               "query_pre_attn_scalar": HEAD_DIM, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
               "tie_word_embeddings": True, "rms_norm_eps": 1e-6},
}
FAMILIES = tuple(FAMILY_CONFIGS)


def _tensors(model_type: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def weight(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    # Gemma scales its norms by (1 + w), the others by w.
    norm = (np.zeros if model_type.startswith("gemma") else np.ones)
    tensors = {"model.embed_tokens.weight": weight(VOCAB, HIDDEN), "model.norm.weight": norm(HIDDEN, np.float32)}
    if not FAMILY_CONFIGS[model_type]["tie_word_embeddings"]:
        tensors["lm_head.weight"] = weight(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        tensors.update({
            f"{p}.self_attn.q_proj.weight": weight(HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.k_proj.weight": weight(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.v_proj.weight": weight(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{p}.self_attn.o_proj.weight": weight(HIDDEN, HEADS * HEAD_DIM),
            f"{p}.mlp.gate_proj.weight": weight(FFN, HIDDEN),
            f"{p}.mlp.up_proj.weight": weight(FFN, HIDDEN),
            f"{p}.mlp.down_proj.weight": weight(HIDDEN, FFN),
            f"{p}.input_layernorm.weight": norm(HIDDEN, np.float32),
            f"{p}.post_attention_layernorm.weight": norm(HIDDEN, np.float32),
        })
        if model_type in ("qwen3", "gemma3_text"):
            tensors[f"{p}.self_attn.q_norm.weight"] = norm(HEAD_DIM, np.float32)
            tensors[f"{p}.self_attn.k_norm.weight"] = norm(HEAD_DIM, np.float32)
        if model_type == "qwen2":
            tensors[f"{p}.self_attn.q_proj.bias"] = np.zeros(HEADS * HEAD_DIM, np.float32)
            tensors[f"{p}.self_attn.k_proj.bias"] = np.zeros(KV_HEADS * HEAD_DIM, np.float32)
            tensors[f"{p}.self_attn.v_proj.bias"] = np.zeros(KV_HEADS * HEAD_DIM, np.float32)
        if model_type.startswith("gemma"):
            tensors[f"{p}.pre_feedforward_layernorm.weight"] = norm(HIDDEN, np.float32)
            tensors[f"{p}.post_feedforward_layernorm.weight"] = norm(HIDDEN, np.float32)
    return tensors


def _train_sentencepiece(path: Path) -> None:
    """A SentencePiece BPE model of exactly VOCAB pieces (pad 0, bos 1, eos 2, unk 3), trained on the sample
    dataset, saved as tokenizer.model: what a checkpoint that ships no tokenizer.json carries."""
    import io

    import sentencepiece

    from app.datasets.sample import sample_examples

    text = "\n".join(f"{e.prompt}\n{e.response}" for e in sample_examples())
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model,
                                             vocab_size=VOCAB, model_type="bpe", character_coverage=1.0,
                                             pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=3, minloglevel=2)
    path.write_bytes(model.getvalue())


def write_tiny_checkpoint(directory: Path, model_type: str, seed: int = 0, tokenizer: str = "bytes") -> Path:
    """A random checkpoint of `model_type` in the Hugging Face layout, with a byte-level tokenizer.json
    (or, with tokenizer="sentencepiece", only a SentencePiece tokenizer.model)."""
    from safetensors.numpy import save_file

    from app.contract.text_tokenizers import write_byte_tokenizer_json

    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": model_type, "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
              "head_dim": HEAD_DIM, "max_position_embeddings": 2048, "bos_token_id": BOS, "eos_token_id": EOS,
              "pad_token_id": PAD, "torch_dtype": "float32", **FAMILY_CONFIGS[model_type]}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_tensors(model_type, np.random.default_rng(seed)), str(directory / "model.safetensors"))
    if tokenizer == "sentencepiece":
        _train_sentencepiece(directory / "tokenizer.model")
    else:
        write_byte_tokenizer_json(directory / "tokenizer.json")
    return directory
