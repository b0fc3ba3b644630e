"""Layering is tested, not just stated: the pure modules and ``import finedetail`` leave torch and ray out."""

import subprocess
import sys

import pytest

PURE = [
    "finedetail",
    "finedetail.types",
    "finedetail.transforms",
    "finedetail.frames",
    "finedetail.selection",
    "finedetail.guided",
    "finedetail.morphology",
    "finedetail.crf",
    "finedetail.tiling",
    "finedetail.crops",
    "finedetail.prompts",
    "finedetail.ensemble",
    "finedetail.postprocess",
    "finedetail.metrics",
    "finedetail.rle",
    "finedetail.synthetic",
    "finedetail.codecs",
    "finedetail.config",
    "finedetail.presets",
    "finedetail.outputs",
    "finedetail.pipeline",
    "finedetail.plan",
    "finedetail.state",
    "finedetail.execute",
    "finedetail.models",
    "finedetail.models.base",
    "finedetail.models.classical",
    "finedetail.models.grabcut",
    "finedetail.models.weightfree",
    "finedetail.models.thin",
    "finedetail.ridges",
    "finedetail.models.proxy",
    "finedetail.decode",
    "finedetail.models.checkpoints",
    "finedetail.models.weights",
    "finedetail.models.hf_checkpoints",
    "finedetail.selective",
    "finedetail.instances",
    "finedetail.rasters",
    "finedetail.redaction",
    "finedetail.blockmorph",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_neither_torch_nor_ray(module):
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = [m for m in ('torch', 'ray', 'transformers', 'segment_anything') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} pulled in {out.stdout.strip()}"


@pytest.mark.parametrize("module", [
    "finedetail.storage", "finedetail.listing", "finedetail.retry", "finedetail.s3", "job.io",
])
def test_the_storage_layer_imports_neither_torch_nor_ray(module):
    """Not pure numpy (pyarrow, sockets), but every Ray task and the checkpoint loader import it: no torch, no ray,
    no model libraries."""
    test_pure_module_imports_neither_torch_nor_ray(module)


def test_finedetail_never_imports_job():
    """job/ may import finedetail, never the reverse: the storage the checkpoint loader shares lives in finedetail."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "finedetail"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n == "job" or n.startswith("job.")]
    assert offenders == []


def test_every_library_module_is_small_and_states_its_job():
    """Each module of the library and the job has one job, said in the first line of its docstring, and stays under 500 lines
    (issue 17: a reader must be able to say in a sentence what each module does)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    long, silent = [], []
    for path in sorted([*(root / "finedetail").rglob("*.py"), *(root / "job").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(root).as_posix()
        if len(text.splitlines()) > 500:
            long.append(f"{name}: {len(text.splitlines())} lines")
        doc = ast.get_docstring(ast.parse(text, name))
        if not doc or not doc.splitlines()[0].strip():
            silent.append(name)
    assert long == [], f"split these by concern (at most 500 lines each): {long}"
    assert silent == [], f"these modules do not say what they do in a first docstring line: {silent}"


def test_only_entry_points_import_job_run():
    """``job.run`` (the driver) imports the operators, stages and the raster path; none of them imports it back
    (``model_stages`` and the pool helper live in ``job.operators``), so there is no cycle through the driver. Only
    the entry points (the CLI, the quickstart, the benchmarks) import it."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "job"
    entry = {"__main__.py", "quickstart.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name in entry or "bench" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if isinstance(node, ast.ImportFrom) and node.module == "job":
                names = [f"job.{a.name}" for a in node.names]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n == "job.run"]
    assert offenders == []


def test_finedetail_never_imports_ray():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "finedetail"
    offenders = [str(p) for p in root.rglob("*.py")
                 if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())]
    assert offenders == []


def test_every_traceback_the_job_logs_is_redacted():
    """A traceback quotes the failing call's arguments and messages (a checkpoint URL with user:password@, a
    presigned query): every ``traceback.format_exc()`` / ``format_exception`` in job/ must sit inside ``redact(...)``,
    and no log call may hand Python a raw traceback to print (``exc_info=``, ``log.exception``)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "job"
    raw = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        inside_redact: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "redact":
                inside_redact |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            if name in ("format_exc", "format_exception", "format_tb", "print_exc") and id(node) not in inside_redact:
                raw.append(f"{where} {name}() outside redact()")
            if name == "exception" or any(k.arg == "exc_info" for k in node.keywords):
                raw.append(f"{where} logs a raw traceback")
    assert raw == []
