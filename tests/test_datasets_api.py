"""Datasets through the JSON API."""
import io

from tests.helpers import SAMPLE


def test_upload_json_versions_and_preview(client):
    body = {"name": "qa", "examples": [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(12)]}
    first = client.post("/api/datasets", json=body)
    assert first.status_code == 201 and first.get_json()["key"] == "qa-v1"
    assert first.headers["Location"] == "/api/datasets/qa-v1"
    second = client.post("/api/datasets", json={"name": "qa", "jsonl": '{"prompt": "x", "response": "y"}'})
    assert second.get_json()["key"] == "qa-v2" and second.get_json()["num_examples"] == 1
    detail = client.get("/api/datasets/qa-v1").get_json()
    assert detail["num_examples"] == 12 and len(detail["preview"]) == 5
    assert detail["preview"][0] == {"prompt": "q0", "response": "a0"}
    keys = [d["key"] for d in client.get("/api/datasets").get_json()["datasets"]]
    assert {"qa-v1", "qa-v2", SAMPLE} <= set(keys)


def test_upload_multipart(client):
    response = client.post("/api/datasets", data={
        "name": "files", "file": (io.BytesIO(b'{"prompt": "p", "response": "r"}\n'), "f.jsonl")},
        content_type="multipart/form-data")
    assert response.status_code == 201 and response.get_json()["key"] == "files-v1"


def test_bad_uploads(client):
    cases = [
        ({"name": "x", "jsonl": '{"prompt": "p", "response": "r"}\n{"prompt": 3, "response": "r"}'}, "jsonl",
         'line 2: "prompt" must be a string'),
        ({"name": "x", "examples": [{"prompt": "p"}]}, "examples", 'item 0: missing "response"'),
        ({"name": "bad name", "examples": []}, "name", "use 1-48 letters"),
        ({"examples": []}, "name", "is required"),
        ({"name": "x"}, "examples", "is required"),
    ]
    for body, field, message in cases:
        response = client.post("/api/datasets", json=body)
        assert response.status_code == 422, body
        details = response.get_json()["details"]
        key = "file" if field == "jsonl" else field
        assert message in details[key], (body, details)
    assert client.post("/api/datasets", data="{oops", content_type="application/json").status_code == 400
    assert client.get("/api/datasets/missing-v1").status_code == 404
    assert [d["key"] for d in client.get("/api/datasets").get_json()["datasets"]] == [SAMPLE]
