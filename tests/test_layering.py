"""The architecture, kept by a test: which package may import which, who may import JAX, who owns SKIP LOCKED.

Each package of `app/` may import only the packages listed for it in ALLOWED (its own
included). Modules directly under `app/` ("base": settings, extensions, models, metrics,
errors, the CLI) may import only a few named service modules. The factory
(`app/__init__.py`) and local development (`app/dev/`) wire everything and are not limited.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
BASE = "base"
# The layers, top to bottom: each may import the ones below it.
LAYERS = ("execution", "sweeps", "queue", "runs", "datasets", "accounts", "contract")
ALLOWED: dict[str, set[str]] = {
    **{layer: {BASE, *LAYERS[i:]} for i, layer in enumerate(LAYERS)},
    "contract": {"contract"},
    "web": {"web", BASE, *LAYERS},
    "worker": {"worker", BASE, *LAYERS},
    "trainer": {"trainer", "contract"},
}
# What the base modules may reach beyond each other: pure state names, the scrape-time
# queue gauges, and what the CLI manages (the sample dataset, users and tokens).
BASE_MAY_IMPORT = {"app.runs.states", "app.queue.registry", "app.sweeps.queries", "app.datasets.sample",
                   "app.accounts.service"}
UNLIMITED = {"factory", "dev"}
JAX_STACK = {"jax", "jaxlib", "flax", "optax", "orbax", "qwix", "tunix"}
SKIP_LOCKED = re.compile(r"FOR\s+UPDATE(\s+OF\s+\w+)?\s+SKIP\s+LOCKED", re.IGNORECASE)


def area(module: str) -> str:
    """The package a module of the app belongs to: 'runs', 'web', ..., 'base' or 'factory'."""
    parts = module.split(".")
    if parts == ["app"]:
        return "factory"
    if (APP / parts[1]).is_dir():
        return parts[1]
    return BASE


def _is_app_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "app" and (len(parts) == 1 or (APP.joinpath(*parts[1:]).is_dir()
                                                      or APP.joinpath(*parts[1:-1], parts[-1] + ".py").is_file()))


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an AST imports, at any depth (imports inside functions count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_app_module(candidate) else node.module)
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def issues_skip_locked(tree: ast.AST) -> bool:
    """True when code (not a docstring) holds SQL with FOR UPDATE SKIP LOCKED, or asks SQLAlchemy for it."""
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if SKIP_LOCKED.search(node.value):
                return True
        if isinstance(node, ast.keyword) and node.arg == "skip_locked":
            return True
    return False


def violations(module: str, source: str) -> list[str]:
    """What a module of the app does that the architecture forbids, in words."""
    tree = ast.parse(source)
    where, problems = area(module), []
    for name in sorted(imported_modules(tree)):
        top = name.split(".")[0]
        if top in JAX_STACK and where != "trainer":
            problems.append(f"{module} imports {name}: only app.trainer may import the JAX stack")
        if top != "app" or name == "app" or where in UNLIMITED:
            continue
        target = area(name)
        if where == BASE:
            if target != BASE and name not in BASE_MAY_IMPORT:
                problems.append(f"{module} imports {name}: base modules may import only {sorted(BASE_MAY_IMPORT)}")
        elif target not in ALLOWED[where]:
            problems.append(f"{module} imports {name}: app.{where} may import only {sorted(ALLOWED[where])}")
    if issues_skip_locked(tree) and where != "queue":
        problems.append(f"{module} issues SKIP LOCKED: only app.queue may")
    return problems


def app_modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(APP.rglob("*.py")):
        parts = list(path.relative_to(APP.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules.append((".".join(parts), path))
    return modules


def test_every_package_is_known_to_the_rules():
    packages = {p.name for p in APP.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED) | {"dev"}, "a new package needs its place in ALLOWED"


def test_the_app_keeps_its_layers():
    problems = [problem for module, path in app_modules() for problem in violations(module, path.read_text())]
    assert problems == [], "\n".join(problems)


def test_the_queue_issues_skip_locked():
    assert issues_skip_locked(ast.parse((APP / "queue" / "store.py").read_text()))


@pytest.mark.parametrize("module, source, expected", [
    ("app.runs.service", "from app.web import pages", "app.runs.service imports app.web.pages"),
    ("app.runs.service", "def f():\n    from app.execution import runner", "imports app.execution.runner"),
    ("app.queue.store", "from app.worker.lifecycle import Worker", "imports app.worker.lifecycle"),
    ("app.trainer.training", "from app.runs import states", "app.trainer may import only"),
    ("app.contract.training_plan", "from app.extensions import db", "app.contract may import only"),
    ("app.models", "from app.web.formatting import format_time", "base modules may import only"),
    ("app.web.pages", "import jax.numpy as jnp", "only app.trainer may import the JAX stack"),
    ("app.runs.queries", "Q = 'SELECT id FROM tunix_runs FOR UPDATE SKIP LOCKED'", "issues SKIP LOCKED"),
    ("app.runs.queries", "q = select(TunixRun).with_for_update(skip_locked=True)", "issues SKIP LOCKED"),
])
def test_a_forbidden_import_or_query_is_reported(module, source, expected):
    found = violations(module, source)
    assert any(expected in problem for problem in found), found


def test_allowed_imports_and_docstrings_are_not_reported():
    assert violations("app.web.api", '"""Uses SKIP LOCKED nowhere."""\nfrom app.runs import service') == []
    assert violations("app.worker.lifecycle", '"""Worker requires Postgres due to SKIP LOCKED semantics."""') == []
    assert violations("app.trainer.data", "from app.contract import training_plan\nimport jax") == []
