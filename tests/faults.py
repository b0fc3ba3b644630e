"""Fault injection for the reliability tests: kill a Ray worker when it is about to process a chosen input, or make a
stage's model builds fail. Test-only: production modules carry no hook for it.

``install(folder)`` runs in every worker process of the session's local Ray (the ``ray_local`` fixture passes it as
the runtime_env's ``worker_process_setup_hook``). It wraps two seams of ``job.stages``, both looked up by name when
they are called:

- ``_guarded(rows, attempts, stage, run)`` (every stage runs its rows through it, with the attempt accounting): the
  wrapper hands it a ``run`` that first kills the process (``os._exit(70)``) when a chosen key is in the rows, then
  runs them. So the death comes exactly where a real one would: after the attempt notes say "trying", before the rows
  are done.
- ``build_bounded(attempts, stage, build)``: the wrapper hands it a ``build`` that first kills the process
  (``os._exit(71)``) or raises, for a chosen stage.

What to inject is read from ``<folder>/faults.json`` at each call (absent: nothing), written by ``Faults.inject`` in
the test process; nothing travels through environment variables. ``{"crash": [{"key": KEY, "stage": STAGE, "times":
N}], "crash_dir": FOLDER, "init_fail": {"stage": PREFIX, "how": "exit" | "raise"}}``: STAGE as in the ``_attempts`` notes (decode, coarse,
refine-<variant>, crop, fuse, write); a prefix matches, so "refine" is any variant; ``times`` -1 = every time. Each
crash leaves a file ``<tag>-<n>`` in ``crash_dir`` (default ``<folder>/crashes``; ``crash_tag``), so a key crashes ``times`` times in all
across restarted workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

SPEC = "faults.json"
CRASHES = "crashes"


def crash_tag(stage: str, key: str) -> str:
    """Prefix of the files a crash of ``key`` in ``stage`` (the spec's stage prefix) leaves in the crashes folder."""
    return hashlib.sha256(f"{stage}\n{key}".encode()).hexdigest()[:16]


def _spec(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, SPEC)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _crash_if_chosen(folder: str, stage: str, rows: list[dict[str, Any]]) -> None:
    spec = _spec(folder)
    crashes = spec.get("crash_dir") or os.path.join(folder, CRASHES)
    keys = {str(r["key"]) for r in rows}
    for item in spec.get("crash", ()):
        if item["key"] not in keys or not stage.startswith(item["stage"]):
            continue
        times = int(item.get("times", 1))
        tag = crash_tag(item["stage"], item["key"])
        done = sum(1 for n in os.listdir(crashes) if n.startswith(tag)) if os.path.isdir(crashes) else 0
        if times < 0 or done < times:
            os.makedirs(crashes, exist_ok=True)
            with open(os.path.join(crashes, f"{tag}-{done}"), "w") as f:
                f.write(f"{stage} {item['key']}\n")
            os._exit(70)


def _fail_build_if_chosen(folder: str, stage: str) -> None:
    spec = _spec(folder).get("init_fail")
    if spec and stage.startswith(spec["stage"]):
        if spec.get("how") == "exit":
            os._exit(71)
        raise RuntimeError(f"test hook: {stage} cannot build its model")


def install(folder: str) -> None:
    """Wrap ``job.stages._guarded`` and ``job.stages.build_bounded`` in this process (module docstring)."""
    from job import stages

    guarded, build_bounded = stages._guarded, stages.build_bounded

    def guarded_with_faults(rows, attempts, stage, run):
        def run_or_die(todo):
            _crash_if_chosen(folder, stage, todo)
            run(todo)

        return guarded(rows, attempts, stage, run_or_die)

    def build_bounded_with_faults(attempts, stage, build):
        def build_or_fail():
            _fail_build_if_chosen(folder, stage)
            return build()

        return build_bounded(attempts, stage, build_or_fail)

    stages._guarded = guarded_with_faults
    stages.build_bounded = build_bounded_with_faults


def setup_hook(folder: str | Path):
    """The runtime_env ``worker_process_setup_hook`` that installs the faults read from ``folder`` (a closure: Ray
    ships it to the workers by value). It runs before Ray puts the driver's working directory on the worker's
    ``sys.path``, so it puts this checkout there first itself: ``job`` must be imported from the code under test, not
    from wherever the environment installed the package."""
    folder = str(folder)
    root, tests = (str(p) for p in Path(__file__).resolve().parents[1::-1])

    def install_faults() -> None:
        import sys

        for path in (tests, root):
            if path not in sys.path:
                sys.path.insert(0, path)
        import faults

        faults.install(folder)

    return install_faults


class Faults:
    """The test side: ``with faults.inject(crash=[...]):`` makes the session's workers crash on those keys."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @contextlib.contextmanager
    def inject(self, *, crash: list[dict[str, Any]] = (), crash_dir: str | Path | None = None,
               init_fail: dict[str, str] | None = None) -> Iterator[None]:
        """Faults on, for the ``with`` block (module docstring: the spec's fields)."""
        spec = self.folder / SPEC
        tmp = spec.with_suffix(".tmp")
        tmp.write_text(json.dumps({"crash": list(crash), "crash_dir": str(crash_dir) if crash_dir else None,
                                   "init_fail": init_fail}))
        os.replace(tmp, spec)  # a worker reads the old spec or the whole new one
        try:
            yield
        finally:
            spec.unlink()
