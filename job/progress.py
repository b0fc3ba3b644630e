"""Per-image progress of a run, printed by the driver as the write stage's rows reach it.

The rate and ETA count from the first finished image (Ray's start-up and model loading are not the pace). On a
terminal one line is redrawn in place every second (a bar, images done, errors, rate, ETA); in a log (not a
terminal: a file, ``ray job submit``) a line is printed every ``every`` images or ``seconds`` seconds, whichever
comes first, so an image that takes minutes still shows a heartbeat with the elapsed time::

    progress: 12/40 images (3 errors), 0.8 img/s, 15s elapsed, ETA 35s

Images are counted from rows as they are written, not from Ray's blocks (a block holds several images).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

__all__ = ["Progress", "ProgressOptions", "format_seconds"]


@dataclass(frozen=True)
class ProgressOptions:
    """How `Progress` reports. ``every``: images per log line (None: a twentieth of the run, at least 1);
    ``seconds``: at most this long between log lines (the heartbeat); ``bar``: redraw one line in place (None: when
    the output is a terminal); ``enabled``: False prints nothing."""

    every: int | None = None
    seconds: float = 30.0
    bar: bool | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"progress every must be >= 1 image, got {self.every=}")
        if not self.seconds > 0:
            raise ValueError(f"progress seconds must be > 0, got {self.seconds=}")


def format_seconds(s: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a duration for a progress line."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts the run's images (`start` with the total, `add` per row) and prints progress to ``out`` from a
    background thread as well as on each `add`, so a long image shows a heartbeat. Use as a context manager: the
    thread stops on exit, which also ends the bar's line."""

    BAR_WIDTH = 20

    def __init__(self, *, out: TextIO, options: ProgressOptions = ProgressOptions(),
                 clock: Callable[[], float] = time.monotonic):
        self.out, self.options, self.clock = out, options, clock
        self.total: int | None = 0
        self.done = self.errors = 0
        self.bar = options.bar if options.bar is not None else bool(getattr(out, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._last_line = 0.0
        self._last_done = 0
        self._first: tuple[float, int] | None = None  # (when the first rows came, how many came then)
        self._drawn = False

    def start(self, total: int | None) -> None:
        """Start counting ``total`` images (nothing is printed for 0); None: not known yet, the listing still goes
        on (`set_total` when it ends; until then lines say ``N/? images`` and give no ETA)."""
        if not self.options.enabled or (total is not None and total <= 0):
            return
        self.total, self._t0 = total, self.clock()
        self._last_line = self._t0
        self._thread = threading.Thread(target=self._tick, name="finedetail-progress", daemon=True)
        self._thread.start()

    def set_total(self, total: int) -> None:
        """The listing ended: ``total`` images in all."""
        with self._lock:
            self.total = total

    @property
    def every(self) -> int:
        return self.options.every or (10 if self.total is None else max(1, -(-self.total // 20)))

    def add(self, row: dict[str, Any]) -> None:
        """One image done (its manifest row: ``status`` ok or error)."""
        if self._thread is None:
            return
        with self._lock:
            self.done += 1
            self.errors += row.get("status") == "error"
            now = self.clock()
            if self._first is None or now - self._first[0] < 0.5:  # the first rows (a block comes at once)
                self._first = (now if self._first is None else self._first[0], self.done)
            if self.bar:
                self._draw()
            elif self.done - self._last_done >= self.every or self.done == self.total:
                self._print_line()

    def line(self) -> str:
        """The current state in one line (no newline)."""
        elapsed = self.clock() - self._t0
        errors = f" ({self.errors} error{'s' * (self.errors != 1)})" if self.errors else ""
        known = self.total is not None
        head = f"{self.done}/{self.total if known else '?'} images{errors}"
        if self.bar:
            filled = self.BAR_WIDTH * self.done // max(1, self.total) if known else 0
            head = f"[{'#' * filled}{'.' * (self.BAR_WIDTH - filled)}] {head}"
        if self.done == 0 or elapsed <= 0:
            return f"progress: {head}, {format_seconds(elapsed)} elapsed, first images still running"
        # the rate since the first rows came: Ray's start-up and the models' loading are not the steady pace
        since, before = self._first or (self._t0, 0)
        if self.done <= before:  # only the first rows so far: no pace yet
            return f"progress: {head}, {format_seconds(elapsed)} elapsed"
        rate = (self.done - before) / (self.clock() - since)
        eta = "" if not known or self.done >= self.total else f", ETA {format_seconds((self.total - self.done) / rate)}"
        return f"progress: {head}, {rate:.3g} img/s, {format_seconds(elapsed)} elapsed{eta}"

    def _print_line(self) -> None:
        print(self.line(), file=self.out, flush=True)
        self._last_line, self._last_done = self.clock(), self.done

    def _draw(self) -> None:
        self.out.write(f"\r{self.line()}\033[K")
        self.out.flush()
        self._drawn = True

    def _tick(self) -> None:
        wait = 1.0 if self.bar else min(1.0, self.options.seconds)
        while not self._stop.wait(wait):
            with self._lock:
                if self.bar:
                    self._draw()
                elif self.clock() - self._last_line >= self.options.seconds:
                    self._print_line()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._drawn:
            self.out.write("\n")
            self.out.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
