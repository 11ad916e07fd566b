"""Pure functions: validation, dataset parsing, progress protocol, planning, chart, state machine."""
import math

import pytest

from app.contract import progress_protocol, training_plan
from app.contract.text_tokenizers import ByteTokenizer
from app.datasets.parsing import Example, check_name, parse_example_list, parse_jsonl
from app.errors import ValidationError
from app import run_states
from app.runs.validation import FIELDS, validate_run_config
from app.web import loss_chart


def test_defaults_fill_every_field():
    config = validate_run_config({"dataset_key": "d-v1"})
    assert config["model_id"] == "tiny"
    for field in FIELDS:
        assert config[field.name] == field.default


def test_form_strings_are_coerced():
    config = validate_run_config({"dataset_key": "d-v1", "learning_rate": " 0.01 ", "batch_size": "8",
                                  "max_steps": ""})
    assert config["learning_rate"] == 0.01 and config["batch_size"] == 8 and config["max_steps"] is None


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", 0, "greater than 0"),
    ("learning_rate", 2, "at most 1"),
    ("learning_rate", "fast", "must be a number"),
    ("learning_rate", float("nan"), "finite"),
    ("batch_size", 0, "at least 1"),
    ("batch_size", 2.5, "whole number"),
    ("batch_size", True, "not true"),
    ("num_epochs", 100000, "at most 1000"),
    ("max_seq_length", 4, "at least 8"),
    ("finetune", "qlora", "one of full, lora"),
    ("lr_schedule", "step", "one of constant, cosine, linear"),
    ("eval_fraction", 0.9, "at most 0.5"),
    ("seed", -1, "at least 0"),
])
def test_each_bad_value_is_named(field, value, message):
    with pytest.raises(ValidationError) as info:
        validate_run_config({"dataset_key": "d-v1", field: value})
    assert message in info.value.details[field]
    assert set(info.value.details) == {field}


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValidationError) as info:
        validate_run_config({"learning_rate": -1, "model_id": "gpt-17", "extra": 1})
    assert set(info.value.details) == {"dataset_key", "learning_rate", "model_id", "extra"}
    assert "unknown model" in info.value.details["model_id"]
    assert info.value.details["extra"] == "unknown field"


def test_warmup_must_fit_under_max_steps():
    with pytest.raises(ValidationError) as info:
        validate_run_config({"dataset_key": "d-v1", "max_steps": 10, "warmup_steps": 10})
    assert "smaller than max_steps" in info.value.details["warmup_steps"]


def test_checkpoint_model_id_must_be_a_checkpoint_directory(tmp_path):
    with pytest.raises(ValidationError) as info:
        validate_run_config({"dataset_key": "d-v1", "model_id": str(tmp_path / "missing")}, model_roots=[tmp_path])
    assert "does not exist" in info.value.details["model_id"]
    with pytest.raises(ValidationError) as info:
        validate_run_config({"dataset_key": "d-v1", "model_id": str(tmp_path)}, model_roots=[tmp_path])
    assert "config.json" in info.value.details["model_id"]


def test_jsonl_parses_and_skips_blank_lines():
    examples = parse_jsonl(b'{"prompt": "a", "response": "b"}\n\n{"prompt": "", "response": "c", "id": 3}\n')
    assert examples == [Example("a", "b"), Example("", "c")]


def test_jsonl_reports_every_bad_line_by_number():
    data = "\n".join(['{"prompt": "a", "response": "b"}', "not json", '{"prompt": "a"}',
                      '{"prompt": 1, "response": "x"}', '["a"]', '{"prompt": "a", "response": " "}'])
    with pytest.raises(ValidationError) as info:
        parse_jsonl(data)
    message = info.value.details["file"]
    assert "line 2: invalid JSON" in message
    assert 'line 3: missing "response"' in message
    assert 'line 4: "prompt" must be a string' in message
    assert "line 5: must be a JSON object" in message
    assert 'line 6: "response" must not be empty' in message
    assert "line 1" not in message


def test_jsonl_rejects_empty_and_non_utf8():
    with pytest.raises(ValidationError, match="no examples"):
        parse_jsonl(b"\n\n")
    with pytest.raises(ValidationError, match="UTF-8"):
        parse_jsonl(b"\xff\xfe")


