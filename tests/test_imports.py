"""The package's layering reads top-down: no module imports one that imports it back (an import circle).

The graph is read from the source with `ast`: every `import` and `from ... import` of a module of
cottention_jax counts, at any depth (inside functions and under `if TYPE_CHECKING:` too), since each
says that one module is built on the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests._util import REPO_ROOT

PACKAGE = REPO_ROOT / "cottention_jax"


def _modules() -> dict[str, Path]:
    """{"cottention_jax.train": path, "cottention_jax.data": path of its __init__.py, ...}."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the modules of the package it imports}; `from a.b import c` imports a.b.c when that is a
    module, else a.b (an import of a name of a module goes to that module, not to its package)."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` up
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets.update(
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base) for alias in node.names
                )
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_a_planted_circle_and_passes_a_chain():
    """The finder itself, on hand-made graphs: a -> b -> c -> a is one circle, d -> a is outside it."""
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_the_imports_of_train():
    graph = import_graph()
    assert {"cottention_jax.train_hooks", "cottention_jax.train_data", "cottention_jax.checkpoint"} <= graph[
        "cottention_jax.train"
    ]


def test_the_training_modules_are_in_no_import_circle():
    """train <-> train_hooks was one (train_hooks read train's RunState under TYPE_CHECKING): RunState now
    lives in train_hooks, and train builds on it."""
    training = {
        "cottention_jax.train",
        "cottention_jax.train_hooks",
        "cottention_jax.train_data",
        "cottention_jax.metrics",
        "cottention_jax.configs",
        "cottention_jax.checkpoint",
    }
    assert [c for c in import_circles(import_graph()) if training & set(c)] == []


def test_the_package_has_no_import_circle():
    """ops <-> parallel and train <-> train_hooks were the two: the layering now reads top-down."""
    assert import_circles(import_graph()) == []
