"""The API's contract: an OpenAPI 3.1 document of every /api route, served at /api/openapi.json.

Written by hand beside the serializers (`app.web.serializers` builds every JSON shape described here)
rather than generated: the shapes are plain dicts, and a generator would need a second description
of them anyway. What the code already knows is read from it, not repeated: statuses, modes, the
run's hyperparameters with their bounds (`app.runs.validation.FIELDS`), a sweep's choices. The
tests keep the rest honest: the document must validate, name exactly the routes the app serves,
and every JSON answer the API tests receive must match the schema documented for it.
"""
from __future__ import annotations

import re
from typing import Any

from app.contract import device_mesh, generation
from app.models import DROP_ABSOLUTE, DROP_RELATIVE, GATE_HIGHER, GATE_LOWER, SWEEP_STATUSES, TRIAL_STATES
from app.run_states import MODES, STATUSES
from app.runs import evaluation, validation
from app.sweeps import spec as sweep_spec

JsonSchema = dict[str, Any]

UUID = {"type": "string", "format": "uuid"}
TIME = {"type": ["string", "null"], "format": "date-time"}
TEXT = {"type": ["string", "null"]}
NUMBER = {"type": ["number", "null"]}
WHOLE = {"type": ["integer", "null"]}
FREE_OBJECT = {"type": ["object", "null"]}


def ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: JsonSchema) -> JsonSchema:
    return {"oneOf": [schema, {"type": "null"}]}


def closed(properties: dict[str, JsonSchema], optional: tuple[str, ...] = ()) -> JsonSchema:
    """An object with exactly these properties, every one present unless named optional."""
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": [name for name in properties if name not in optional]}


def _field_schema(field: validation.Field) -> JsonSchema:
    if field.kind == "choice":
        schema: JsonSchema = {"enum": [*field.choices, None]}
    else:
        schema = {"type": ["integer" if field.kind == "int" else "number", "null"],
                  ("exclusiveMinimum" if field.exclusive_minimum else "minimum"): field.minimum,
                  "maximum": field.maximum}
    return {**schema, "description": f"{field.help} Default: {field.default}.", "title": field.label}


RUN_CONFIG_PROPERTIES: dict[str, JsonSchema] = {
    "dataset_key": {"type": "string", "description": "The dataset to train on, as name-vN."},
    "model_id": {"type": ["string", "null"], "description": "A preset (tiny, small), a registered model "
                 "(models:/<name>/<version> or models:/<name>@<alias>, fixed to its version at submission) or the "
                 "absolute path of a local checkpoint under TUNIX_MODEL_ROOTS. Default: tiny."},
    "candidate_for": {"type": ["string", "null"], "description": "A registered model this run competes for: its "
                      "gates judge the run once it completes (GET /api/tunix/runs/{run_id}/gates)."},
    "name": {"type": ["string", "null"], "maxLength": validation.NAME_MAX, "description": "One line."},
    "tags": {"type": ["array", "null"], "maxItems": validation.TAGS_MAX,
             "items": {"type": "string", "pattern": validation.TAG_PATTERN.pattern}},
    "eval_dataset_key": {"type": ["string", "null"],
                         "description": "A dataset to score on instead of the held-out split."},
    "answer_pattern": {"type": ["string", "null"], "maxLength": 200,
                       "description": "A regular expression (RE2) with one group that picks the final answer."},
    "mesh": {"oneOf": [
        {"type": "object", "additionalProperties": False,
         "properties": {axis: {"type": ["integer", "string"]} for axis in device_mesh.AXES}},
        {"type": ["string", "null"]}],
        "description": "How the run's devices are laid out: {\"fsdp\": a, \"tp\": b} (or \"fsdp=a, tp=b\"), a × b = "
                       "devices; an axis left out is 1. tp must divide the model's heads and key/value heads; "
                       "batch_size must be a multiple of fsdp. Default: every device on fsdp."},
    **{field.name: _field_schema(field) for field in validation.FIELDS},
}

RUN_STATUS_PROPERTIES: dict[str, JsonSchema] = {
    "run_id": UUID, "status": {"enum": list(STATUSES)},
    "queued_at": TIME, "started_at": TIME, "completed_at": TIME, "exit_code": WHOLE,
}
SCORE_PROPERTIES: dict[str, JsonSchema] = {
    "final_loss": NUMBER, "final_eval_loss": NUMBER, "answer_match": NUMBER, "exact_match": NUMBER,
    "evaluated_on": TEXT,
}
RUN_SUMMARY_PROPERTIES: dict[str, JsonSchema] = {
    **RUN_STATUS_PROPERTIES,
    "name": TEXT, "tags": {"type": "array", "items": {"type": "string"}}, "created_by": TEXT,
    "mode": {"enum": list(MODES)}, "dataset_key": TEXT, "model_id": TEXT, "created_at": TIME,
    "duration_seconds": NUMBER, "error_message": TEXT, **SCORE_PROPERTIES,
}
METRIC_POINT = closed({"step": {"type": "integer"}, "loss": NUMBER, "learning_rate": NUMBER,
                       "tokens_per_second": NUMBER})
