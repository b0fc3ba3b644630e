"""Benchmarks: ``python -m job.bench {real,quality,quality_classes,postprocess,throughput,overhead,encoder,load,stitch,largeimage,classical,archive,pressure} [--json] ...``.

Each prints a table, or one JSON document with ``--json``. Speed and memory targets live here, never in tests.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

COMMANDS = {
    "postprocess": "job.bench.postprocess",
    "quality": "job.bench.quality",
    "throughput": "job.bench.throughput",
    "overhead": "job.bench.overhead",
    "encoder": "job.bench.encoder",
    "quality_classes": "job.bench.quality_classes",
    "load": "job.bench.load",
    "real": "job.bench.real",
    "stitch": "job.bench.stitch",
    "largeimage": "job.bench.largeimage",
    "classical": "job.bench.classical",
    "archive": "job.bench.archive",
    "pressure": "job.bench.pressure",
}


def summary(name: str) -> str:
    """The first line of benchmark ``name``'s module docstring, read without importing it (some import torch)."""
    spec = importlib.util.find_spec(COMMANDS[name])
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    return doc.split("\n")[0].replace("``", "")


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:{width}s}  {summary(name)}" for name in sorted(COMMANDS))
    return ("usage: python -m job.bench BENCHMARK [--json] [options]   (python -m job.bench BENCHMARK --help: its "
            "options)\n\nEach prints a table, or one JSON document with --json. Speed and memory targets live here, "
            f"never in tests.\n\nbenchmarks:\n{rows}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"job.bench: error: unknown benchmark {argv[0]!r}; one of: {', '.join(sorted(COMMANDS))}",
                  file=sys.stderr)
            return 2
        print(usage())
        return 0
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
