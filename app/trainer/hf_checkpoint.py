"""A trained model written back in the Hugging Face layout it came in: config.json, model.safetensors,
the tokenizer files; and a LoRA run's adapter alone, in PEFT's layout.

A checkpoint's export holds the tensors its source held, under the same names, shapes and dtypes,
each one taken from the trained model through the inverse of Tunix's own loading map for its family
(`_get_key_and_transform_mapping`: a transpose, then a reshape). Tensors Tunix does not train (a
tied head, rotary caches) are copied from the source. A random preset has no source: its Qwen 3
layout is written from its config. A LoRA run's adapters are merged into the weights first.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
from flax import nnx

from app.contract import model_catalog
from app.contract.model_catalog import CHECKPOINT_CONFIG, safetensors_shapes
from app.contract.text_tokenizers import write_byte_tokenizer_json
from app.trainer import families

WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Written by us or describing the source's own shards: never copied into an export.
NOT_COPIED = re.compile(r".*\.safetensors$|.*\.safetensors\.index\.json$")


def trained_parameters(model) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(every base parameter by its Tunix path; the LoRA pairs, A and B, by the path of the weight they adapt)."""
    flat = {".".join(map(str, path)): np.asarray(value.value if hasattr(value, "value") else value)
            for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in [k for k in flat if k.endswith("_lora_a")]:
        base = key[: -len("_lora_a")]
        pairs[base] = (flat.pop(key), flat.pop(base + "_lora_b"))
    return flat, pairs


def lora_delta(weight_shape: tuple[int, ...], a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """The change a LoRA pair makes to its weight, in the weight's own layout.

    qwix keeps A over the weight's input axes and B over its output axes, each in the weight's
    order; the input axes need not come first (Gemma's q_einsum is heads, embed, head_dim).
    """
    rank = a.shape[-1]
    product = (a.reshape(-1, rank) @ b.reshape(rank, -1)) * scale
    if product.size != math.prod(weight_shape):
        raise ValueError(f"a LoRA pair of {a.shape} and {b.shape} does not fit a weight of {weight_shape}")
    in_axes = _input_axes(weight_shape, a.shape[:-1], b.shape[1:])
    out_axes = [i for i in range(len(weight_shape)) if i not in in_axes]
    ordered = product.reshape([weight_shape[i] for i in in_axes] + [weight_shape[i] for i in out_axes])
    return np.transpose(ordered, np.argsort(in_axes + out_axes))


def _input_axes(weight_shape: tuple[int, ...], a_dims: tuple[int, ...], b_dims: tuple[int, ...]) -> list[int]:
    """Which axes of the weight LoRA's A spans (the rest are B's)."""
    count = len(weight_shape)
    if len(a_dims) + len(b_dims) == count:  # each axis kept, as an einsum's pair keeps them
        matches = [list(axes) for axes in combinations(range(count), len(a_dims))
                   if [weight_shape[i] for i in axes] == list(a_dims)
                   and [weight_shape[i] for i in range(count) if i not in axes] == list(b_dims)]
        leading = list(range(len(a_dims)))
        if leading in matches:  # a dot_general's input axes, and every family's but Gemma's einsums
            return leading
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"cannot tell which axes of a {weight_shape} weight LoRA's A {tuple(a_dims)} spans")
    size = math.prod(a_dims)  # flattened: A spans the leading axes whose product is its size
    for n in range(1, count):
        if math.prod(weight_shape[:n]) == size:
            return list(range(n))
    raise ValueError(f"LoRA's A {tuple(a_dims)} spans no leading axes of a {weight_shape} weight")


def merged_parameters(model, config: dict) -> dict[str, np.ndarray]:
    """The model's parameters by Tunix path, LoRA adapters merged into the weights they adapt."""
    params, pairs = trained_parameters(model)
    scale = float(config.get("lora_alpha", 1.0)) / float(config.get("lora_rank", 1)) if pairs else 1.0
    for path, (a, b) in pairs.items():
        params[path] = params[path] + lora_delta(params[path].shape, a, b, scale).astype(params[path].dtype)
    return params


def _to_hf(value: np.ndarray, transform, hf_shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of Tunix's load transform (transpose by `permute`, then reshape)."""
    if not transform:
        return value.reshape(hf_shape)
    permute, _ = transform
    if not permute:
        return value.reshape(hf_shape)
    permuted = tuple(hf_shape[i] for i in permute)
    return np.transpose(value.reshape(permuted), np.argsort(permute))


def _gemma_projection(params: dict[str, np.ndarray], layer: str, slot: str) -> np.ndarray:
    """Gemma's q, k or v weight as Tunix's loader held it before fusing: (embed, heads, head_dim)."""
    attn = f"layers.{layer}.attn"
    if f"{attn}.qkv_einsum.w" in params:  # as many KV heads as query heads: one (3, heads, embed, head_dim)
        stacked = params[f"{attn}.qkv_einsum.w"][{"q": 0, "k": 1, "v": 2}[slot]]
    elif slot == "q":
        stacked = params[f"{attn}.q_einsum.w"]
    else:
        stacked = params[f"{attn}.kv_einsum.w"][{"k": 0, "v": 1}[slot]]
    return np.transpose(stacked, (1, 0, 2))


def _source_tensor(source: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
    raise KeyError(name)


def hf_tensors_like(params: dict[str, np.ndarray], config: dict, cfg, source: Path) -> dict[str, np.ndarray]:
    """Every tensor the source checkpoint holds, under its name, shape and dtype, from the trained parameters."""
    shapes = safetensors_shapes(source)
    tensors = {}
    for name, target, transform in _hf_names_and_targets(config, cfg, source):
        dtype, shape = shapes[name]
        if target.startswith("unused."):
            tensors[name] = _source_tensor(source, name)
            continue
        fused = re.fullmatch(r"tmp\.layers\.([0-9]+)\.attn\.([qkv])", target)
        value = _gemma_projection(params, fused.group(1), fused.group(2)) if fused else params[target]
        original_dtype = _source_tensor_dtype(dtype)
        tensors[name] = np.ascontiguousarray(_to_hf(np.asarray(value), transform, shape).astype(original_dtype))
    return tensors


def _source_tensor_dtype(dtype: str):
    import ml_dtypes

    return {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64}.get(dtype, np.float32)


def _preset_config(config: dict, cfg) -> dict:
    """A preset's config.json: the catalog's Qwen 3 shape, and what Tunix built it with."""
    preset = model_catalog.PRESETS[config["model_id"]]
    return {**model_catalog.preset_config(preset, cfg.vocab_size), "architectures": ["Qwen3ForCausalLM"],
            "torch_dtype": "float32", "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
            "max_position_embeddings": 32768}


def _shapes(config: dict, cfg, source: Path | None) -> dict[str, tuple[int, ...]]:
    if source is None:
        return model_catalog.expected_shapes("qwen3", _preset_config(config, cfg))
    return {name: shape for name, (_, shape) in safetensors_shapes(source).items()}


def preset_tensors(params: dict[str, np.ndarray], config: dict, cfg) -> dict[str, np.ndarray]:
    """A preset's weights in the Qwen 3 layout, through the inverse of Tunix's Qwen 3 loading map."""
    shapes = _shapes(config, cfg, None)
    return {name: np.ascontiguousarray(_to_hf(params[target], transform, shapes[name]).astype(np.float32))
            for name, target, transform in _hf_names_and_targets(config, cfg, None)}


def _hf_names_and_targets(config: dict, cfg, source: Path | None):
    """(Hugging Face name, Tunix path, transform) of every tensor the export holds."""
    from tunix.utils.torch_utils import torch_key_to_jax_key

    family = families.TUNIX_FAMILIES["qwen3"] if source is None else families.family_of(source)
    mapping = family.key_mapping(cfg)
    for name in _shapes(config, cfg, source):
        target, transform = torch_key_to_jax_key(mapping, name)
        yield name, target, transform


def adapter_tensors(pairs: dict[str, tuple[np.ndarray, np.ndarray]], config: dict, cfg,
                    source: Path | None) -> dict[str, np.ndarray]:
    """The LoRA pairs in PEFT's layout: for each adapted Hugging Face weight W (out, in), A (rank, in) and
    B (out, rank), so that W + B @ A * alpha / rank is the merged weight."""
    tensors = {}
    for name, target, _ in _hf_names_and_targets(config, cfg, source):
        fused = re.fullmatch(r"tmp\.layers\.([0-9]+)\.attn\.([qkv])", target)
        if fused:  # Gemma: one pair adapts q, k and v (or k and v) together; B splits by slot
            layer, slot = fused.groups()
            attn = f"layers.{layer}.attn"
            if f"{attn}.qkv_einsum.w" in pairs:
                (a, b), index = pairs[f"{attn}.qkv_einsum.w"], {"q": 0, "k": 1, "v": 2}[slot]
            elif slot == "q" and f"{attn}.q_einsum.w" in pairs:
                (a, b), index = pairs[f"{attn}.q_einsum.w"], None
            elif slot != "q" and f"{attn}.kv_einsum.w" in pairs:
                (a, b), index = pairs[f"{attn}.kv_einsum.w"], {"k": 0, "v": 1}[slot]
            else:
                continue
            b = b if index is None else b[:, index]
        elif target in pairs:
            a, b = pairs[target]
        else:
            continue
        rank = a.shape[-1]
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    return tensors


def export_adapter(model, out_dir: Path, source_checkpoint: Path | None, config: dict) -> Path | None:
    """A LoRA run's adapters alone, in PEFT's layout (adapter_config.json, adapter_model.safetensors)."""
    from safetensors.numpy import save_file

    _, pairs = trained_parameters(model)
    if not pairs:
        return None
    tensors = adapter_tensors(pairs, config, model.config, source_checkpoint)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(out_dir / ADAPTER_WEIGHTS))
    modules = sorted({key.split(".")[-3] for key in tensors})
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config["lora_rank"], "lora_alpha": config["lora_alpha"],
        "lora_dropout": 0.0, "bias": "none", "target_modules": modules, "fan_in_fan_out": False,
        "inference_mode": True, "base_model_name_or_path": str(source_checkpoint or config["model_id"])}, indent=2))
    return out_dir


def export(model, tokenizer, out_dir: Path, source_checkpoint: Path | None, config: dict) -> Path:
    """The trained model (a LoRA run's merged) in the Hugging Face layout, usable as a later run's model_id."""
    from safetensors.numpy import save_file

    params = merged_parameters(model, config)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if source_checkpoint is None:
        save_file(preset_tensors(params, config, model.config), str(out_dir / WEIGHTS))
        (out_dir / CHECKPOINT_CONFIG).write_text(json.dumps({
            **_preset_config(config, model.config), "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id}, indent=2))
        write_byte_tokenizer_json(out_dir / "tokenizer.json")
        return out_dir
    save_file(hf_tensors_like(params, config, model.config, source_checkpoint), str(out_dir / WEIGHTS))
    for file in sorted(source_checkpoint.iterdir()):
        if file.is_file() and not NOT_COPIED.fullmatch(file.name):
            shutil.copyfile(file, out_dir / file.name)
    return out_dir