SERIES = closed({"train": {"type": "array", "items": METRIC_POINT}, "eval": {"type": "array", "items": METRIC_POINT}})
DATASET_PROPERTIES: dict[str, JsonSchema] = {
    "key": {"type": "string"}, "name": {"type": "string"}, "version": {"type": "integer"},
    "description": TEXT, "num_examples": {"type": "integer"}, "size_bytes": {"type": "integer"},
    "stats": FREE_OBJECT, "created_by": TEXT, "created_at": {"type": "string", "format": "date-time"},
}
SWEEP_SUMMARY_PROPERTIES: dict[str, JsonSchema] = {
    "sweep_id": UUID, "name": {"type": "string"}, "status": {"enum": list(SWEEP_STATUSES)},
    "objective": closed({"metric": {"enum": list(sweep_spec.OBJECTIVES)},
                         "direction": {"enum": list(sweep_spec.DIRECTIONS)}}),
    "max_trials": {"type": "integer"}, "parallelism": {"type": "integer"},
    "sampler": {"enum": list(sweep_spec.SAMPLERS)}, "pruner": {"enum": list(sweep_spec.PRUNERS)},
    "trials_asked": {"type": "integer"}, "best_trial_number": WHOLE, "best_value": NUMBER,
    "error_message": TEXT, "created_by": TEXT, "created_at": TIME, "completed_at": TIME,
}
SEARCH_PARAMETER = {
    "type": "object", "additionalProperties": False, "required": ["type"],
    "properties": {"type": {"enum": list(sweep_spec.PARAM_TYPES)}, "low": {"type": "number"},
                   "high": {"type": "number"}, "step": {"type": "integer", "minimum": 1},
                   "values": {"type": "array", "minItems": 1, "maxItems": sweep_spec.MAX_CHOICES}},
}


