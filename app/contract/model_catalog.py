"""Which models a run may name: built-in presets, or a local checkpoint directory.

Kept free of JAX so the web tier can validate a model id at submission.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
SUPPORTED_CHECKPOINT_TYPES = ("qwen3",)


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
    names = ", ".join(sorted(PRESETS))
    if not is_checkpoint_path(model_id):
        return (f"unknown model {model_id[:80]!r}: use a preset ({names}) "
                "or the absolute path of a local checkpoint directory")
    if _outside_roots(model_id, roots):
        return (f"not an allowed model: use a preset ({names}) or a checkpoint directory under "
                "TUNIX_MODEL_ROOTS (by default the instance's models/ folder and the artifacts root)")
    try:
        return _checkpoint_problem(model_id)
    except OSError as exc:
        return f"checkpoint directory {model_id} cannot be read ({exc.strerror or type(exc).__name__})"


def _checkpoint_problem(model_id: str) -> str | None:
    path = Path(model_id)
    if not path.is_dir():
        return f"checkpoint directory {model_id} does not exist"
    if not (path / CHECKPOINT_CONFIG).is_file():
        return f"checkpoint directory {model_id} has no {CHECKPOINT_CONFIG}"
    if not any(path.glob("*.safetensors")):
        return f"checkpoint directory {model_id} has no *.safetensors weights"
    if not (path / "tokenizer.json").is_file():
        return f"checkpoint directory {model_id} has no tokenizer.json"
    try:
        model_type = json.loads((path / CHECKPOINT_CONFIG).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return f"checkpoint directory {model_id}: {CHECKPOINT_CONFIG} is not a JSON object"
    if model_type not in SUPPORTED_CHECKPOINT_TYPES:
        return (f"checkpoint directory {model_id}: model_type {model_type!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_CHECKPOINT_TYPES)})")
    return None
