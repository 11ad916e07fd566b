"""The model families teams fine-tune: a checkpoint of each (Gemma 3, Llama 3, Qwen 2 / 2.5, Qwen 3) in the
Hugging Face layout loads through Tunix's own loader, trains full-weight or with LoRA on its family's
projections, and comes back out in the layout it came in (the adapters alone too, in PEFT's).

The checkpoints are tiny random ones written by tests/checkpoints.py (no weights can be downloaded
here): the names, shapes and config keys of each family, at a size a CPU trains in seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.checkpoints import FAMILIES, write_tiny_checkpoint
from tests.helpers import ROOT, SAMPLE, run_status, wait_for


def _in_a_trainer_process(check: str, family: str, directory) -> None:
    """Run one of tests/family_checks.py's checks in a process of its own: JAX stays out of the test process,
    which forks trainers and workers (a fork beside JAX's threads can deadlock)."""
    done = subprocess.run([sys.executable, "-m", "tests.family_checks", check, family, str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert done.stdout.strip().endswith("ok"), done.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_loads_with_tunix_and_exports_exactly_as_it_came(family, tmp_path):
    _in_a_trainer_process("round-trip", family, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_the_family_s_projections_merges_into_an_export_that_answers_the_same(family, tmp_path):
    _in_a_trainer_process("lora-merge", family, tmp_path)


def test_a_checkpoint_of_another_family_is_refused_at_submission_by_its_model_type(client, app, tmp_path):
    source = write_tiny_checkpoint(tmp_path / "models" / "mistral", "llama")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models")]
    response = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": str(source)})
    assert response.status_code == 422
    problem = response.get_json()["details"]["model_id"]
    assert "model_type 'mistral' is not supported" in problem
    for listed in ("qwen3 (Qwen 3)", "qwen2 (Qwen 2 / 2.5)", "llama (Llama 3)", "gemma3_text (Gemma 3)",
                   "gemma2 (Gemma 2)"):
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


def _plan(client, body: dict) -> dict:
    return client.post("/api/tunix/run?mode=dry_run", json=body).get_json()["result"]["model"]


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
    planned = _plan(client, {**body, "model_id": str(source)})
    assert planned["parameters"] == planned["trainable_parameters"] == full["result"]["parameters"]
    export = artifacts_root / full["run_id"] / "model"
    assert json.loads((export / "config.json").read_text())["model_type"] == family
    assert _names_and_shapes(export) == _names_and_shapes(source)
    assert not (artifacts_root / full["run_id"] / "adapter").exists()

    lora = client.post("/api/tunix/run?mode=async", json={**body, "model_id": str(export), "finetune": "lora",
                                                            "learning_rate": 0.02}).get_json()
    lora = _finished(client, lora["run_id"])
    # The plan counts LoRA's A and B from the headers alone, as the trainer counts them in the model.
    planned = _plan(client, {**body, "model_id": str(export), "finetune": "lora"})
    assert planned["trainable_parameters"] == lora["result"]["trainable_parameters"] < planned["parameters"]
    run_dir = artifacts_root / lora["run_id"]
    assert _names_and_shapes(run_dir / "model") == _names_and_shapes(source)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["base_model_name_or_path"] == str(export)
    page = client.get(f"/runs/{lora['run_id']}").get_data(as_text=True)
    assert "Download model" in page and "Download adapter" in page


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _with_chat_template(source, template: str = CHATML):
    (source / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    return source


def test_chat_format_writes_the_user_turn_then_the_assistant_s(tmp_path):
    from app.contract import prompt_format
    from app.contract.text_tokenizers import load_tokenizer
    from app.contract.training_plan import encode_example

    source = _with_chat_template(write_tiny_checkpoint(tmp_path / "chat", "qwen3"))
    chat = prompt_format.chat_format(source)
    assert chat.prompt("2 + 2?") == "<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert chat.response("2 + 2?", "4") == "4<|im_end|>\n"
    tokenizer = load_tokenizer(str(source))
    example = encode_example(tokenizer, "2 + 2?", "4", 128, pad=False, prompt_format=chat)
    learned = tokenizer.decode([t for t, m in zip(example.tokens, example.mask) if m])
    assert learned == "4<|im_end|>\n"  # the loss is on the assistant's turn only (and EOS)
    assert tokenizer.decode(example.tokens[1:]).startswith("<|im_start|>user\n2 + 2?")
    plain = encode_example(tokenizer, "2 + 2?", "4", 128, pad=False)
    assert tokenizer.decode([t for t, m in zip(plain.tokens, plain.mask) if m]) == "4"


@pytest.mark.parametrize("model, template, words", [
    ("tiny", None, "the presets have none"),
    ("checkpoint", None, "has no chat template (tokenizer_config.json's chat_template)"),
    ("checkpoint", "{% if messages %}{{ raise_exception('only system prompts') }}{% endif %}",
     "the chat template fails: only system prompts"),
    ("checkpoint", "{% for m in messages %}", "the chat template does not parse"),
])
def test_chat_is_refused_where_no_template_can_render_it(model, template, words, client, app, tmp_path):
    source = write_tiny_checkpoint(tmp_path / "models" / "base", "qwen2")
    if template is not None:
        _with_chat_template(source, template)
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models")]
    model_id = "tiny" if model == "tiny" else str(source)
    response = client.post("/api/tunix/run?mode=dry_run",
                           json={"dataset_key": SAMPLE, "model_id": model_id, "prompt_format": "chat"})
    assert response.status_code == 422
    assert words in response.get_json()["details"]["prompt_format"]


def test_evaluation_asks_in_the_chat_format_too(tmp_path):
    _in_a_trainer_process("chat-prompts", "qwen3", tmp_path)


@pytest.mark.trainer
def test_a_chat_run_trains_on_the_examples_its_plan_counted(client, app, tmp_path):
    """The trainer writes each example with the chat template exactly as the plan does: a length that cuts
    no plain example cuts the chat examples the plan said it would."""
    from tests.test_trainer import REAL_TRAINER

    source = _with_chat_template(write_tiny_checkpoint(tmp_path / "models" / "chat", "qwen3"))
    app.config.update(MODEL_ROOTS=[str(tmp_path / "models")], TRAIN_COMMAND=REAL_TRAINER)
    body = {"dataset_key": SAMPLE, "model_id": str(source), "max_steps": 4, "eval_max_examples": 2,
            "eval_max_new_tokens": 4}
    longest_plain = client.post("/api/tunix/run?mode=dry_run", json=body).get_json()["result"]["tokens"]["max"]
    body["max_seq_length"] = longest_plain
    plan = client.post("/api/tunix/run?mode=dry_run", json={**body, "prompt_format": "chat"}).get_json()["result"]
    assert plan["examples_over_max_seq_length"] > 0 and plan["prompt_format"] == "chat"
    run = client.post("/api/tunix/run?mode=sync", json={**body, "prompt_format": "chat"}).get_json()
    assert run["status"] == "completed", (run["error_message"], run["stderr_tail"])
    assert run["result"]["examples_truncated"] == plan["examples_over_max_seq_length"]
    plain = client.post("/api/tunix/run?mode=sync", json=body).get_json()
    assert plain["result"]["examples_truncated"] == 0


def test_the_dry_run_plan_counts_the_chat_turns_and_shows_the_model_and_its_memory(client, app, tmp_path):
    source = _with_chat_template(write_tiny_checkpoint(tmp_path / "models" / "chat", "gemma3_text"))
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models")]
    from app.queue import registry

    registry.register("gpu-host:1:a", "gpu-host", 1, [{"kind": "gpu", "name": "H200", "memory_bytes": 141 * 2**30}])
    plans = {fmt: client.post("/api/tunix/run?mode=dry_run", json={
        "dataset_key": SAMPLE, "model_id": str(source), "prompt_format": fmt, "finetune": "lora", "lora_rank": 4,
        "batch_size": 8, "max_seq_length": 256}).get_json()["result"] for fmt in ("plain", "chat")}
    # Each chat example carries both turns' markers: 42 more bytes than "prompt\nresponse" in the byte tokenizer.
    per_example = (plans["chat"]["tokens"]["total"] - plans["plain"]["tokens"]["total"]) / plans["chat"]["examples"]
    assert per_example == len("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n") - 1
    model = plans["chat"]["model"]
    assert model["family"] == "Gemma 3" and model["model_type"] == "gemma3_text"
    assert model["parameters"] == sum(np.prod(s) for s in _shapes_of(source))
    assert 0 < model["trainable_parameters"] < model["parameters"]
    memory = model["memory_bytes"]
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    assert memory["weights"] == model["parameters"] * 4 and memory["optimizer_state"] == 2 * memory["gradients"]
    assert model["fit"]["fits"] is True and "H200, 141.0 GiB" in model["fit"]["note"]
    page = client.get(f"/runs/{client.get('/api/tunix/runs?mode=dry_run&limit=1').get_json()['runs'][0]['run_id']}")
    text = page.get_data(as_text=True)
    assert "Gemma 3" in text and "Memory per step" in text and "it fits the largest device" in text


def test_a_step_too_big_for_every_worker_s_device_is_said_not_to_fit(client, app):
    from app.queue import registry

    registry.register("small:1:a", "small", 1, [{"kind": "gpu", "name": "T4", "memory_bytes": 2**20}])
    plan = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": "small",
                                                            "batch_size": 64, "max_seq_length": 1024}).get_json()
    fit = plan["result"]["model"]["fit"]
    assert fit["fits"] is False and "will not fit the largest device a live worker reports (T4" in fit["note"]
    assert plan["status"] == "completed"  # a warning: a bigger worker may join before the run starts


def _shapes_of(source):
    from app.contract.model_catalog import safetensors_shapes

    return [shape for _, shape in safetensors_shapes(source).values()]


def test_the_form_lists_the_checkpoints_under_the_model_roots(client, app, tmp_path, artifacts_root):
    write_tiny_checkpoint(tmp_path / "models" / "llama-tiny", "llama")
    write_tiny_checkpoint(tmp_path / "models" / "team" / "gemma-tiny", "gemma3_text")
    broken = write_tiny_checkpoint(tmp_path / "models" / "broken", "qwen3")
    (broken / "tokenizer.json").unlink()
    app.config["MODEL_ROOTS"] = [str(tmp_path / "models")]
    page = client.get("/runs/new").get_data(as_text=True)
    assert "Checkpoints found (2)" in page
    assert f'<option value="{tmp_path / "models" / "llama-tiny"}">llama-tiny: Llama 3, ' in page
    assert f'<option value="{tmp_path / "models" / "team" / "gemma-tiny"}">team/gemma-tiny: Gemma 3, ' in page
    assert "broken" not in page


@pytest.mark.trainer
def test_a_checkpoint_with_only_a_sentencepiece_tokenizer_plans_trains_and_exports_it(client, app, artifacts_root,
                                                                                      tmp_path):
    from tests.test_trainer import REAL_TRAINER

    source = write_tiny_checkpoint(tmp_path / "models" / "sp", "gemma3_text", tokenizer="sentencepiece")
    assert not (source / "tokenizer.json").exists()
    app.config.update(MODEL_ROOTS=[str(tmp_path / "models")], TRAIN_COMMAND=REAL_TRAINER)
    body = {"dataset_key": SAMPLE, "model_id": str(source), "max_steps": 6, "eval_max_examples": 2,
            "eval_max_new_tokens": 4}
    plan = client.post("/api/tunix/run?mode=dry_run", json=body).get_json()["result"]
    # SentencePiece pieces, not bytes: far fewer tokens than the byte tokenizer's one per character.
    assert 0 < plan["tokens"]["mean"] < 40
    run = client.post("/api/tunix/run?mode=sync", json=body).get_json()
    assert run["status"] == "completed", (run["error_message"], run["stderr_tail"])
    export = artifacts_root / run["run_id"] / "model"
    assert (export / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
