"""The import graph of ``job`` and ``finedetail`` has no cycles, and production modules carry no test hooks.

The graph is read with ``ast`` from the source (no module is imported): an edge for every ``import`` and
``from ... import`` anywhere in a module, at its top or inside a function (a lazy import that closes a cycle is still
a cycle: each module then needs the other to be understood), plus an edge to each package that ``import a.b.c``
runs (``a``, ``a.b``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("finedetail", "job")

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ``PACKAGES`` it imports (see the module docstring)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}

    def add(src: str, target: str) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            name = ".".join(parts[:i])
            if name in files and name != src:
                graph[src].add(name)

    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                add(name, base)
                for alias in node.names:  # from a import b: b may be a module
                    add(name, f"{base}.{alias.name}")
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
])
def test_cycles_finds_exactly_the_strongly_connected_parts(graph, expected):
    assert cycles(graph) == expected


def test_the_graph_sees_lazy_relative_and_package_imports():
    graph = import_graph()
    assert "job.raster.windows" in graph["job.raster.route"]  # top-level from-import
    assert "job.raster.driver" in graph["job.run"]  # inside a function
    assert "job.raster" in graph["job.raster.stitch"]  # the package a dotted import runs
    assert "job.io" in graph["job.raster.windows"] and "job.stages" in graph["job.raster.windows"]


def test_no_import_cycles():
    """No cycle among the modules of job/ and finedetail/ (issue 17): the driver (job.run) imports the operators,
    stages and raster path, none of which imports it back; shared tables live in the module both sides import."""
    assert cycles(import_graph()) == []


#: FINEDETAIL_* environment variables production code may name: each is a user's setting
USER_ENV = {"FINEDETAIL_CACHE", "FINEDETAIL_TORCH_THREADS", "FINEDETAIL_QUICKSTART"}


def test_production_modules_carry_no_test_hooks():
    """Fault injection (tests/faults.py) and shifted window grids (the ``job.raster.driver.scene_windows`` seam) live in
    the tests: no module of job/ or finedetail/ defines a ``_test_*`` function, names a FINEDETAIL_* variable that
    is not a user's setting, or declares a module-level variable for tests to assign (``grid_offset``)."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = path.relative_to(ROOT).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_test"):
                    found.append(f"{where}:{node.lineno} def {node.name}")
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and node.value.startswith("FINEDETAIL_") and node.value not in USER_ENV):
                    found.append(f"{where}:{node.lineno} {node.value}")
            for node in tree.body:
                if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "grid_offset":
                    found.append(f"{where}:{node.lineno} grid_offset")
    assert found == []
