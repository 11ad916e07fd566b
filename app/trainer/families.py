"""The model families a checkpoint may be of: how each is read from config.json, loaded, and adapted.

Every family loads through Tunix's own safetensors loader (`tunix.models.<family>.params`), with
the Tunix ModelConfig built here from the checkpoint's config.json. Which families exist, and what
the web tier may check of them, is in `app.contract.model_catalog.FAMILIES`.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp

from app.contract.model_catalog import CHECKPOINT_CONFIG, FAMILIES, supported_families


def _head_dim(hf: dict) -> int:
    return int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])


def _linear_config(module: str, hf: dict, rope_theta: int, norm_eps: float, **tying):
    """The ModelConfig of a family whose attention and MLP are linear projections (Qwen 2 and 3, Llama 3)."""
    model = importlib.import_module(f"tunix.models.{module}.model")
    return model.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=_head_dim(hf),
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf.get("rope_theta", rope_theta)),
        norm_eps=float(hf.get("rms_norm_eps", norm_eps)), **tying)


def _qwen3_config(hf: dict):
    return _linear_config("qwen3", hf, 1_000_000, 1e-6, use_tied_embedding=bool(hf.get("tie_word_embeddings")))


def _qwen2_config(hf: dict):
    return _linear_config("qwen2", hf, 1_000_000, 1e-6, use_tied_embedding=bool(hf.get("tie_word_embeddings")))


def _llama_config(hf: dict):
    # Llama names the tied head weight_tying where the Qwens say use_tied_embedding.
    return _linear_config("llama3", hf, 500_000, 1e-5, weight_tying=bool(hf.get("tie_word_embeddings")))


def _gemma3_config(hf: dict):
    from tunix.models.gemma3 import model

    pattern = hf.get("sliding_window_pattern", 6)
    if pattern != len(model.GEMMA3_ATTENTION_PATTERN):
        raise ValueError(f"sliding_window_pattern {pattern} is not Gemma 3's "
                         f"({len(model.GEMMA3_ATTENTION_PATTERN)}), the only one Tunix 0.1.7 runs")
    head_dim = _head_dim(hf)
    scalar = hf.get("query_pre_attn_scalar", head_dim)
    norm = model.QueryPreAttentionNormalisation
    if scalar == head_dim:
        query_norm = norm.BY_ONE_OVER_SQRT_HEAD_DIM
    elif scalar == hf["hidden_size"] // hf["num_attention_heads"]:
        query_norm = norm.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
    else:
        raise ValueError(f"query_pre_attn_scalar {scalar} is neither head_dim nor hidden_size / heads")
    return model.ModelConfig(
        num_layers=hf["num_hidden_layers"], num_embed=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=head_dim,
        num_kv_heads=hf["num_key_value_heads"], sliding_window_size=hf.get("sliding_window"),
        local_base_frequency=int(hf.get("rope_local_base_freq", 10_000)),
        global_base_frequency=int(hf.get("rope_theta", 1_000_000)), query_pre_attn_norm=query_norm,
        param_dtype=jnp.bfloat16 if hf.get("torch_dtype") == "bfloat16" else jnp.float32)


def _gemma2_config(hf: dict):
    from tunix.models.gemma import model

    head_dim = _head_dim(hf)
    if hf.get("query_pre_attn_scalar", head_dim) != head_dim:
        raise ValueError(f"query_pre_attn_scalar {hf['query_pre_attn_scalar']} is not head_dim ({head_dim}): "
                         "Tunix 0.1.7 scales Gemma 2's queries by head_dim only (Gemma 2 27B is not supported)")
    # Even layers attend within the sliding window, odd ones globally, as in Hugging Face's Gemma 2.
    pattern = (model.AttentionType.LOCAL_SLIDING, model.AttentionType.GLOBAL)
    return model.ModelConfig(
        num_layers=hf["num_hidden_layers"], num_embed=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=head_dim,
        num_kv_heads=hf["num_key_value_heads"], final_logit_softcap=hf.get("final_logit_softcapping"),
        attn_logits_soft_cap=hf.get("attn_logit_softcapping"), sliding_window_size=hf.get("sliding_window"),
        use_post_attn_norm=True, use_post_ffw_norm=True,
        attention_types=tuple(pattern[i % 2] for i in range(hf["num_hidden_layers"])))


@dataclass(frozen=True)
class TunixFamily:
    """One family as the trainer sees it: its Tunix modules, its ModelConfig, its LoRA targets."""

    model_type: str
    module: str  # tunix.models.<module>: model.py and params.py (or params_safetensors.py)
    params_module: str
    build_config: Callable[[dict], Any]

    @property
    def lora_targets(self) -> str:
        """A regex of the module paths LoRA adapts (qwix.LoraProvider's module_path)."""
        return ".*(" + "|".join(FAMILIES[self.model_type].lora_targets) + ")"

    def params(self):
        return importlib.import_module(f"tunix.models.{self.module}.{self.params_module}")

    def key_mapping(self, cfg) -> dict:
        """Tunix's own map from Hugging Face tensor names to its parameters (and each one's transform)."""
        return self.params()._get_key_and_transform_mapping(cfg)


TUNIX_FAMILIES: dict[str, TunixFamily] = {
    f.model_type: f
    for f in (
        TunixFamily("qwen3", "qwen3", "params", _qwen3_config),
        TunixFamily("qwen2", "qwen2", "params", _qwen2_config),
        TunixFamily("llama", "llama3", "params", _llama_config),
        TunixFamily("gemma3_text", "gemma3", "params_safetensors", _gemma3_config),
        TunixFamily("gemma2", "gemma", "params_safetensors", _gemma2_config),
    )
}


def read_config(checkpoint_dir: Path) -> dict:
    return json.loads((checkpoint_dir / CHECKPOINT_CONFIG).read_text())


def family_of(checkpoint_dir: Path) -> TunixFamily:
    """The family a checkpoint directory's config.json names; ValueError for any other."""
    model_type = read_config(checkpoint_dir).get("model_type")
    if model_type not in TUNIX_FAMILIES:
        raise ValueError(f"{checkpoint_dir}: model_type {model_type!r} is not supported "
                         f"(supported: {supported_families()})")
    return TUNIX_FAMILIES[model_type]


def model_config(checkpoint_dir: Path):
    """The Tunix ModelConfig of a checkpoint, from its config.json."""
    return family_of(checkpoint_dir).build_config(read_config(checkpoint_dir))


def load_model(checkpoint_dir: Path):
    """The checkpoint's model, its weights read by Tunix's loader for its family."""
    family = family_of(checkpoint_dir)
    return family.params().create_model_from_safe_tensors(str(checkpoint_dir), model_config(checkpoint_dir))
