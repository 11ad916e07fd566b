"""The architecture, kept by a test: which package may import which, who may import JAX, who owns SKIP LOCKED.

Each package of `app/` may import only the packages listed for it in ALLOWED (its own
included). Modules directly under `app/` ("base": settings, extensions, models, the run
states, the instruments every layer times with, errors, the change feed) sit below every
package and import only each other. The entry points wire everything and are not limited:
the factory (`app/__init__.py`), the CLI (`app/cli.py`) and local development (`app/dev/`).
No module may reach itself through its imports, at any depth: a circle is reported with its path.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
BASE = "base"
# The layers, top to bottom: each may import the ones below it.
LAYERS = ("execution", "sweeps", "queue", "playground", "runs", "registry", "datasets", "accounts", "artifacts", "contract")
ALLOWED: dict[str, set[str]] = {
    **{layer: {BASE, *LAYERS[i:]} for i, layer in enumerate(LAYERS)},
    "contract": {"contract"},
    "web": {"web", BASE, *LAYERS},
    "worker": {"worker", BASE, *LAYERS},
    "trainer": {"trainer", "contract"},
}
ENTRY_POINTS = {"factory", "dev"}
ENTRY_MODULES = {"app.cli"}
JAX_STACK = {"jax", "jaxlib", "flax", "optax", "orbax", "qwix", "tunix"}
SKIP_LOCKED = re.compile(r"FOR\s+UPDATE(\s+OF\s+\w+)?\s+SKIP\s+LOCKED", re.IGNORECASE)


def area(module: str) -> str:
    """The package a module of the app belongs to: 'runs', 'web', ..., 'base' or 'factory'."""
    parts = module.split(".")
    if parts == ["app"] or module in ENTRY_MODULES:
        return "factory"
    if (APP / parts[1]).is_dir():
        return parts[1]
    return BASE


def _is_app_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "app" and (len(parts) == 1 or (APP.joinpath(*parts[1:]).is_dir()
                                                      or APP.joinpath(*parts[1:-1], parts[-1] + ".py").is_file()))


def imported_modules(tree: ast.AST, is_module=_is_app_module) -> set[str]:
    """Every module an AST imports, at any depth (imports inside functions count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if is_module(candidate) else node.module)
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
        if top != "app" or name == "app" or where in ENTRY_POINTS:
            continue
        target = area(name)
        if where == BASE:
            if target != BASE:
                problems.append(f"{module} imports {name}: base modules may import only each other")
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


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module name -> the app modules its source imports (a name imported from a module counts as the module)."""
    graph = {}
    for module, source in modules.items():
        targets = set()
        for name in imported_modules(ast.parse(source), lambda name: name in modules):
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name not in (module, "app"):
                targets.add(name)
        graph[module] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of imports, one per group of modules that reach each other, as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_around(group, graph) for group in groups]


def _path_around(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle through {start}")


def test_no_module_imports_itself_round_a_circle():
    circles = import_circles(import_graph({m: p.read_text() for m, p in app_modules()}))
    assert circles == [], "\n".join(" -> ".join(circle) for circle in circles)


def test_a_circle_is_found_and_named():
    modules = {"app.a": "from app import b", "app.b": "def f():\n    from app.c import thing",
               "app.c": "import app.a", "app.d": "from app import a"}
    assert import_circles(import_graph(modules)) == [["app.a", "app.b", "app.c", "app.a"]]
    assert import_circles(import_graph({"app.a": "from app import b", "app.b": "import os"})) == []


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
    ("app.trainer.training", "from app import run_states", "app.trainer may import only"),
    ("app.contract.training_plan", "from app.extensions import db", "app.contract may import only"),
    ("app.models", "from app.web.formatting import format_time", "base modules may import only"),
    ("app.instruments", "from app.queue import registry", "base modules may import only"),
    ("app.models", "from app.runs.validation import FIELDS", "base modules may import only"),
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
