"""Which models a run may name: built-in presets, or a local checkpoint directory.

Kept free of JAX so the web tier can validate a model id at submission.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from app.contract import model_refs

DEFAULT_MODEL_ID = "tiny"


@dataclass(frozen=True)
class Preset:
    """A randomly initialised model built from a small config of one of Tunix's families."""

    model_id: str
    description: str
    num_layers: int
    embed_dim: int
    hidden_dim: int
    num_heads: int
    head_dim: int
    num_kv_heads: int


PRESETS: dict[str, Preset] = {
    p.model_id: p
    for p in (
        Preset("tiny", "Qwen3 architecture, 2 layers, width 64, byte tokenizer (~140k parameters). "
               "Trains on a laptop CPU in about a minute.", 2, 64, 256, 4, 16, 2),
        Preset("small", "Qwen3 architecture, 4 layers, width 256, byte tokenizer (~3.4M parameters). "
               "For a GPU host or a patient CPU.", 4, 256, 1024, 8, 32, 4),
    )
}

# A checkpoint directory in the Hugging Face layout: config.json, safetensors weights, a tokenizer.
CHECKPOINT_CONFIG = "config.json"
TOKENIZER_FILE = "tokenizer.json"  # Hugging Face tokenizers
SENTENCEPIECE_FILE = "tokenizer.model"  # a SentencePiece model, read when there is no tokenizer.json
TOKENIZER_CONFIG = "tokenizer_config.json"


GEMMA_LORA_TARGETS = ("q_einsum", "kv_einsum", "qkv_einsum", "attn_vec_einsum", "gate_proj", "up_proj", "down_proj")
GEMMA_FAMILIES = ("gemma2", "gemma3_text")


@dataclass(frozen=True)
class Family:
    """A model family Tunix can load from safetensors, as config.json's model_type names it."""

    model_type: str
    name: str
    lora_targets: tuple[str, ...]  # the projections LoRA adapts, by their Tunix module names


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("qwen3", "Qwen 3", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        Family("qwen2", "Qwen 2 / 2.5", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj")),
        Family("llama", "Llama 3", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        # Gemma's attention projections are einsums over (heads, embed, head_dim), not linear layers.
        Family("gemma3_text", "Gemma 3", GEMMA_LORA_TARGETS),
        Family("gemma2", "Gemma 2", GEMMA_LORA_TARGETS),
    )
}


def supported_families() -> str:
    """The families a checkpoint may be of, as an error message lists them."""
    return ", ".join(f"{f.model_type} ({f.name})" for f in FAMILIES.values())


def is_checkpoint_path(model_id: str) -> bool:
    """Model ids that are absolute paths name a local checkpoint directory."""
    return model_id.startswith("/")


MAX_PATH_CHARS = 1024


def _outside_roots(model_id: str, roots: Sequence[Path]) -> bool:
    if "\x00" in model_id or len(model_id) > MAX_PATH_CHARS:
        return True
    try:
        resolved = Path(model_id).resolve()
        return not any(resolved.is_relative_to(Path(root).resolve()) for root in roots)
    except (OSError, RuntimeError, ValueError):
        return True


def check_model_id(model_id: str, roots: Sequence[Path] = ()) -> str | None:
    """Return what is wrong with a model id, or None when a run can use it.

    A checkpoint must lie under one of `roots` (after resolving links). Anywhere else gets
    one message, whether or not the path exists, so the check reveals nothing of the host.
    """
    if model_id in PRESETS:
        return None
    if model_refs.is_model_ref(model_id):
        try:
            model_refs.parse(model_id)
        except ValueError as exc:
            return str(exc)
        return None  # whether the registry has it is the run service's check
    names = ", ".join(sorted(PRESETS))
    if not is_checkpoint_path(model_id):
        return (f"unknown model {model_id[:80]!r}: use a preset ({names}), a registered model "
                "(models:/<name>/<version> or models:/<name>@<alias>) or the absolute path of a local checkpoint "
                "directory")
    if _outside_roots(model_id, roots):
        return (f"not an allowed model: use a preset ({names}) or a checkpoint directory under "
                "TUNIX_MODEL_ROOTS (by default the instance's models/ folder and the artifacts root)")
    try:
        return _checkpoint_problem(model_id)
    except OSError as exc:
        return f"checkpoint directory {model_id} cannot be read ({exc.strerror or type(exc).__name__})"


def attention_heads(model_id: str) -> tuple[int, int] | None:
    """(query heads, key/value heads) of a preset or a checkpoint's config.json; None when unreadable."""
    if model_id in PRESETS:
        return PRESETS[model_id].num_heads, PRESETS[model_id].num_kv_heads
    try:
        config = json.loads((Path(model_id) / CHECKPOINT_CONFIG).read_text())
        return _whole(config, "num_attention_heads"), _whole(config, "num_key_value_heads")
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def _checkpoint_problem(model_id: str) -> str | None:
    return _read_checkpoint(Path(model_id))[0]


def _read_checkpoint(path: Path) -> tuple[str | None, dict, dict[str, tuple[str, tuple[int, ...]]]]:
    """(what is wrong with a checkpoint directory or None, its config.json, its tensors' dtypes and shapes),
    each file read once."""
    model_id = str(path)
    if not path.is_dir():
        return f"checkpoint directory {model_id} does not exist", {}, {}
    problem = _missing_file(path)
    if problem:
        return problem, {}, {}
    try:
        config = json.loads((path / CHECKPOINT_CONFIG).read_text())
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError):
        return f"checkpoint directory {model_id}: {CHECKPOINT_CONFIG} is not a JSON object", {}, {}
    if model_type not in FAMILIES:
        return (f"checkpoint directory {model_id}: model_type {str(model_type)[:40]!r} is not supported "
                f"(supported: {supported_families()})"), config, {}
    try:
        tensors = safetensors_shapes(path)
        expected = expected_shapes(model_type, config)
    except ValueError as exc:
        return f"checkpoint directory {model_id}: {exc}", config, {}
    for name, shape in expected.items():
        if name not in tensors:
            return (f"checkpoint directory {model_id}: its *.safetensors hold no {name}, "
                    f"which {CHECKPOINT_CONFIG} implies"), config, tensors
        if tensors[name][1] != shape:
            return (f"checkpoint directory {model_id}: {name} is {list(tensors[name][1])} in the weights but "
                    f"{CHECKPOINT_CONFIG} implies {list(shape)}"), config, tensors
    return None, config, tensors


