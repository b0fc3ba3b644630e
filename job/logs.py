"""Quiet logs for the command line: our own lines (the start line, progress, the summary) stay readable.

Without ``-v`` the driver shows Ray's warnings and errors only, and drops three kinds of lines that say nothing to
act on: Ray's INFO lines (instance started, dataset plans, its per-block progress, replaced by `job.progress`), the
core worker's error-level note that actor constructor arguments live in the object store while ``max_restarts`` is
set (Ray Data's own actor pools always do both), and its note that its progress bars are off. ``-v`` shows
everything.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading

__all__ = ["RAY_INIT_LEVEL", "drop_stderr_lines", "quiet_ray", "setup_logging"]

#: ``ray.init(logging_level=...)`` of a quiet driver
RAY_INIT_LEVEL = logging.WARNING


class _DropNotices(logging.Filter):
    """Drops Ray Data's note that its progress bars are off (we turned them off: `job.progress` reports)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def setup_logging(verbose: bool) -> None:
    """Our loggers at INFO with ``verbose``, else WARNING (call before Ray is imported)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def quiet_ray() -> None:
    """Quiet Ray in this driver: call before ``ray.init`` and before the dataset is built (the core worker's note
    is dropped by `drop_stderr_lines`, after ``ray.init``)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(max(handler.level, logging.WARNING))
            handler.addFilter(_DropNotices())


#: C++ log lines of the driver's core worker that `drop_stderr_lines` drops (Ray Data's actor pools always pass
#: their function through the object store and restart actors: nothing to act on)
CORE_WORKER_NOTES = (b"has constructor arguments in the object store and max_restarts",)
_filter: dict[str, object] = {}


def drop_stderr_lines(drop: tuple[bytes, ...] = CORE_WORKER_NOTES) -> None:
    """From now until the process exits, lines written to file descriptor 2 that contain one of ``drop`` are
    dropped; the rest pass through unchanged. Ray's core worker logs in C++ straight to that descriptor, so no
    Python logging setting reaches it. Call after ``ray.init`` (processes started later by this one would hold the
    pipe); a second call does nothing. POSIX only (elsewhere nothing is dropped)."""
    if _filter or os.name != "posix":
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read, write = os.pipe()
    except (OSError, ValueError):  # no usable stderr (closed): nothing to filter
        return
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not any(d in line for d in drop):
                    os.write(real, line)

    thread = threading.Thread(target=pump, name="finedetail-stderr", daemon=True)
    thread.start()
    _filter.update(real=real, thread=thread)
    atexit.register(_restore_stderr)


def _restore_stderr() -> None:
    """Undo `drop_stderr_lines`: descriptor 2 is the real stderr again; what the pipe still holds is written."""
    if not _filter:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_filter["real"], 2)  # closes the pipe's last write end: the pump reads to its end and stops
    _filter["thread"].join(timeout=5)
    _filter.clear()