MODEL_FILE = closed({"path": {"type": "string"}, "size": {"type": "integer", "minimum": 0},
                     "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}})
MODEL_SUMMARY_PROPERTIES: dict[str, JsonSchema] = {
    "name": {"type": "string"}, "description": {"type": "string"}, "owner": TEXT, "created_at": TIME,
    "versions": {"type": "integer", "minimum": 0},
}
ALIAS = closed({"alias": {"type": "string"}, "version": {"type": "integer"}, "protected": {"type": "boolean"},
                "updated_at": TIME})
ALIAS_MOVE = closed({"alias": {"type": "string"}, "from_version": WHOLE, "to_version": {"type": "integer"},
                     "moved_by": {"type": "string"}, "moved_at": TIME, "reason": {"type": "string"},
                     "override": {"type": "boolean", "description": "true when an admin moved it past failing gates"}})
GATE_PROPERTIES: dict[str, JsonSchema] = {
    "metric": {"type": "string", "description": "answer_match, exact_match, final_eval_loss, final_loss, or any "
                                                "number the evaluation records."},
    "direction": {"enum": [GATE_HIGHER, GATE_LOWER], "description": "Which way is better (known for the four named)."},
    "eval_dataset_key": {"type": "string", "description": "The dataset candidate and baseline must be scored on."},
    "floor": NUMBER, "max_drop": {"type": ["number", "null"], "minimum": 0},
    "drop_kind": {"enum": [DROP_ABSOLUTE, DROP_RELATIVE]},
    "baseline_alias": {"type": "string", "description": "The alias whose version the drop is measured from."},
    "confidence_z": {"type": "number", "minimum": 0, "description": "z of the noise allowance (1.96: about 95 %)."},
}

GENERATION_SETTINGS: JsonSchema = {
    "type": "object", "additionalProperties": False,
    "description": "Tunix's sampler settings: temperature 0 is greedy (top_p and top_k then unset); above 0 it "
                   "samples from the top-p nucleus (1.0 when unset), cut to top_k, from seed.",
    "properties": {"max_new_tokens": {"type": "integer", "minimum": 1, "maximum": generation.MAX_NEW_TOKENS,
                                      "default": generation.DEFAULT_SETTINGS["max_new_tokens"]},
                   "temperature": {"type": "number", "minimum": 0, "maximum": generation.MAX_TEMPERATURE,
                                   "default": 0},
                   "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
                   "top_k": {"type": ["integer", "null"], "minimum": 1, "maximum": generation.MAX_TOP_K},
                   "seed": {"type": "integer", "minimum": 0, "maximum": generation.MAX_SEED, "default": 0}}}
SCHEMAS: dict[str, JsonSchema] = {
    "Error": {**closed({"error": {"type": "string"},
                        "details": {"type": "object", "additionalProperties": {"type": "string"}}}),
              "description": "Every refusal: a message, and what is wrong with each field named."},
    "RunConfig": {"type": "object", "additionalProperties": False, "required": ["dataset_key"],
                  "properties": RUN_CONFIG_PROPERTIES,
                  "description": "A run's settings. Blank or null fields take their defaults; numbers may also "
                                 "come as strings. Any other key is refused (422 naming it)."},
    "StoredRunConfig": {"type": "object", "properties": RUN_CONFIG_PROPERTIES,
                        "description": "The settings a run was accepted with, every default filled in."},
    "RunAccepted": closed({"run_id": UUID, "status": {"enum": list(STATUSES)}}),
    "RunStatus": closed(RUN_STATUS_PROPERTIES),
    "RunSummary": closed(RUN_SUMMARY_PROPERTIES),
    "RunDetail": closed({
        **RUN_SUMMARY_PROPERTIES,
        "config": nullable(ref("StoredRunConfig")), "worker_id": TEXT, "stdout_tail": TEXT, "stderr_tail": TEXT,
        "result": {**FREE_OBJECT, "description": "What the run produced: a dry run's plan, or the trainer's "
                                                 "figures (final_loss, steps_per_second, evaluation, ...)."},
        "progress": {**FREE_OBJECT, "description": "Where a running run stands (step, phase, latest loss)."},
        "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"}, "recoveries": {"type": "integer"},
        "heartbeat_at": TIME, "cancel_requested_at": TIME, "retry_of": nullable(UUID),
        "retries": {"type": "array", "items": UUID},
        "devices": {"type": "integer", "description": "Devices the run asks for."},
        "device_ids": {"type": ["array", "null"], "items": {"type": "integer"},
                       "description": "The ids of its worker's devices it was placed on; null until placed."},
        "artifacts_url": {"type": ["string", "null"],
                          "description": "The bucket its files are kept in (s3://… or gs://…), fixed when it was "
                                         "submitted; its files are under <artifacts_url>/<run_id>/. Null when they "
                                         "are in the server's local artifacts folder."},
        "model_version": {"type": ["string", "null"], "description": "For a models:/ base: the version it resolved to "
                                                                      "at submission (models:/<name>/<version>)."},
        "model_digest": {"type": ["string", "null"], "description": "That version's digest, checked by the worker."},
        "candidate_for": TEXT}),
    "RunPage": closed({"runs": {"type": "array", "items": ref("RunSummary")},
                       "next_cursor": {**TEXT, "description": "Pass as cursor for the next, older page."}}),
    "RunMetrics": closed({"run_id": UUID, "status": {"enum": list(STATUSES)}, "progress": FREE_OBJECT,
                          "train": {"type": "array", "items": METRIC_POINT},
                          "eval": {"type": "array", "items": METRIC_POINT}}),
    "Prediction": closed({"index": {"type": "integer"}, "prompt": {"type": "string"},
                          "reference": {"type": "string"}, "prediction": {"type": "string"},
                          "exact_match": {"type": "boolean"}, "answer_match": {"type": "boolean"},
                          "generated_tokens": WHOLE}),
    "EvaluationPage": closed({
        "run_id": UUID, "status": {"enum": list(STATUSES)},
        "evaluation": {**FREE_OBJECT, "description": "{before, after, examples, dataset_key, source, error}, "
                                                     "or {skipped: why}."},
        "progress": {"type": "object"}, "phase": {"enum": list(evaluation.PHASES)},
        "total": {"type": "integer"}, "offset": {"type": "integer"}, "next_offset": WHOLE,
        "examples": {"type": "array", "items": ref("Prediction")}}),
    "Comparison": closed({
        "runs": {"type": "array", "items": ref("RunSummary")},
        "series": {"type": "object", "additionalProperties": SERIES, "description": "Loss series by run id."},
        "config_differences": {"type": "object", "additionalProperties": {"type": "array"},
                               "description": "Each setting that differs: its value per run, in the runs' order."},
        "metrics": {"type": "array", "items": closed({
            "key": {"type": "string"}, "label": {"type": "string"}, "values": {"type": "array", "items": NUMBER},
            "better": {"enum": ["min", "max", None]}, "best": {"type": "array", "items": UUID}})},
        "warnings": {"type": "array", "items": {"type": "string"}}}),
    "CancelOutcome": closed({"run_id": UUID, "status": {"enum": list(STATUSES)}, "error_message": TEXT}),
    "RetryOutcome": closed({"run_id": UUID, "status": {"enum": list(STATUSES)}, "retry_of": UUID}),
    "LogPage": closed({"run_id": UUID, "lines": {"type": "array", "items": closed({
        "stream": {"enum": ["stdout", "stderr"]}, "text": {"type": "string"}})},
        "next_after": {**WHOLE, "description": "Pass as after on the next call."}, "log_bytes": {"type": "integer"}}),
    "Worker": closed({"id": {"type": "string"}, "host": {"type": "string"}, "pid": {"type": "integer"},
                      "state": {"type": "string"}, "started_at": TIME, "last_seen_at": TIME,
                      "current_run_id": nullable(UUID), "runs_done": {"type": "integer"},
                      "alive": {"type": "boolean"},
                      "devices": {"type": "array", "description": "What it places runs on, found when it started.",
                                  "items": {**closed({"id": {"type": "integer"},
                                                      "kind": {"enum": ["gpu", "tpu", "cpu"]},
                                                      "name": {"type": "string"}, "memory_bytes": WHOLE}),
                                            "required": ["kind", "name", "memory_bytes"]}},
                      "versions": {"type": "object", "additionalProperties": TEXT,
                                   "description": "python, jax, jaxlib, tunix, flax: what its trainer runs."},
                      "running": {"type": "object",
                                  "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                                  "description": "Each run it holds, by id, with the device ids it runs on."},
                      "free_device_ids": {"type": "array", "items": {"type": "integer"}},
                      "playground": {"enum": ["share", "only", "off"], "description": "Whether it answers the "
                                     "playground: on a free device between runs, only, or not at all."},
                      "busy_device_ids": {"type": "array", "items": {"type": "integer"}}}),
    "FleetStatus": closed({
        "workers": {"type": "array", "items": ref("Worker")},
        "devices": closed({"total": {"type": "integer"}, "free": {"type": "integer"}, "busy": {"type": "integer"}}),
        "largest_live_worker_devices": WHOLE,
        "runs": closed({"pending": {"type": "integer"}, "running": {"type": "integer"}})}),
    "WorkerList": closed({"workers": {"type": "array", "items": ref("Worker")}}),
    "Dataset": closed(DATASET_PROPERTIES),
    "DatasetDetail": closed({**DATASET_PROPERTIES, "preview": {"type": "array", "items": closed({
        "prompt": {"type": "string"}, "response": {"type": "string"}})}}),
    "DatasetList": closed({"datasets": {"type": "array", "items": ref("Dataset")}}),
    "Example": closed({"prompt": {"type": "string"}, "response": {"type": "string"}}),
    "NewDataset": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "examples": {"type": "array", "items": ref("Example")},
        "jsonl": {"type": "string", "description": "The examples as JSON lines, instead of examples."}}},
    "NewDatasetUpload": {"type": "object", "required": ["name", "file"], "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "file": {"type": "string", "contentMediaType": "application/octet-stream",
                 "description": "A .jsonl file: one {prompt, response} object per line."}}},
    "LeaderboardEntry": closed({
        "rank": {"type": "integer", "minimum": 1}, "run_id": UUID, "name": TEXT, "model_id": TEXT,
        "finetune": TEXT, "dataset_key": TEXT,
        "hyperparameters": closed({key: NUMBER for key in ("learning_rate", "num_epochs", "max_steps",
                                                             "batch_size", "lora_rank")}),
        "created_by": TEXT, "completed_at": TIME, **SCORE_PROPERTIES}),
    "Leaderboard": closed({"dataset_key": {"type": "string"}, "offset": {"type": "integer"},
                           "runs": {"type": "array", "items": ref("LeaderboardEntry")}}),
    "NewSweep": {"type": "object", "additionalProperties": False,
                 "required": ["name", "base", "space", "objective", "max_trials"],
                 "properties": {
                     "name": {"type": "string", "maxLength": validation.NAME_MAX},
                     "base": {**ref("RunConfig"), "description": "The config every trial starts from."},
                     "space": {"type": "object", "minProperties": 1, "maxProperties": sweep_spec.MAX_PARAMS,
                               "additionalProperties": SEARCH_PARAMETER,
                               "description": "Hyperparameter name -> how to search it."},
                     "objective": {"type": "object", "additionalProperties": False, "required": ["metric"],
                                   "properties": {"metric": {"enum": list(sweep_spec.OBJECTIVES)},
                                                  "direction": {"enum": list(sweep_spec.DIRECTIONS)}}},
                     "max_trials": {"type": "integer", "minimum": 1, "maximum": sweep_spec.MAX_TRIALS},
                     "parallelism": {"type": "integer", "minimum": 1, "maximum": sweep_spec.MAX_PARALLELISM},
                     "sampler": {"enum": list(sweep_spec.SAMPLERS)}, "pruner": {"enum": list(sweep_spec.PRUNERS)}}},
    "SweepCreated": closed({"sweep_id": UUID, "status": {"enum": list(SWEEP_STATUSES)}}),
    "SweepSummary": closed(SWEEP_SUMMARY_PROPERTIES),
    "SweepList": closed({"sweeps": {"type": "array", "items": ref("SweepSummary")}}),
    "SweepTrial": closed({"number": {"type": "integer"}, "state": {"enum": list(TRIAL_STATES)},
                          "params": FREE_OBJECT, "value": NUMBER, "note": TEXT, "pruned_at_step": WHOLE,
                          "run_id": nullable(UUID), "run_status": {"enum": [*STATUSES, None]},
                          "asked_at": TIME, "told_at": TIME}),
    "SweepDetail": closed({**SWEEP_SUMMARY_PROPERTIES, "base": FREE_OBJECT, "space": FREE_OBJECT,
                           "best": nullable(ref("SweepTrial")),
                           "trials": {"type": "array", "items": ref("SweepTrial")}}),
    "RegisteredModel": closed({**MODEL_SUMMARY_PROPERTIES, "aliases": {
        "type": "object", "additionalProperties": {"type": "integer"}, "description": "alias -> version"}}),
    "ModelList": closed({"models": {"type": "array", "items": ref("RegisteredModel")}}),
    "ModelDetail": closed({**MODEL_SUMMARY_PROPERTIES, "aliases": {"type": "array", "items": ALIAS},
                           "gates": {"type": "array", "items": ref("Gate")},
                           "history": {"type": "array", "items": ALIAS_MOVE,
                                       "description": "The latest 50 alias moves, newest first."}}),
    "ModelVersion": closed({
        "name": {"type": "string"}, "version": {"type": "integer"}, "ref": {"type": "string"},
        "digest": {"type": "string", "description": "SHA-256 over each file's path, size and SHA-256, in path order."},
        "size_bytes": {"type": "integer"}, "files": {"type": "array", "items": MODEL_FILE},
        "source_run_id": nullable(UUID),
        "lineage": {"type": "object", "description": "The source run's id, name, dataset, base model and config."},
        "scores": {"type": "object", "description": "The source run's scores when it was registered."},
        "created_by": TEXT, "created_at": TIME, "archived_at": TIME,
        "trained_from_it": {"type": "array", "items": UUID, "description": "Runs whose base model is this version."}},
        optional=("trained_from_it",)),
    "VersionPage": closed({"name": {"type": "string"}, "offset": {"type": "integer"},
                           "versions": {"type": "array", "items": ref("ModelVersion")}}),
    "NewVersion": {"type": "object", "additionalProperties": False, "required": ["run_id"], "properties": {
        "run_id": UUID, "alias": {"type": "string", "description": "Move this alias to the version (its rules apply)."},
        "description": {"type": "string", "description": "The model's, when the name is new."},
        "reason": {"type": "string", "description": "Kept in the alias's history."}}},
    "Alias": ALIAS,
    "GenerateBody": {"type": "object", "additionalProperties": False, "required": ["model", "prompts"],
                     "properties": {
        "model": {"type": "string", "maxLength": 512, "description": "A preset (tiny), runs:/<run id> (a completed "
                  "run's export), models:/<name>@<alias> or models:/<name>/<version>, or a checkpoint folder under "
                  "TUNIX_MODEL_ROOTS."},
        "prompts": {"type": "array", "minItems": 1, "maxItems": generation.MAX_PROMPTS,
                    "items": {"type": "string", "maxLength": generation.MAX_PROMPT_CHARS},
                    "description": "Asked one by one, each as the model was trained to be asked."},
        "settings": GENERATION_SETTINGS}},
    "GenerationRequest": closed({
        "id": UUID, "group_id": nullable(UUID), "model": {"type": "string"}, "model_key": {
            "type": "string", "description": "What the model is, however it was named: preset:<name>, path:<folder>, "
                                             "run:<id> or version:<id>; its history is kept under it."},
        "status": {"enum": list(generation.STATES)},
        "phase": {"enum": ["loading", "generating", None], "description": "While running."},
        "prompts": {"type": "array", "items": {"type": "string"}}, "settings": GENERATION_SETTINGS,
        "answers": {"type": "array", "description": "In the prompts' order, each stored as soon as it is generated.",
                    "items": closed({"index": {"type": "integer"}, "text": {"type": "string"},
                                     "tokens": {"type": "integer"}, "ttft_seconds": NUMBER, "seconds": NUMBER,
                                     "tokens_per_second": NUMBER, "compiled": {
                                         "type": ["boolean", "null"], "description": "Its shape (prompt length "
                                         "bucket, answer length, greedy or sampled) was compiled for it: its time "
                                         "includes compiling."}})},
        "created_by": TEXT, "created_at": TIME, "started_at": TIME, "finished_at": TIME,
        "attempt": {"type": "integer"}, "cold": {"type": ["boolean", "null"], "description": "The worker loaded "
                                                 "(and compiled) the model for it, rather than holding it already."},
        "load_seconds": NUMBER, "error_message": TEXT, "cancel_requested": {"type": "boolean"},
        "wait": nullable(closed({"requests_ahead": {"type": "integer"}, "runs_ahead": {"type": "integer"},
                                 "workers": {"type": "integer", "description": "Live workers that answer the "
                                                                               "playground."}}))}),
    "GenerationHistory": closed({"model": {"type": "string"}, "model_key": {"type": "string"},
                                 "requests": {"type": "array", "items": ref("GenerationRequest")}}),
    "AliasMove": {"type": "object", "additionalProperties": False, "required": ["version"], "properties": {
        "version": {"type": "integer", "minimum": 1}, "reason": {"type": "string"},
        "override": {"type": "boolean", "description": "Admins: move a protected alias past failing gates (needs a "
                                                       "reason)."},
        "protected": {"type": "boolean", "description": "Admins: protect or unprotect the alias."}}},
    "AliasState": closed({"alias": {"type": "string"}, "at": TIME,
                          "version": {"type": ["integer", "null"], "description": "Where it points now, or at `at`."},
                          "history": {"type": "array", "items": ALIAS_MOVE}}),
    "Gate": closed({"id": {"type": "integer"}, **GATE_PROPERTIES, "description": {"type": "string"}}),
    "NewGate": {"type": "object", "additionalProperties": False, "required": ["metric", "eval_dataset_key"],
                "properties": GATE_PROPERTIES,
                "description": "A floor, a max_drop, or both; the drop is measured against baseline_alias's version."},
    "GateReport": closed({
        "run_id": UUID, "status": {"enum": list(STATUSES)}, "candidate_for": TEXT,
        "passed": {"type": ["boolean", "null"], "description": "Every gate passed; null while there are no verdicts."},
        "verdicts": {"type": "array", "items": closed({
            "gate_id": {"type": "integer"}, "metric": {"type": "string"}, "passed": {"type": "boolean"},
            "candidate_value": NUMBER, "baseline_version": WHOLE, "baseline_value": NUMBER, "delta": NUMBER,
            "allowance": NUMBER, "reason": {"type": "string"}, "judged_at": TIME})}}),
    "Health": closed({"status": {"enum": ["ok", "unavailable"]}, "database": {"type": "string"}}),
    "ArtifactList": closed({
        "run_id": UUID, "status": {"enum": list(STATUSES)},
        "artifacts_url": {"type": ["string", "null"], "description": "The bucket the files are in; null for the "
                                                                     "server's local folder."},
        "total_bytes": {"type": "integer", "minimum": 0},
        "files": {"type": "array", "items": closed({
            "path": {"type": "string", "description": "Relative to the run; download it from "
                                                      "/api/tunix/runs/{run_id}/artifacts/{path}."},
            "size_bytes": {"type": "integer", "minimum": 0},
            "sha256": {"type": ["string", "null"], "description": "Of the file's bytes, as stored; null for a run "
                                                                  "stored before checksums were kept."}})}}),
}

