"""The API's answers, held to its OpenAPI document: a test client that checks every /api response it gets.

Installed as the test client of the `app` fixture, so every API test checks, besides its own
assertions, that the status it got is documented for that route and method and that the JSON
body matches the schema documented for that status. An /api path or method the document does
not name must answer with the Error shape.
"""
from __future__ import annotations

import functools
import json
import re

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.web.openapi import document

BASE = "urn:tunix-rt:openapi"


class ContractViolation(AssertionError):
    """An /api answer the document does not describe."""


@functools.cache
def _contract():
    doc = document()
    registry = Registry().with_resource(BASE, Resource(contents=doc, specification=DRAFT202012))
    routes = []
    for path, methods in doc["paths"].items():
        # A parameter is one segment; a file's `path` in its run may hold several.
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+",
                                          re.escape(path).replace(r"\{path\}", "(?:.+)")) + "$")
        routes.append((path.count("{"), path, pattern, methods))
    routes.sort(key=lambda route: route[0])  # a fixed segment wins over a parameter, as in Flask
    return doc, registry, routes


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    _, registry, _ = _contract()
    return Draft202012Validator({"$ref": f"{BASE}#/{pointer}"}, registry=registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def operation_for(method: str, path: str) -> tuple[str, dict] | None:
    """(documented path, operation) for a request, or None when the document has no such route."""
    _, _, routes = _contract()
    for _, documented, pattern, methods in routes:
        if pattern.match(path):
            operation = methods.get(method.lower())
            return (documented, operation) if operation else None
    return None


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """Raise ContractViolation when an /api answer is not what the document says it is."""
    doc, _, _ = _contract()
    found = operation_for(method, path)
    if found is None:
        pointer = _pointer("components", "schemas", "Error")
        where = f"{method} {path} (not in the document)"
    else:
        documented, operation = found
        response = operation["responses"].get(str(status))
        if response is None:
            raise ContractViolation(f"{method} {documented} answered {status}, which the document does not list "
                                    f"(it lists {', '.join(operation['responses'])})")
        if "$ref" in response:
            pointer = _pointer("components", "responses", response["$ref"].rsplit("/", 1)[1],
                               "content", "application/json", "schema")
        elif "content" in response and "application/json" not in response["content"]:
            return  # bytes (a stored file): what they are is the file's own business
        elif "content" in response:
            pointer = _pointer("paths", documented, method.lower(), "responses", str(status),
                               "content", "application/json", "schema")
        else:
            if body:
                raise ContractViolation(f"{method} {documented} {status} is documented without a body, got one")
            return
        where = f"{method} {documented} {status}"
    if not content_type.startswith("application/json"):
        raise ContractViolation(f"{where}: answered {content_type}, not application/json")
    errors = sorted(_validator(pointer).iter_errors(json.loads(body)), key=lambda e: list(e.absolute_path))
    if errors:
        raise ContractViolation(f"{where} does not match its schema:\n" + "\n".join(
            f"  at {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:300]}" for e in errors[:10]))


class ContractClient(FlaskClient):
    """A test client that holds every /api answer to the OpenAPI document."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        request = response.request
        if request is not None and request.path.startswith("/api/"):
            check_response(request.method, request.path, response.status_code, response.content_type or "",
                           response.get_data())
        return response
