"""Checks of each family that need JAX, run by tests/test_model_families.py in a process of their own:

    python -m tests.family_checks round-trip|lora-merge FAMILY DIRECTORY

Each raises (and exits non-zero) on a failed check, and prints "ok" when all passed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tests.checkpoints import write_tiny_checkpoint

LORA = {"finetune": "lora", "lora_rank": 4, "lora_alpha": 8.0}


def _logits(output):
    return np.asarray(output[0] if isinstance(output, tuple) else output)


def round_trip(family: str, tmp_path: Path) -> None:
    """Load with Tunix, export with no training: the same tensors, bit for bit."""
    from safetensors.numpy import load_file

    from app.trainer import families, hf_checkpoint

    source = write_tiny_checkpoint(tmp_path / family, family)
    model = families.load_model(source)
    out = hf_checkpoint.export(model, None, tmp_path / "export", source, {"finetune": "full"})
    before, after = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape and after[name].dtype == tensor.dtype, name
        np.testing.assert_array_equal(after[name], tensor, err_msg=name)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert json.loads((out / "config.json").read_text())["model_type"] == family


def lora_merge(family: str, tmp_path: Path) -> None:
    """LoRA on the family's projections: the merged export answers as the adapted model does, and the
    adapters alone, added to the base in PEFT's way, give the merged weights."""
    import jax
    import qwix
    from flax import nnx
    from safetensors.numpy import load_file

    from app.contract.model_catalog import FAMILIES as CATALOG
    from app.trainer import families, hf_checkpoint

    source = write_tiny_checkpoint(tmp_path / family, family)
    model = families.load_model(source)
    inputs = model.get_model_input()
    provider = qwix.LoraProvider(module_path=families.family_of(source).lora_targets, rank=4, alpha=8.0)
    adapted = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(0), **inputs)
    key = jax.random.key(1)
    for path, variable in nnx.iter_graph(adapted):  # B starts at zero: give the adapters something to say
        if isinstance(variable, nnx.LoRAParam) and "lora_b" in str(path[-1]):
            key, sub = jax.random.split(key)
            variable[...] = jax.random.normal(sub, variable[...].shape) * 0.1
    merged = hf_checkpoint.export(adapted, None, tmp_path / "model", source, LORA)
    adapter = hf_checkpoint.export_adapter(adapted, tmp_path / "adapter", source, LORA)

    reloaded = families.load_model(merged)
    np.testing.assert_allclose(_logits(reloaded(**inputs)), _logits(adapted(**inputs)), atol=1e-4)

    base, weights = load_file(str(source / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    pairs = load_file(str(adapter / "adapter_model.safetensors"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    adapted_weights = {k[len("base_model.model."):-len(".lora_A.weight")] for k in pairs if k.endswith("lora_A.weight")}
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {name.split(".")[-1] for name in adapted_weights} == projections
    assert len(adapted_weights) == 7 * 2  # every projection of both layers, Gemma's fused q, k and v included
    for module in adapted_weights:
        a, b = pairs[f"base_model.model.{module}.lora_A.weight"], pairs[f"base_model.model.{module}.lora_B.weight"]
        assert a.shape[0] == 4 and b.shape[1] == 4
        np.testing.assert_allclose(base[f"{module}.weight"] + b @ a * 2.0, weights[f"{module}.weight"], atol=1e-5)
    assert CATALOG[family].lora_targets  # the catalog the web tier shows names them


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_prompts(family: str, tmp_path: Path) -> None:
    """Evaluation asks in the format the run trained in: the chat template's user turn, assistant opened."""
    from app.contract.text_tokenizers import load_tokenizer
    from app.trainer import evaluation, families

    source = write_tiny_checkpoint(tmp_path / family, family)
    (source / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    config = {"model_id": str(source), "prompt_format": "chat", "eval_max_new_tokens": 8, "max_seq_length": 64,
              "answer_pattern": None}
    eval_set = evaluation.EvalSet([("2 + 2?", "4"), ("3 + 3?", "6")], "d-v1", "held-out split")
    evaluator = evaluation.Evaluator(eval_set, load_tokenizer(str(source)), families.model_config(source), config,
                                     tmp_path)
    assert evaluator.prompts == ["<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n",
                                 "<|im_start|>user\n3 + 3?<|im_end|>\n<|im_start|>assistant\n"], evaluator.prompts
    plain = evaluation.Evaluator(eval_set, load_tokenizer(str(source)), families.model_config(source),
                                 {**config, "prompt_format": "plain"}, tmp_path)
    assert plain.prompts == ["2 + 2?\n", "3 + 3?\n"]


CHECKS = {"round-trip": round_trip, "lora-merge": lora_merge, "chat-prompts": chat_prompts}

if __name__ == "__main__":
    CHECKS[sys.argv[1]](sys.argv[2], Path(sys.argv[3]))
    print("ok")