def _missing_file(path: Path) -> str | None:
    model_id = str(path)
    if not (path / CHECKPOINT_CONFIG).is_file():
        return f"checkpoint directory {model_id} has no {CHECKPOINT_CONFIG}"
    if not any(path.glob("*.safetensors")):
        return f"checkpoint directory {model_id} has no *.safetensors weights"
    if not (path / TOKENIZER_FILE).is_file() and not (path / SENTENCEPIECE_FILE).is_file():
        return f"checkpoint directory {model_id} has no {TOKENIZER_FILE} (nor a SentencePiece {SENTENCEPIECE_FILE})"
    return None


def _whole(config: dict, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{CHECKPOINT_CONFIG} has no positive whole {key}")
    return value


def expected_shapes(model_type: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this family and config.json holds, by its Hugging Face name and shape."""
    layers, embed, ffn, vocab = (_whole(config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                              "vocab_size"))
    heads, kv_heads = _whole(config, "num_attention_heads"), _whole(config, "num_key_value_heads")
    head_dim = config.get("head_dim") or embed // heads
    shapes = {"model.embed_tokens.weight": (vocab, embed), "model.norm.weight": (embed,)}
    # Gemma always ties its head to the embedding; the others say so in tie_word_embeddings.
    if model_type not in GEMMA_FAMILIES and not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, embed)
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes.update({f"{p}.self_attn.q_proj.weight": (heads * head_dim, embed),
                       f"{p}.self_attn.k_proj.weight": (kv_heads * head_dim, embed),
                       f"{p}.self_attn.v_proj.weight": (kv_heads * head_dim, embed),
                       f"{p}.self_attn.o_proj.weight": (embed, heads * head_dim),
                       f"{p}.mlp.gate_proj.weight": (ffn, embed), f"{p}.mlp.up_proj.weight": (ffn, embed),
                       f"{p}.mlp.down_proj.weight": (embed, ffn), f"{p}.input_layernorm.weight": (embed,),
                       f"{p}.post_attention_layernorm.weight": (embed,)})
        if model_type in ("qwen3", "gemma3_text"):
            shapes.update({f"{p}.self_attn.q_norm.weight": (head_dim,), f"{p}.self_attn.k_norm.weight": (head_dim,)})
        if model_type == "qwen2":
            shapes.update({f"{p}.self_attn.q_proj.bias": (heads * head_dim,),
                           f"{p}.self_attn.k_proj.bias": (kv_heads * head_dim,),
                           f"{p}.self_attn.v_proj.bias": (kv_heads * head_dim,)})
        if model_type in GEMMA_FAMILIES:
            shapes.update({f"{p}.pre_feedforward_layernorm.weight": (embed,),
                           f"{p}.post_feedforward_layernorm.weight": (embed,)})
    return shapes


def preset_config(preset: Preset, vocab_size: int) -> dict:
    """A preset's config.json (Qwen 3): what its export writes, and what its shapes follow from."""
    return {"model_type": "qwen3", "num_hidden_layers": preset.num_layers, "hidden_size": preset.embed_dim,
            "intermediate_size": preset.hidden_dim, "num_attention_heads": preset.num_heads,
            "head_dim": preset.head_dim, "num_key_value_heads": preset.num_kv_heads, "vocab_size": vocab_size,
            "tie_word_embeddings": False}


MAX_HEADER_BYTES = 100 * 1024 * 1024  # a safetensors header this large is not one


def safetensors_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) across a checkpoint's *.safetensors files, read from their headers only."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as f:
            prefix = f.read(8)
            size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < size <= MAX_HEADER_BYTES:
                raise ValueError(f"{file.name} is not a safetensors file")
            try:
                header = json.loads(f.read(size))
                for name, meta in header.items():
                    if name != "__metadata__":
                        tensors[name] = (str(meta["dtype"]), tuple(int(d) for d in meta["shape"]))
            except (ValueError, TypeError, KeyError, AttributeError):
                raise ValueError(f"{file.name} has an unreadable header") from None
    return tensors


@dataclass(frozen=True)
class CheckpointFacts:
    """What the web tier can tell of a checkpoint without loading it."""

    path: str
    family: Family
    parameters: int
    size_bytes: int
    dtype: str
    chat_template: bool


def _facts(path: Path, config: dict, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> CheckpointFacts:
    """A valid checkpoint's family, parameter count, size on disk and whether it carries a chat template."""
    parameters = sum(math.prod(shape) for _, shape in tensors.values())
    dtypes = sorted({dtype for dtype, _ in tensors.values()})
    return CheckpointFacts(str(path), FAMILIES[config["model_type"]], parameters,
                           sum(f.stat().st_size for f in path.glob("*.safetensors")), "/".join(dtypes),
                           chat_template(path) is not None)


MAX_SCANNED_FOLDERS = 5000  # a form must not walk a huge artifacts root
MAX_LISTED_CHECKPOINTS = 200
SKIPPED_FOLDERS = frozenset({"checkpoints", "tensorboard", "adapter"})  # a run's folders that hold no checkpoint


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint under one of the model roots, as the form lists it."""

    name: str  # its path below the root
    facts: CheckpointFacts


def find_checkpoints(roots: Sequence[Path]) -> list[FoundCheckpoint]:
    """The valid checkpoints in each root, its folders and theirs (a run's model/ under the artifacts root)."""
    found: list[FoundCheckpoint] = []
    scanned = 0
    for root in roots:
        root = Path(root)
        frontier = [root] if root.is_dir() else []
        for depth in range(3):
            following = []
            for folder in frontier:
                scanned += 1
                if scanned > MAX_SCANNED_FOLDERS or len(found) >= MAX_LISTED_CHECKPOINTS:
                    return found
                try:
                    if (folder / CHECKPOINT_CONFIG).is_file():
                        problem, config, tensors = _read_checkpoint(folder)
                        if problem is None:
                            found.append(FoundCheckpoint(folder.relative_to(root).as_posix() or folder.name,
                                                         _facts(folder, config, tensors)))
                        continue
                    if depth < 2:
                        following += sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                                            and not p.name.startswith(".") and p.name not in SKIPPED_FOLDERS)
                except (OSError, ValueError):
                    continue
            frontier = following
    return found


def chat_template(path: Path) -> str | None:
    """The Jinja chat template a checkpoint's tokenizer_config.json carries, if any."""
    try:
        template = json.loads((path / TOKENIZER_CONFIG).read_text()).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) and template.strip() else None
