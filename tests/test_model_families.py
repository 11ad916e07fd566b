"""The model families teams fine-tune: a checkpoint of each (Gemma 3, Llama 3, Qwen 2 / 2.5, Qwen 3) in the
Hugging Face layout loads through Tunix's own loader, trains full-weight or with LoRA on its family's
projections, and comes back out in the layout it came in (the adapters alone too, in PEFT's).

The checkpoints are tiny random ones written by tests/checkpoints.py (no weights can be downloaded
here): the names, shapes and config keys of each family, at a size a CPU trains in seconds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.checkpoints import FAMILIES, write_tiny_checkpoint
from tests.helpers import SAMPLE, run_status, wait_for

LORA = {"finetune": "lora", "lora_rank": 4, "lora_alpha": 8.0}


def _logits(output):
    return np.asarray(output[0] if isinstance(output, tuple) else output)


@pytest.fixture(scope="module")
def jax_stack():
    """The trainer's own modules, imported in the test process only for these tests."""
    pytest.importorskip("tunix")
    from app.trainer import families, hf_checkpoint

    return families, hf_checkpoint


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_loads_with_tunix_and_exports_exactly_as_it_came(family, jax_stack, tmp_path):
    families, hf_checkpoint = jax_stack
    from safetensors.numpy import load_file

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


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_the_family_s_projections_merges_into_an_export_that_answers_the_same(family, jax_stack, tmp_path):
    families, hf_checkpoint = jax_stack
    import jax
    import qwix
    from flax import nnx
    from safetensors.numpy import load_file

    from app.contract.model_catalog import FAMILIES as CATALOG

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


def test_a_checkpoint_of_another_family_is_refused_at_submission_by_its_model_type(client, app, tmp_path):
    source = write_tiny_checkpoint(tmp_path / "models" / "mistral", "llama")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models")]
    response = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": str(source)})
    assert response.status_code == 422
    problem = response.get_json()["details"]["model_id"]
    assert "model_type 'mistral' is not supported" in problem
    for listed in ("qwen3 (Qwen 3)", "qwen2 (Qwen 2 / 2.5)", "llama (Llama 3)", "gemma3_text (Gemma 3)"):
        assert listed in problem


def _break(source, how: str) -> str:
    """Damage a checkpoint one way; the words the refusal must use."""
    config = json.loads((source / "config.json").read_text())
    if how == "no weights":
        (source / "model.safetensors").unlink()
        return "has no *.safetensors weights"
    if how == "not safetensors":
        (source / "model.safetensors").write_bytes(b"\xff" * 64)
        return "model.safetensors is not a safetensors file"
    if how == "shape mismatch":
        (source / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
        return "model.layers.0.mlp.gate_proj.weight is [128, 64] in the weights but config.json implies [96, 64]"
    if how == "a missing tensor":
        (source / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
        return "its *.safetensors hold no model.layers.2.self_attn.q_proj.weight, which config.json implies"
    if how == "no tokenizer":
        (source / "tokenizer.json").unlink()
        return "has no tokenizer.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no weights", "not safetensors", "shape mismatch", "a missing tensor",
                                 "no tokenizer"])
def test_a_damaged_checkpoint_is_refused_at_submission_naming_the_file_and_the_problem(how, client, app, tmp_path):
    source = write_tiny_checkpoint(tmp_path / "models" / "damaged", "llama")
    words = _break(source, how)
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models")]
    for mode in ("dry_run", "async"):
        response = client.post(f"/api/tunix/run?mode={mode}", json={"dataset_key": SAMPLE, "model_id": str(source)})
        assert response.status_code == 422
        assert words in response.get_json()["details"]["model_id"]
        assert str(source) in response.get_json()["details"]["model_id"]


def _names_and_shapes(directory) -> dict[str, tuple[int, ...]]:
    from app.contract.model_catalog import safetensors_shapes

    return {name: shape for name, (_, shape) in safetensors_shapes(directory).items()}


def _finished(client, run_id: str) -> dict:
    wait_for(lambda: run_status(client, run_id) in ("completed", "failed", "timeout", "cancelled"), timeout=300)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["status"] == "completed", (run["error_message"], run["stderr_tail"])
    losses = [p["loss"] for p in client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()["train"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, f"the loss did not fall: {losses}"
    return run


@pytest.mark.trainer
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_full_then_lora_on_its_own_export_through_a_worker(family, client, app, artifacts_root,
                                                                              tmp_path, worker_env, start_worker):
    """A full run of the checkpoint, then a LoRA run whose base is the full run's export: both through a worker."""
    from tests.test_trainer import REAL_TRAINER

    source = write_tiny_checkpoint(tmp_path / "models" / family, family)
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models"), str(artifacts_root)]
    start_worker(worker_env(REAL_TRAINER))
    body = {"dataset_key": SAMPLE, "max_steps": 24, "learning_rate": 0.01, "eval_every_n_steps": 12,
            "eval_max_examples": 4, "eval_max_new_tokens": 8, "lora_rank": 8, "lora_alpha": 32}

    full = client.post("/api/tunix/run?mode=async", json={**body, "model_id": str(source)}).get_json()
    full = _finished(client, full["run_id"])
    export = artifacts_root / full["run_id"] / "model"
    assert json.loads((export / "config.json").read_text())["model_type"] == family
    assert _names_and_shapes(export) == _names_and_shapes(source)
    assert not (artifacts_root / full["run_id"] / "adapter").exists()

    lora = client.post("/api/tunix/run?mode=async", json={**body, "model_id": str(export), "finetune": "lora",
                                                            "learning_rate": 0.02}).get_json()
    lora = _finished(client, lora["run_id"])
    assert lora["result"]["trainable_parameters"] < lora["result"]["parameters"]
    run_dir = artifacts_root / lora["run_id"]
    assert _names_and_shapes(run_dir / "model") == _names_and_shapes(source)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["base_model_name_or_path"] == str(export)
    page = client.get(f"/runs/{lora['run_id']}").get_data(as_text=True)
    assert "Download model" in page and "Download adapter" in page
