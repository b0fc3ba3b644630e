"""Every third-party module the project imports comes with what ``pip install`` of its extras brings.

``pip install -e '.[test]'`` on a fresh machine must be able to run every test and benchmark: a module that the tests
or ``job.bench`` import but no declared requirement (or a requirement's own requirements) provides fails only there.
Checked against the installed distributions' metadata, so it needs no network.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
OWN = {"finedetail", "job", "tests", "conftest", "jobkit", "faults"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(files) -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (imports inside functions included)."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions these requirement strings install, with their own requirements."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        extras = set(req.extras)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist_reqs = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for raw in dist_reqs:
            sub = Requirement(raw)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return {k.split("[")[0] for k in seen}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@functools.cache
def _providers(module: str) -> frozenset[str]:
    return frozenset(_norm(d) for d in _distributions().get(module, []))


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


@pytest.mark.parametrize("where, extras", [
    ("tests and job.bench", ("test",)),  # what `pip install -e '.[test]'` must be enough for
    ("the library and the job", None),  # None: core plus every extra (rasterio comes with geo, pydensecrf with crf)
])
def test_every_imported_module_is_declared(where, extras):
    project = _project()
    optional = project["optional-dependencies"]
    if extras is None:
        files = [*ROOT.glob("finedetail/**/*.py"), *ROOT.glob("job/**/*.py")]
        extras = tuple(optional)
    else:
        files = [*ROOT.glob("tests/*.py"), *ROOT.glob("job/bench/*.py")]
    installed = _closure([*project["dependencies"], *(r for e in extras for r in optional[e])])
    missing = {m: sorted(f) for m, f in _imports(files).items() if not _providers(m) & installed}
    assert not missing, (f"{where} import modules that no requirement of the core or the extras {list(extras)} "
                         f"brings: {missing}; add their distributions to pyproject.toml")
