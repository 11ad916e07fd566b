"""The API's contract: /api/openapi.json is a valid OpenAPI 3.1 document, names exactly the routes the
app serves, matches the copy in docs/, and the answers it describes are the answers given.

Every API test checks its answers against the document too (tests/contract.py); the tests here
check the document itself, and that the checker catches what it should.
"""
from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from app.web.openapi import document, flask_rule_to_path
from tests.contract import ContractViolation, check_response
from tests.helpers import ROOT, SAMPLE, submit

DOCUMENTED_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_the_document_is_valid_openapi_3_1(client):
    served = client.get("/api/openapi.json")
    assert served.status_code == 200
    assert served.get_json()["openapi"] == "3.1.0"
    validate(served.get_json())


def test_the_document_needs_no_token(app):
    assert app.test_client().get("/api/openapi.json").status_code == 200


def test_docs_keep_the_document_the_server_serves():
    kept = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert kept == json.loads(json.dumps(document())), "run `make openapi` to refresh docs/openapi.json"


def test_every_api_route_is_documented_and_nothing_else(app):
    served = {(flask_rule_to_path(rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")
              for method in rule.methods & DOCUMENTED_METHODS}
    documented = {(path, method) for path, methods in document()["paths"].items() for method in methods}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_every_operation_names_its_parameters_and_answers():
    for path, methods in document()["paths"].items():
        for method, operation in methods.items():
            in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert in_path == set(part[1:-1] for part in path.split("/") if part.startswith("{")), (method, path)
            assert operation["summary"] and operation["responses"], (method, path)
            assert any(code.startswith("2") for code in operation["responses"]), (method, path)


def test_the_bearer_scheme_guards_every_call_but_health_and_the_document():
    doc = document()
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}
    public = {path for path, methods in doc["paths"].items() for op in methods.values() if op.get("security") == []}
    assert public == {"/api/health", "/api/openapi.json"}


def test_answers_that_break_the_contract_are_caught():
    run_id = "00000000-0000-0000-0000-000000000001"
    good = {"run_id": run_id, "status": "pending", "queued_at": "2026-12-02T10:00:00+00:00", "started_at": None,
            "completed_at": None, "exit_code": None}
    check_response("GET", f"/api/tunix/runs/{run_id}/status", 200, "application/json", json.dumps(good).encode())
    for broken, why in [({**good, "status": "sleeping"}, "status"), ({**good, "extra": 1}, "extra"),
                        ({k: v for k, v in good.items() if k != "exit_code"}, "exit_code"),
                        ({**good, "queued_at": "yesterday"}, "queued_at")]:
        with pytest.raises(ContractViolation, match=why if why != "extra" else "Additional properties"):
            check_response("GET", f"/api/tunix/runs/{run_id}/status", 200, "application/json",
                           json.dumps(broken).encode())
    with pytest.raises(ContractViolation, match="does not list"):
        check_response("GET", f"/api/tunix/runs/{run_id}/status", 418, "application/json", b"{}")
    with pytest.raises(ContractViolation, match="not in the document"):
        check_response("GET", "/api/nowhere", 404, "application/json", b'{"message": "gone"}')
    check_response("GET", "/api/nowhere", 404, "application/json", b'{"error": "not found", "details": {}}')


def test_a_run_read_through_every_route_matches_the_document(client):
    """The API tests check their own answers; this walks one finished run through every read route."""
    run = submit(client, "sync", max_steps=3, name="contract", tags=["doc"])
    run_id = run["run_id"]
    for path in (f"/api/tunix/runs/{run_id}", f"/api/tunix/runs/{run_id}/status", f"/api/tunix/runs/{run_id}/metrics",
                 f"/api/tunix/runs/{run_id}/evaluation?phase=before", f"/api/tunix/runs/{run_id}/logs?after=0",
                 "/api/tunix/runs?tag=doc", f"/api/datasets/{SAMPLE}", f"/api/datasets/{SAMPLE}/leaderboard",
                 "/api/datasets", "/api/workers", "/api/sweeps", "/api/health"):
        assert client.get(path).status_code == 200, path
    assert client.post(f"/api/tunix/runs/{run_id}/cancel").status_code == 409
