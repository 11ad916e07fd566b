"""Building the model a run trains: a randomly initialised preset or a local checkpoint, plus LoRA."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from app.contract import model_catalog
from app.trainer import families

# A random preset (Qwen 3) also adapts lm_head: with random, untied embeddings, adapters on
# the attention and MLP alone barely move the loss.
LORA_TARGETS_PRESET = families.TUNIX_FAMILIES["qwen3"].lora_targets + r"|.*lm_head"


def _preset_model(preset: model_catalog.Preset, vocab_size: int, seed: int):
    from tunix.models.qwen3 import model as qwen3

    config = qwen3.ModelConfig(
        num_layers=preset.num_layers, vocab_size=vocab_size, embed_dim=preset.embed_dim,
        hidden_dim=preset.hidden_dim, num_heads=preset.num_heads, head_dim=preset.head_dim,
        num_kv_heads=preset.num_kv_heads, rope_theta=10_000, norm_eps=1e-6, use_tied_embedding=False)
    model = qwen3.Qwen3(config, rngs=nnx.Rngs(seed))
    _redraw_mlp_kernels(model, seed)
    return model


def _redraw_mlp_kernels(model, seed: int) -> None:
    # Tunix's Qwen3 starts MLP kernels at zero, expecting a checkpoint to fill them;
    # a random preset needs them drawn, scaled by fan-in, or the MLPs never learn.
    key = jax.random.key(seed + 1)
    for layer in model.layers:
        for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            key, sub = jax.random.split(key)
            shape = linear.kernel.value.shape
            linear.kernel.value = jax.random.normal(sub, shape, jnp.float32) / jnp.sqrt(shape[0])


def build_model(config: dict, vocab_size: int):
    """The model named by the run's model_id, with LoRA adapters when the run asks for them."""
    model_id, seed = config["model_id"], config["seed"]
    if model_id in model_catalog.PRESETS:
        model = _preset_model(model_catalog.PRESETS[model_id], vocab_size, seed)
        targets = LORA_TARGETS_PRESET
    else:
        model = families.load_model(Path(model_id))
        targets = families.family_of(Path(model_id)).lora_targets
    if config["finetune"] == "lora":
        import qwix

        provider = qwix.LoraProvider(module_path=targets, rank=config["lora_rank"], alpha=config["lora_alpha"])
        model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(seed + 2), **model.get_model_input())
    return model


def count_parameters(model) -> tuple[int, int]:
    """(all parameters, trainable parameters): LoRA runs train only their adapters."""
    total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    lora = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    return total, (lora or total)
