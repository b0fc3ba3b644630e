"""Layering is tested, not just stated: the pure modules and ``import finedetail`` leave torch and ray out."""

import subprocess
import sys

import pytest

PURE = [
    "finedetail",
    "finedetail.types",
    "finedetail.transforms",
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
    "finedetail.models",
    "finedetail.models.base",
    "finedetail.models.classical",
    "finedetail.models.thin",
    "finedetail.ridges",
    "finedetail.models.proxy",
    "finedetail.decode",
    "finedetail.models.checkpoints",
    "finedetail.selective",
    "finedetail.instances",
    "finedetail.geo",
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


def test_finedetail_never_imports_ray():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "finedetail"
    offenders = [str(p) for p in root.rglob("*.py")
                 if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())]
    assert offenders == []
