"""Benchmarks: ``python -m job.bench {real,quality,quality_classes,postprocess,throughput,overhead,encoder,load,stitch,largeimage,classical,archive} [--json] ...``.

Each prints a table, or one JSON document with ``--json``. Speed and memory targets live here, never in tests.
"""

from __future__ import annotations

import importlib
import sys

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
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