def test_example_list_and_names():
    assert parse_example_list([{"prompt": "p", "response": "r"}]) == [Example("p", "r")]
    with pytest.raises(ValidationError, match="item 1"):
        parse_example_list([{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    assert check_name(" my_data.set ") == "my_data.set"
    for bad in ("", "-x", "a b", "x" * 49, "data-v2"):
        with pytest.raises(ValidationError):
            check_name(bad)


def test_progress_lines_are_told_apart_from_human_lines():
    assert progress_protocol.parse_line(b'{"event":"step","step":1,"loss":2.0}\n')["step"] == 1
    assert progress_protocol.parse_line("step 1 loss 2.0") is None
    assert progress_protocol.parse_line('{"event": "unknown"}') is None
    assert progress_protocol.parse_line('{"no": "event"}') is None
    assert progress_protocol.parse_line("{broken") is None
    line = progress_protocol.encode_event("eval", step=3, loss=1.5)
    assert progress_protocol.metric_point(progress_protocol.parse_line(line)) == {
        "split": "eval", "step": 3, "loss": 1.5, "learning_rate": None, "tokens_per_second": None}
    assert progress_protocol.metric_point({"event": "step", "step": 1, "loss": math.inf}) is None


def test_summary_merges_start_and_end():
    events = [{"event": "start", "total_steps": 5}, {"event": "eval", "step": 5, "loss": 1.0},
              {"event": "end", "final_loss": 0.5}]
    assert progress_protocol.summary_from_events(events) == {"total_steps": 5, "final_loss": 0.5}
    assert progress_protocol.error_from_events([{"event": "error", "message": "boom"}]) == "boom"


def _config(**overrides):
    return validate_run_config({"dataset_key": "d-v1", **overrides})


def test_plan_counts_steps_tokens_and_truncation():
    examples = [Example("q" * 10, "a" * 5) for _ in range(20)] + [Example("q" * 100, "a")]
    plan = training_plan.plan_run(_config(batch_size=4, eval_fraction=0.1, num_epochs=2, max_seq_length=32),
                                  examples, ByteTokenizer())
    assert plan["ok"] and plan["problems"] == []
    assert (plan["train_examples"], plan["eval_examples"]) == (19, 2)
    assert plan["steps_per_epoch"] == 4 and plan["total_steps"] == 8
    assert plan["examples_over_max_seq_length"] == 1 and plan["examples_without_response_tokens"] == 1
    assert plan["tokens"]["max"] == 1 + 101 + 1 + 1


def test_plan_lists_every_problem():
    examples = [Example("q" * 50, "a") for _ in range(3)]
    plan = training_plan.plan_run(_config(batch_size=8, max_seq_length=16, eval_fraction=0.0), examples,
                                  ByteTokenizer())
    assert not plan["ok"]
    assert any(p.startswith("batch_size: 8 is larger than the 3") for p in plan["problems"])
    assert any(p.startswith("max_seq_length: 16 leaves no response tokens") for p in plan["problems"])


def test_max_steps_caps_epochs_and_split_is_seeded():
    assert training_plan.total_steps(_config(num_epochs=10, batch_size=2, max_steps=7), 100) == 7
    assert training_plan.split_indices(50, 0.2, 1) == training_plan.split_indices(50, 0.2, 1)
    assert training_plan.split_indices(50, 0.2, 1) != training_plan.split_indices(50, 0.2, 2)
    assert training_plan.eval_count(1, 0.5) == 0 and training_plan.eval_count(10, 0.01) == 1


def test_encoded_example_masks_only_the_response():
    tok = ByteTokenizer()
    encoded = training_plan.encode_example(tok, "hi", "ok", 10)
    assert encoded.tokens[:4] == [tok.bos_id, ord("h") + 3, ord("i") + 3, ord("\n") + 3]
    assert encoded.mask == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert encoded.tokens[6] == tok.eos_id and encoded.tokens[7:] == [tok.pad_id] * 3
    assert tok.decode(tok.encode("héllo")) == "héllo"


def test_loss_chart_draws_train_and_eval():
    assert loss_chart.render_svg({"train": [], "eval": []}) is None
    svg = loss_chart.render_svg({"train": [{"step": s, "loss": 5 - s / 10} for s in range(1, 1001)],
                                 "eval": [{"step": 500, "loss": 4.6}]})
    assert svg.startswith("<svg") and "series-train" in svg and "series-eval" in svg
    points = svg.split('class="series-train" fill="none" points="')[1].split('"')[0].split()
    assert len(points) <= loss_chart.MAX_POINTS + 1


def test_state_machine():
    assert run_states.can_transition("pending", "running")
    assert run_states.can_transition("running", "timeout")
    assert not run_states.can_transition("pending", "completed")
    for terminal in run_states.TERMINAL_STATUSES:
        assert run_states.ALLOWED_TRANSITIONS[terminal] == frozenset()


def test_checkpoint_of_an_unsupported_family_is_rejected_at_submission(tmp_path):
    from tests.checkpoints import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path, "qwen3")
    assert validate_run_config({"dataset_key": "d-v1", "model_id": str(tmp_path)},
                               model_roots=[tmp_path])["model_id"] == str(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "mistral"}')
    with pytest.raises(ValidationError) as info:
        validate_run_config({"dataset_key": "d-v1", "model_id": str(tmp_path)}, model_roots=[tmp_path])
    assert ("model_type 'mistral' is not supported (supported: qwen3 (Qwen 3), qwen2 (Qwen 2 / 2.5), "
            "llama (Llama 3), gemma3_text (Gemma 3), gemma2 (Gemma 2))") in info.value.details["model_id"]


def test_a_mesh_reads_from_the_api_and_the_form_alike_and_refuses_what_is_not_one():
    from app.contract import device_mesh

    assert device_mesh.parse_mesh({"fsdp": 2, "tp": 2}) == device_mesh.parse_mesh("fsdp=2, tp=2") == {"fsdp": 2, "tp": 2}
    assert device_mesh.parse_mesh("tp: 4") == {"fsdp": 1, "tp": 4}
    assert device_mesh.parse_mesh("") is None and device_mesh.parse_mesh(None) is None
    for bad in ("2x2", [2, 2], {"fsdp": True}, {"fsdp": 1.5}, {"dp": 2}, "fsdp=2,,"):
        with pytest.raises(ValueError):
            device_mesh.parse_mesh(bad)
    assert device_mesh.describe({"fsdp": 4, "tp": 1}) == "fsdp=4, tp=1"


def test_a_placement_keeps_the_trainer_to_its_devices():
    from app.contract.device_mesh import HOST_DEVICE_FLAG, Placement

    env = Placement("gpu", (2, 3)).environment({"XLA_FLAGS": f"--xla_dump_to=/tmp {HOST_DEVICE_FLAG}=8"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["TUNIX_DEVICE_IDS"] == "2,3"
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp {HOST_DEVICE_FLAG}=2"
    env = Placement("cpu", (1,)).environment({})
    assert "CUDA_VISIBLE_DEVICES" not in env and env["XLA_FLAGS"] == f"{HOST_DEVICE_FLAG}=1"
    assert Placement("tpu", (0, 1, 2, 3)).environment({})["TPU_VISIBLE_CHIPS"] == "0,1,2,3"


def test_a_worker_s_devices_and_versions_read_as_its_row_lists_them():
    from app.web.formatting import describe_devices, ordered_versions

    h200 = {"kind": "gpu", "name": "NVIDIA H200", "memory_bytes": 143771 * 2**20}
    assert describe_devices([{**h200, "id": i} for i in range(4)]) == ["4 × NVIDIA H200 (140.4 GB), ids 0–3"]
    assert describe_devices([{**h200, "id": 0}, {**h200, "id": 2}, {"id": 5, "kind": "cpu", "name": "CPU",
                                                                     "memory_bytes": None}]) == [
        "2 × NVIDIA H200 (140.4 GB), ids 0, 2", "1 × CPU, id 5"]
    assert describe_devices(None) == []
    assert ordered_versions({"flax": "0.12.8", "tunix": "0.1.7", "python": "3.11.7", "jax": "0.10.2", "jaxlib": None,
                             "extra": "1"}) == [("python", "3.11.7"), ("jax", "0.10.2"), ("tunix", "0.1.7"),
                                                ("flax", "0.12.8"), ("extra", "1")]
