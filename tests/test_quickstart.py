"""The README's first command, run as written, on a clean directory.

The README's first ```bash block is the first thing a new user runs::

    python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m job quickstart --workdir ...

Its first two steps only set up the environment. Running them here would either build a second multi-GB venv
(minutes, and the network) or ``pip install -e`` a copy of the project into the project's venv, which re-points the
project's editable install at a temporary directory that is gone after the test. So the test checks that they are
exactly the standard setup (``python3 -m venv .venv``, ``.venv/bin/pip install -e .``) and runs the last step
verbatim, through the shell, in an empty temporary directory whose ``.venv`` is a symlink to the venv running the
tests (the project's own, made by those two steps): the same interpreter and editable install, the command's own
relative paths, and a working directory holding nothing else, so the quickstart can rely on nothing but its install.

It then checks what the README promises: both runs wrote a mask and an overlay for every scene and a manifest with an
``ok`` row for each, and the printed table shows the fine-detail row beating the single pass on thin-structure
recall without giving up IoU. Slow (the real job on a local Ray, twice: about a minute of CPU) and run by CI.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP_STEPS = ["python3 -m venv .venv", ".venv/bin/pip install -e ."]


def readme_first_command() -> str:
    """The first ```bash block of README.md as one command line (backslash continuations joined)."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert match, "README.md has no ```bash code block"
    lines = [ln for ln in match.group(1).replace("\\\n", " ").splitlines() if ln.strip()]
    assert len(lines) == 1, f"README's first bash block should be one command, got {lines}"
    return lines[0].strip()


def parse_table(stdout: str) -> dict[str, dict[str, float]]:
    """The quickstart's table -> row name -> column name -> value."""
    lines = stdout.splitlines()
    head = next((i for i, ln in enumerate(lines) if "BoundaryIoU" in ln), None)
    assert head is not None, f"no metrics table in the output:\n{stdout[-3000:]}"
    columns = re.split(r"\s{2,}", lines[head].strip())
    assert columns[:3] == ["IoU", "BoundaryIoU", "thin recall"], columns
    rows = {}
    for ln in lines[head + 1: head + 3]:
        name, values = re.fullmatch(r"\s*([a-z ]+?)\s+([-0-9.\s]+)", ln).groups()
        rows[name] = dict(zip(columns, map(float, values.split())))
    return rows


def test_readme_command_is_setup_then_quickstart():
    steps = [s.strip() for s in readme_first_command().split("&&")]
    assert steps[:2] == SETUP_STEPS
    assert len(steps) == 3 and shlex.split(steps[2])[:4] == [".venv/bin/python", "-m", "job", "quickstart"]


@pytest.mark.slow
def test_readme_first_command_runs_the_quickstart(tmp_path):
    venv = Path(sys.prefix)  # the venv running these tests, which has the project installed
    if sys.prefix == sys.base_prefix or not (venv / "bin" / "python").exists():
        pytest.skip("needs the tests to run from the project's venv (python3 -m venv .venv && .venv/bin/pip install "
                    "-e . && .venv/bin/python -m pytest)")
    run_step = [s.strip() for s in readme_first_command().split("&&")][2]
    argv = shlex.split(run_step)
    workdir = tmp_path / argv[argv.index("--workdir") + 1]
    (tmp_path / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    proc = subprocess.run(run_step, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"{run_step!r} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")

    table = parse_table(proc.stdout)
    assert set(table) == {"single pass", "fine detail"}
    single, fine = table["single pass"], table["fine detail"]
    assert fine["thin recall"] > single["thin recall"], table
    assert fine["IoU"] >= single["IoU"] - 0.02, table
    assert re.search(r"classical backend at \d+ px \(coarse\) and \d+ px \(GrabCut input.*\) working resolution",
                     proc.stdout)

    from job import io as jio
    from job import manifest as jm

    scenes = sorted(p.stem for p in (workdir / "data" / "images").glob("*.png"))
    assert len(scenes) == 6
    for out in ("out-single", "out-finedetail"):
        for sub in ("masks", "overlays"):
            assert sorted(p.stem for p in (workdir / out / sub).glob("*.png")) == scenes, (out, sub)
        rows = jm.latest_rows(jm.read_manifest(jio.open_storage(str(workdir / out))[0]))
        assert sorted(k for k, r in rows.items() if r["status"] == "ok") == [f"{s}.png" for s in scenes], (out, rows)
    for line in ("masks:", "overlays:"):
        shown = next(ln for ln in proc.stdout.splitlines() if ln.startswith(line)).split(None, 1)[1]
        assert Path(shown) == workdir / "out-finedetail" / line[:-1]

    # the README's next step, a look at the whole run: its report command, as written
    report = readme_report_command()
    proc = subprocess.run(report, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{report!r} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    page = (workdir / "out-finedetail" / "report.html").read_text()
    assert page.count('<tr class="row ') == len(scenes) and page.count("data:image/jpeg;base64,") == len(scenes)


def readme_report_command() -> str:
    """The README's ```bash line that runs ``python -m job report`` on the quickstart's output."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines() if "-m job report" in ln]
    assert lines, "README.md shows no `python -m job report` command"
    return lines[0]

