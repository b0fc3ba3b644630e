"""Overlapping tile grids and seam-free blending of per-tile predictions (pure: numpy only).

A model that only sees ``tile x tile`` pixels (SAM: 1024) runs on each ``Window`` of ``tile_grid`` and its
``(win.h, win.w)`` probability maps are blended back with ``Stitcher`` / ``stitch``: a weighted mean whose weights
(``blend_weights``) fall smoothly (raised cosine) to nearly zero at a window's edges inside the image, so no seam
appears where one window stops, and stay 1 along the image border, where no other window can take over.

Frames: windows are integer pixel bounds ``[y0, y1) x [x0, x1)`` in the frame of the full image; in continuous
coordinates the window is the box ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from finedetail.transforms import check_hw

__all__ = ["Stitcher", "Window", "blend_weights", "tile_grid"]


@dataclass(frozen=True)
class Window:
    """Integer pixel window ``rows y0..y1-1, cols x0..x1-1`` (end exclusive) of a larger image; non-empty."""

    y0: int
    x0: int
    y1: int
    x1: int

    def __post_init__(self) -> None:
        vals = (self.y0, self.x0, self.y1, self.x1)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            raise ValueError(f"Window bounds must be ints, got {self!r}; round with math.floor / math.ceil first")
        if not (0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError(f"Window needs 0 <= y0 < y1 and 0 <= x0 < x1 (non-empty, inside the image), got {self!r}")
        for name, v in zip(("y0", "x0", "y1", "x1"), vals):
            object.__setattr__(self, name, int(v))

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def hw(self) -> tuple[int, int]:
        return (self.h, self.w)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``image[win.slices]`` is the window's ``(h, w, ...)`` view."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    @property
    def box(self) -> np.ndarray:
        """(4,) float64 XYXY, continuous frame of the full image."""
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    def translate(self, dy: int, dx: int) -> "Window":
        return Window(self.y0 + dy, self.x0 + dx, self.y1 + dy, self.x1 + dx)

    def check_inside(self, hw: Sequence[int]) -> "Window":
        """Return self, or raise ValueError if the window sticks out of an image of size ``hw``."""
        h, w = check_hw(hw)
        if self.y1 > h or self.x1 > w:
            raise ValueError(f"{self!r} does not fit in an image of size (h, w) = {(h, w)}; clip it to the image")
        return self


def _check_tile_overlap(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile must be an int >= 1, got {tile=}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be an int with 0 <= overlap < tile, got {overlap=} for {tile=}")


def _check_overlap(overlap: int) -> int:
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ValueError(f"overlap must be an int >= 0 (pixels), got {overlap=}")
    return int(overlap)


def _axis_starts(n: int, tile: int, overlap: int, offset: int) -> tuple[list[int], int]:
    t = min(tile, n)
    if t == n:
        return [0], t
    stride = tile - overlap
    last = n - t
    starts: list[int] = []
    # nominal grid j * stride - offset, clamped into [0, last]: clamping only shrinks gaps, so every gap stays
    # <= stride and every overlap >= the requested one; the final clamp makes the last window flush.
    s = -(offset % stride)
    while True:
        c = min(max(s, 0), last)
        if not starts or c != starts[-1]:
            starts.append(c)
        if c >= last:
            return starts, t
        s += stride


def tile_grid(
    hw: Sequence[int], *, tile: int, overlap: int, offset: Sequence[int] = (0, 0)
) -> list[Window]:
    """Windows of ``min(tile, h) x min(tile, w)`` pixels covering an image of size ``hw``, row-major.

    Along each axis the windows start at ``j * (tile - overlap) - offset`` (``offset`` taken modulo the stride
    ``tile - overlap``), clamped into the image, duplicates dropped: consecutive windows overlap by at least
    ``overlap`` pixels, the first starts at 0 and the last ends flush with the border. An axis no longer than
    ``tile`` gets one window spanning it, so an image smaller than the tile gives exactly one window.
    ``offset = (oy, ox)`` shifts the grid (two grids with different offsets put their seams in different places).
    Requires ``0 <= overlap < tile``.
    """
    h, w = check_hw(hw)
    _check_tile_overlap(tile, overlap)
    try:
        oy, ox = (int(v) for v in offset)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be a (dy, dx) pair of ints, got {offset=}") from None
    ys, th = _axis_starts(h, int(tile), int(overlap), oy)
    xs, tw = _axis_starts(w, int(tile), int(overlap), ox)
    return [Window(y, x, y + th, x + tw) for y in ys for x in xs]


def _axis_ramp(lo: int, hi: int, n: int, overlap: int) -> np.ndarray:
    length = hi - lo
    ramp = np.ones(length, dtype=np.float64)
    if overlap == 0:
        return ramp
    # sampled at pixel centres, so the first pixel gets a small positive weight, never 0
    u = np.minimum((np.arange(length) + 0.5) / overlap, 1.0)
    rise = 0.5 - 0.5 * np.cos(np.pi * u)
    if lo > 0:
        ramp = np.minimum(ramp, rise)
    if hi < n:
        ramp = np.minimum(ramp, rise[::-1])
    return ramp


def blend_weights(win: Window, hw: Sequence[int], *, overlap: int) -> np.ndarray:
    """(win.h, win.w) float32 blending weights for ``win`` inside an image of size ``hw``.

    Per axis, along each window edge that lies INSIDE the image, the weight rises as a raised cosine
    ``0.5 - 0.5 * cos(pi * (i + 0.5) / overlap)`` over the ``overlap`` pixels ``i = 0..overlap-1`` next to that
    edge, then stays 1; along an edge on the image border it is 1. The 2-D weight is the product of the two axes.
    Every weight is > 0 (smallest ~ (pi / (4 * overlap))**2 per ramped axis); ``overlap = 0`` gives all ones.
    """
    win.check_inside(hw)
    h, w = check_hw(hw)
    overlap = _check_overlap(overlap)
    wy = _axis_ramp(win.y0, win.y1, h, overlap)
    wx = _axis_ramp(win.x0, win.x1, w, overlap)
    return np.outer(wy, wx).astype(np.float32)


class Stitcher:
    """Incremental weighted-mean blend of window predictions into an ``(H, W)`` map.

    ``add`` one window at a time (a huge scene never needs all tile outputs in memory at once); sums are kept in
    float64 so thousands of windows add without drift. ``result()`` returns ``sum(w * p) / sum(w)`` as float32.
    """

    def __init__(self, hw: Sequence[int], *, overlap: int) -> None:
        self.hw = check_hw(hw)
        self.overlap = _check_overlap(overlap)
        self._num = np.zeros(self.hw, dtype=np.float64)
        self._den = np.zeros(self.hw, dtype=np.float64)

    def add(self, win: Window, prob: np.ndarray, *, weights: np.ndarray | None = None) -> None:
        """Accumulate ``prob`` ((win.h, win.w), any real dtype, e.g. float32 in [0, 1]) predicted for ``win``.

        ``weights`` ((win.h, win.w), > 0) overrides ``blend_weights(win, hw, overlap=self.overlap)``."""
        if not isinstance(win, Window):
            raise TypeError(f"win must be a tiling.Window, got {type(win).__name__}")
        win.check_inside(self.hw)
        p = np.asarray(prob)
        if p.shape != win.hw:
            raise ValueError(f"prob for {win!r} must have shape (win.h, win.w) = {win.hw}, got {p.shape}; "
                             "resize the tile prediction back to its window first")
        if weights is None:
            wts = blend_weights(win, self.hw, overlap=self.overlap).astype(np.float64)
        else:
            wts = np.asarray(weights, dtype=np.float64)
            if wts.shape != win.hw or not np.all(wts > 0):
                raise ValueError(f"weights must be (win.h, win.w) = {win.hw} and > 0 everywhere, got shape "
                                 f"{wts.shape}, min {wts.min() if wts.size else None}")
        self._num[win.slices] += wts * p
        self._den[win.slices] += wts

    @property
    def covered(self) -> np.ndarray:
        """(H, W) bool: pixels some added window covers."""
        return self._den > 0

    def result(self, *, fill: float | None = None) -> np.ndarray:
        """(H, W) float32 weighted mean. Uncovered pixels raise RuntimeError unless ``fill`` gives their value."""
        covered = self.covered
        if fill is None and not covered.all():
            raise RuntimeError(f"{int((~covered).sum())} of {covered.size} pixels are covered by no window; add "
                               "windows from tile_grid(hw, ...) covering the whole image, or pass fill=")
        out = np.full(self.hw, np.nan if fill is None else fill, dtype=np.float64)
        np.divide(self._num, self._den, out=out, where=covered)
        return out.astype(np.float32)