ERRORS = {
    400: "The request is malformed: a bad mode, a body that is not a JSON object, text Postgres cannot hold, "
         "or a host name this server does not answer to.",
    401: "No valid bearer token.",
    403: "The run, sweep or model is someone else's (cancel, retry and a model's changes are for its owner and "
         "admins; a protected alias is moved by admins).",
    404: "No such run, sweep, dataset, model or version (a malformed id is not found either).",
    409: "The request conflicts with the state: the run or sweep has ended, an Idempotency-Key was reused "
         "with another body, a version did not pass the gates a protected alias needs, or a version in use "
         "cannot be archived.",
    413: "The body is larger than TUNIX_MAX_UPLOAD_BYTES, or has too many parts.",
    415: "The body is not application/json (or multipart/form-data for a dataset upload).",
    422: "A field is invalid: `details` names each one and what is wrong.",
    502: "A stored file is not the one its run recorded (its size, ETag or checksum differs): it is not served.",
    429: "A limit on this user is reached (active runs, running sweeps, sync runs under way, playground requests "
         "waiting); Retry-After says when to try again where it is known.",
    503: "The database (or, for a run's files, the artifact store) is unavailable; nothing was lost.",
}
ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
               413: "TooLarge", 415: "UnsupportedMediaType", 422: "InvalidField", 429: "TooManyActive",
               502: "StoredFileCorrupted", 503: "Unavailable"}
