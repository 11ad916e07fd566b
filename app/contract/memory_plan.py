"""What a run's model is and what one training step holds in memory, read from its config.json and the
safetensors headers (no weights are loaded, no JAX is imported): for a dry run's plan.

The memory is an estimate, part by part: the weights as loaded; a gradient and AdamW's two moments for
every trainable parameter, in the parameters' dtype; the activations a step keeps for its backward pass
at this batch and length (per layer: the residual stream and norms, q, k and v, the attention scores
and probabilities, the MLP's three projections; and the logits with their gradient in float32).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from app.contract import model_catalog

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
GiB = 2**30


def _lora_parameters(model_type: str, hf: dict, shapes: dict[str, tuple[int, ...]], rank: int,
                     preset: bool) -> int:
    """LoRA's A (rank x in) and B (out x rank) for every projection the family adapts."""
    tunix_modules = set(model_catalog.FAMILIES[model_type].lora_targets) | ({"lm_head"} if preset else set())
    adapted = _hf_names(tunix_modules)
    total = 0
    for name, shape in shapes.items():
        module = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if name.endswith(".weight") and len(shape) == 2 and module in adapted:
            out_features, in_features = shape
            total += rank * (in_features + out_features)
    if model_type in model_catalog.GEMMA_FAMILIES:  # k and v share one A in Gemma's fused kv einsum
        layers, embed = hf["num_hidden_layers"], hf["hidden_size"]
        total -= layers * rank * embed * (2 if hf["num_attention_heads"] == hf["num_key_value_heads"] else 1)
    return total


def _hf_names(tunix_modules: set[str]) -> set[str]:
    """The Hugging Face projections Tunix's modules stand for (Gemma's einsums fuse q, k and v)."""
    names = set(tunix_modules)
    if {"q_einsum", "qkv_einsum"} & tunix_modules:
        names.add("q_proj")
    if {"kv_einsum", "qkv_einsum"} & tunix_modules:
        names |= {"k_proj", "v_proj"}
    if "attn_vec_einsum" in tunix_modules:
        names.add("o_proj")
    return names


def model_plan(config: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The family, the parameter counts (all and trainable) and the memory of one training step."""
    model_id = config["model_id"]
    preset = model_id in model_catalog.PRESETS
    if preset:
        hf = model_catalog.preset_config(model_catalog.PRESETS[model_id], vocab_size)
        shapes = model_catalog.expected_shapes("qwen3", hf)
        weight_bytes, family = 4, f"{model_catalog.FAMILIES['qwen3'].name} (the {model_id} preset)"
    else:
        path = Path(model_id)
        hf = json.loads((path / model_catalog.CHECKPOINT_CONFIG).read_text())
        tensors = model_catalog.safetensors_shapes(path)
        shapes = {name: shape for name, (_, shape) in tensors.items()}
        weight_bytes = max((DTYPE_BYTES.get(dtype, 4) for dtype, _ in tensors.values()), default=4)
        family = model_catalog.FAMILIES[hf["model_type"]].name
    model_type = hf["model_type"]
    parameters = sum(math.prod(shape) for shape in shapes.values())
    trainable = parameters if config["finetune"] == "full" else _lora_parameters(
        model_type, hf, shapes, config["lora_rank"], preset)
    memory = {"weights": parameters * weight_bytes, "gradients": trainable * weight_bytes,
              "optimizer_state": 2 * trainable * weight_bytes,
              "activations": _activation_bytes(hf, config["batch_size"], config["max_seq_length"], weight_bytes)}
    return {"family": family, "model_type": model_type, "parameters": parameters, "trainable_parameters": trainable,
            "memory_bytes": {**memory, "total": sum(memory.values())}}


def _activation_bytes(hf: dict, batch: int, length: int, dtype_bytes: int) -> int:
    embed, ffn, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    heads, kv_heads = hf["num_attention_heads"], hf["num_key_value_heads"]
    head_dim = hf.get("head_dim") or embed // heads
    per_token_per_layer = 4 * embed + (2 * heads + 2 * kv_heads) * head_dim + 3 * ffn + 2 * heads * length
    logits = batch * length * hf["vocab_size"] * 4 * 2
    return layers * batch * length * per_token_per_layer * dtype_bytes + logits


def fit(memory_total: int, devices: list[dict], run_devices: int = 1) -> dict[str, Any]:
    """Whether a step's share on each of the run's devices fits the largest device the workers report, and a
    sentence that says so. The share is the total over the devices: the mesh splits weights, gradients and
    optimizer state (fsdp, tp) and the batch's activations (fsdp) evenly."""
    share = -(-memory_total // max(1, run_devices))
    need = (f"A step needs about {share / GiB:.2f} GiB per device ({memory_total / GiB:.2f} GiB over "
            f"{run_devices} devices)" if run_devices > 1 else f"A step needs about {memory_total / GiB:.2f} GiB")
    sizes = [d["memory_bytes"] for d in devices if isinstance(d.get("memory_bytes"), int)]
    if not sizes:
        return {"fits": None, "largest_device_bytes": None, "per_device_bytes": share,
                "note": f"{need}; no live worker has reported its devices"}
    largest = max(sizes)
    name = next(d.get("name") or d.get("kind") for d in devices if d.get("memory_bytes") == largest)
    fits = share <= largest
    verdict = "fits" if fits else "will not fit"
    return {"fits": fits, "largest_device_bytes": largest, "per_device_bytes": share,
            "note": f"{need}: it {verdict} the largest device a live worker reports ({name}, {largest / GiB:.1f} GiB)"}