# Every call that needs a token may be refused so, whatever it does; an open one, for its host name.
ALWAYS = (400, 401, 503)
ALWAYS_OPEN = (400,)


def _error_response(status: int) -> JsonSchema:
    response: JsonSchema = {"description": ERRORS[status],
                            "content": {"application/json": {"schema": ref("Error")}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
    return response


def _json(schema_name: str, description: str, headers: dict[str, str] | None = None) -> JsonSchema:
    response: JsonSchema = {"description": description,
                            "content": {"application/json": {"schema": ref(schema_name)}}}
    if headers:
        response["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in headers.items()}
    return response


def _query(name: str, description: str, schema: JsonSchema, **extra: Any) -> JsonSchema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema, **extra}


def _path(name: str, description: str, schema: JsonSchema | None = None) -> JsonSchema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string"}}


def _page(default: int) -> list[JsonSchema]:
    return [_query("offset", "Rows to skip.", {"type": "integer", "minimum": 0, "default": 0}),
            _query("limit", "Rows to return.", {"type": "integer", "minimum": 1, "maximum": 200, "default": default})]


RUN_ID = _path("run_id", "The run's id (a UUID).", UUID)
SWEEP_ID = _path("sweep_id", "The sweep's id (a UUID).", UUID)
DATASET_KEY = _path("key", "The dataset's key, name-vN.")
MODEL_NAME = _path("name", "The registered model's name.")
VERSION_NUMBER = _path("number", "The version's number (1, 2, ...).", {"type": "integer", "minimum": 1})
ALIAS_NAME = _path("alias", "The alias (champion, staging, ...).")
REQUEST_ID = _path("request_id", "The playground request's id (a UUID).", UUID)
LOCATION = {"Location": "Where the new resource is read."}
REPLAYED = {"Idempotent-Replayed": "true when an earlier run with this key and body is returned"}


def _operation(tag: str, summary: str, responses: dict[int, JsonSchema], errors: tuple[int, ...] = (),
               parameters: list[JsonSchema] | None = None, body: JsonSchema | None = None,
               public: bool = False) -> JsonSchema:
    operation: JsonSchema = {"tags": [tag], "summary": summary, "responses": {
        **{str(code): response for code, response in responses.items()},
        **{str(code): {"$ref": f"#/components/responses/{ERROR_NAMES[code]}"}
           for code in sorted({*errors, *(ALWAYS_OPEN if public else ALWAYS)})}}}
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    if public:
        operation["security"] = []
    return operation


def _json_body(schema_name: str) -> JsonSchema:
    return {"required": True, "content": {"application/json": {"schema": ref(schema_name)}}}


PATHS: dict[str, dict[str, JsonSchema]] = {
    "/api/tunix/run": {"post": _operation(
        "runs", "Submit a run: sync answers with the finished run, async queues it (202), dry_run plans it.",
        {200: _json("RunDetail", "sync or dry_run: the run as it ended (a failed plan lists every problem).",
                    {**LOCATION, **REPLAYED}),
         202: _json("RunAccepted", "async: queued for a worker.", {**LOCATION, **REPLAYED})},
        (409, 413, 415, 422, 429),
        [_query("mode", "How the run is carried out.", {"enum": list(MODES), "default": "sync"}),
         {"name": "Idempotency-Key", "in": "header", "required": False,
          "description": "The same key and body return the first run instead of starting another.",
          "schema": {"type": "string", "maxLength": 200}}],
        _json_body("RunConfig"))},
    "/api/tunix/runs": {"get": _operation(
        "runs", "Runs, newest first, filtered; keyset pagination with cursor.",
        {200: _json("RunPage", "One page of runs.")}, (422,),
        [_query("status", "Only runs in this status.", {"enum": list(STATUSES)}),
         _query("mode", "Only runs of this mode.", {"enum": list(MODES)}),
         _query("dataset_key", "Only runs on this dataset.", {"type": "string"}),
         _query("tag", "Only runs with this tag.", {"type": "string"}),
         _query("user", "Only runs this user started.", {"type": "string"}),
         _query("cursor", "next_cursor of the previous page.", {"type": "string"}),
         _query("limit", "Runs per page.", {"type": "integer", "minimum": 1, "maximum": 200, "default": 25})])},
    "/api/tunix/runs/compare": {"get": _operation(
        "runs", "2 to 8 runs side by side: loss series, differing settings, metrics with the best marked.",
        {200: _json("Comparison", "The runs, in the order asked.")}, (404, 422),
        [_query("ids", "The runs' ids, comma-separated or repeated.", {"type": "array", "items": {"type": "string"}},
                style="form", explode=True)])},
    "/api/tunix/runs/{run_id}": {"get": _operation(
        "runs", "The whole run: config, result, progress, tails, error.",
        {200: _json("RunDetail", "The run.")}, (404,), [RUN_ID])},
    "/api/tunix/runs/{run_id}/status": {"get": _operation(
        "runs", "The run's status and times: the small payload to poll.",
        {200: {**_json("RunStatus", "Where the run stands."),
               "headers": {"ETag": {"schema": {"type": "string"}}}},
         304: {"description": "Unchanged since the ETag sent in If-None-Match."}}, (404,),
        [RUN_ID, {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}])},
    "/api/tunix/runs/{run_id}/metrics": {"get": _operation(
        "runs", "The loss series, train and eval, in step order.",
        {200: _json("RunMetrics", "Every stored point, or about max_points of each series.")}, (404, 422),
        [RUN_ID, _query("max_points", "Thin each series to about this many evenly spaced points.",
                        {"type": "integer", "minimum": 2, "maximum": 100_000})])},
    "/api/tunix/runs/{run_id}/evaluation": {"get": _operation(
        "runs", "Scores before and after training, and one page of the scored answers.",
        {200: _json("EvaluationPage", "The scores and a page of answers.")}, (404, 422),
        [RUN_ID, _query("phase", "Which pass's answers.", {"enum": list(evaluation.PHASES), "default": "after"}),
         *_page(50)])},
    "/api/tunix/runs/{run_id}/logs": {"get": _operation(
        "runs", "The run's stored output: the tail, or the lines after a sequence number.",
        {200: _json("LogPage", "Lines of output, oldest first.")}, (404, 422),
        [RUN_ID, _query("after", "next_after of the previous call.", {"type": "integer", "minimum": 0})])},
    "/api/tunix/runs/{run_id}/artifacts": {"get": _operation(
        "runs", "The run's stored files: path, size and SHA-256 of each (from the manifests its worker wrote).",
        {200: _json("ArtifactList", "Every stored file, sorted by path.")}, (404,), [RUN_ID])},
    "/api/tunix/runs/{run_id}/artifacts/{path}": {"get": _operation(
        "runs", "One stored file, streamed from the artifact store (Range requests answered with 206).",
        {200: {"description": "The whole file; its SHA-256 is the ETag, and the last chunk is held back until "
                              "it matches (a damaged file never arrives whole).",
               "headers": {"ETag": {"schema": {"type": "string"}}, "Accept-Ranges": {"schema": {"type": "string"}}},
               "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
         206: {"description": "The range asked for.", "headers": {"Content-Range": {"schema": {"type": "string"}}},
               "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
         302: {"description": "With TUNIX_ARTIFACTS_PRESIGN=1: a presigned URL of the bucket, good for a while.",
               "headers": {"Location": {"schema": {"type": "string"}}}},
         416: {"description": "The range lies outside the file.",
               "headers": {"Content-Range": {"schema": {"type": "string"}}}}},
        (404, 502),
        [RUN_ID, _path("path", "The file's path in the run, as the listing gives it ('/' included, not encoded).")])},
    "/api/tunix/runs/{run_id}/cancel": {"post": _operation(
        "runs", "Cancel: a pending run at once (200), a running one is stopped (202).",
        {200: _json("CancelOutcome", "Cancelled (it was pending)."),
         202: _json("CancelOutcome", "Cancelling: its trainer is being stopped.")}, (403, 404, 409), [RUN_ID])},
    "/api/tunix/runs/{run_id}/retry": {"post": _operation(
        "runs", "A new run with the same config, linked to the original.",
        {200: _json("RetryOutcome", "A dry run, planned again at once.", LOCATION),
         202: _json("RetryOutcome", "Queued.", LOCATION)}, (403, 404, 409, 422, 429), [RUN_ID])},
    "/api/tunix/status": {"get": _operation(
        "workers", "The fleet: every worker's devices, free and busy, its versions, the totals over the live ones, "
        "and how many runs wait and run.", {200: _json("FleetStatus", "The fleet.")})},
    "/api/workers": {"get": _operation(
        "workers", "Every registered worker, with what it is doing and whether it is alive.",
        {200: _json("WorkerList", "The workers.")})},
    "/api/datasets": {
        "get": _operation("datasets", "Every dataset, without its examples.",
                          {200: _json("DatasetList", "The datasets.")}),
        "post": _operation(
            "datasets", "Store a dataset (a new version when the name exists): JSON, or a multipart .jsonl upload.",
            {201: _json("Dataset", "Stored.", LOCATION)}, (413, 415, 422), body={"required": True, "content": {
                "application/json": {"schema": ref("NewDataset")},
                "multipart/form-data": {"schema": ref("NewDatasetUpload")}}})},
    "/api/datasets/{key}": {"get": _operation(
        "datasets", "A dataset's counts, sizes and first examples.",
        {200: _json("DatasetDetail", "The dataset.")}, (404,), [DATASET_KEY])},
    "/api/datasets/{key}/leaderboard": {"get": _operation(
        "datasets", "Completed runs scored on this dataset, best first.",
        {200: _json("Leaderboard", "One page of the leaderboard.")}, (404, 422), [DATASET_KEY, *_page(50)])},
    "/api/sweeps": {
        "get": _operation("sweeps", "Sweeps, newest first.", {200: _json("SweepList", "One page of sweeps.")},
                          (422,), _page(50)),
        "post": _operation("sweeps", "Start a hyperparameter search; its first trials are queued at once.",
                           {201: _json("SweepCreated", "Started.", LOCATION)}, (413, 415, 422, 429),
                           body=_json_body("NewSweep"))},
    "/api/sweeps/{sweep_id}": {"get": _operation(
        "sweeps", "The sweep: its spec, status, best trial and every trial.",
        {200: _json("SweepDetail", "The sweep.")}, (404,), [SWEEP_ID])},
    "/api/sweeps/{sweep_id}/cancel": {"post": _operation(
        "sweeps", "Cancel: pending trials are taken off the queue, running ones stopped.",
        {200: _json("SweepCreated", "Cancelled.")}, (403, 404, 409), [SWEEP_ID])},
    "/api/models": {"get": _operation(
        "models", "Every registered model, with its number of versions and its aliases.",
        {200: _json("ModelList", "The models, by name.")})},
    "/api/models/{name}": {"get": _operation(
        "models", "A model: its aliases, gates and the latest alias moves.",
        {200: _json("ModelDetail", "The model.")}, (404,), [MODEL_NAME])},
    "/api/models/{name}/versions": {
        "get": _operation("models", "The model's versions, newest first.",
                          {200: _json("VersionPage", "One page of versions.")}, (404, 422), [MODEL_NAME, *_page(50)]),
        "post": _operation(
            "models", "Register a completed run's model as the next version (the model is made when new); the same "
            "files give back the version they are (200).",
            {201: _json("ModelVersion", "A new version.", LOCATION), 200: _json("ModelVersion", "The same files are "
                                                                                "this existing version.", LOCATION)},
            (403, 404, 409, 413, 415, 422), [MODEL_NAME], _json_body("NewVersion"))},
    "/api/models/{name}/versions/{number}": {"get": _operation(
        "models", "One version: files, digest, lineage, scores, and the runs trained from it.",
        {200: _json("ModelVersion", "The version.")}, (404,), [MODEL_NAME, VERSION_NUMBER])},
    "/api/models/{name}/versions/{number}/archive": {"post": _operation(
        "models", "Archive a version: hidden from pickers, kept for lineage (not while an alias or an active run "
        "uses it).", {200: _json("ModelVersion", "Archived.")}, (403, 404, 409), [MODEL_NAME, VERSION_NUMBER])},
    "/api/models/{name}/aliases/{alias}": {
        "get": _operation("models", "Where an alias points (or pointed ?at= a date or time) and its history.",
                          {200: _json("AliasState", "The alias.")}, (404, 422),
                          [MODEL_NAME, ALIAS_NAME, _query("at", "A date (its end, UTC) or an ISO 8601 time.",
                                                          {"type": "string"})]),
        "put": _operation("models", "Move an alias to a version; every move is kept (who, when, from, to, why).",
                          {200: _json("Alias", "Moved.")}, (403, 404, 409, 413, 415, 422), [MODEL_NAME, ALIAS_NAME],
                          _json_body("AliasMove"))},
    "/api/models/{name}/gates": {"post": _operation(
        "models", "Add a gate the model's candidates must pass.", {201: _json("Gate", "Added.")},
        (403, 404, 413, 415, 422), [MODEL_NAME], _json_body("NewGate"))},
    "/api/models/{name}/gates/{gate_id}": {"delete": _operation(
        "models", "Remove a gate (its verdicts go with it).", {204: {"description": "Removed."}}, (403, 404),
        [MODEL_NAME, _path("gate_id", "The gate's id.", {"type": "integer"})])},
    "/api/tunix/runs/{run_id}/gates": {"get": _operation(
        "runs", "The verdicts of the gates of the model the run competes for (candidate_for).",
        {200: _json("GateReport", "The verdicts, with the numbers they were decided on.")}, (404,), [RUN_ID])},
    "/api/generate": {
        "post": _operation("playground", "Ask a model prompts; a worker answers (202). Poll the request for its "
                                         "answers as they come.",
                           {202: _json("GenerationRequest", "Queued for a worker.", LOCATION)},
                           (413, 415, 422, 429), body=_json_body("GenerateBody")),
        "get": _operation("playground", "The prompts asked of one model (?model= as a request names it), newest "
                                        "first.", {200: _json("GenerationHistory", "Its requests.")}, (422,),
                          [_query("model", "The model.", {"type": "string"}), _page(50)[1]])},
    "/api/generate/{request_id}": {"get": _operation(
        "playground", "A request: its state, its answers so far (with tokens, tokens/s and time to first token) and, "
                      "while it waits, what it waits for.", {200: _json("GenerationRequest", "The request.")},
        (404,), [REQUEST_ID])},
    "/api/generate/{request_id}/cancel": {"post": _operation(
        "playground", "Cancel a request: a waiting one at once, one being answered before its next prompt (its "
                      "answers so far are kept).", {200: _json("GenerationRequest", "Cancelled, or stopping.")},
        (403, 404, 409), [REQUEST_ID])},
    "/api/health": {"get": _operation(
        "service", "Whether the service reaches its database; needs no token.",
        {200: _json("Health", "Up."), 503: _json("Health", "The database is unreachable.")}, public=True)},
    "/api/openapi.json": {"get": _operation(
        "service", "This document; needs no token.",
        {200: {"description": "The OpenAPI 3.1 document.",
               "content": {"application/json": {"schema": {"type": "object"}}}}}, public=True)},
}


def document() -> JsonSchema:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {"title": "Tunix RT", "version": "1",
                 "description": "Launch and follow LLM fine-tuning runs made with Tunix. Every call but "
                                "/api/health and this document needs `Authorization: Bearer <token>` "
                                "(make one on /settings/tokens). Every error is an Error object."},
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("runs", "datasets", "sweeps", "models", "playground", "workers",
                                                        "service")],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token, made on /settings/tokens or with "
                                                          "`flask --app wsgi tokens create NAME`."}},
            "schemas": SCHEMAS,
            "responses": {ERROR_NAMES[code]: _error_response(code) for code in ERRORS},
        },
    }


def flask_rule_to_path(rule: str) -> str:
    """/api/tunix/runs/<run_id> -> /api/tunix/runs/{run_id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)
