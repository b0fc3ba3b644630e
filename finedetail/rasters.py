"""Satellite-scale rasters without the whole scene in memory: window plan, bands, stretch, streaming stitch (pure:
numpy only; no ray, no torch, no rasterio).

The job (``job/raster/``) does the raster IO with rasterio; this module holds the arithmetic it relies on, so that it
can be tested on tiny literal arrays:

- **Window planning**: ``needs_windows`` (a raster with more than ``window_pixels`` pixels is windowed),
  ``plan_windows`` (``finedetail.tiling.tile_grid`` with the job's window / overlap / grid offset; a raster small
  enough for one row gets the single window covering it), ``window_key`` / ``parse_window_key``
  (``"<scene key>#<y0>_<x0>"``).
- **Band mapping**: ``rgb_bands`` picks the three 1-based band indices shown as R, G, B (``JobConfig.bands``; by
  default the first three, or the single band replicated as grey).
- **Stretch**: ``stretch_from_sample`` computes per-channel percentiles from a decimated overview read (the same
  ``lo``/``hi`` then serve every window of the scene, so windows agree where they overlap); ``to_rgb8`` applies it.
  8-bit rasters are not stretched (``Stretch.identity``).
- **Streaming stitch**: ``block_grid`` cuts the scene into output blocks; ``blend_block`` blends, for ONE block, the
  windows' probability maps that overlap it with ``finedetail.tiling.blend_weights`` (the same weighted mean as
  ``tiling.stitch`` on the whole scene, restricted to the block); ``BlockStitcher`` keeps only the windows that overlap
  the current block decoded, so memory is bounded by a few windows whatever the scene size; ``masks_from_probs``
  thresholds (>= 0.5) with the pipeline's multi-class rule.

Frames: windows and blocks are ``finedetail.tiling.Window`` (integer ``[y0, y1) x [x0, x1)``) in the scene's pixel
frame (row 0 = the raster's first row, i.e. the raster's own grid; the affine transform maps it to the CRS).
Probability maps of C classes are ``(C, h, w)``: uint8 0..255 as stored per window, float32 [0, 1] after blending.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from finedetail.postprocess import one_class_per_pixel
from finedetail.tiling import Window, blend_weights, tile_grid
from finedetail.transforms import check_hw

__all__ = [
    "BlockStitcher",
    "Stretch",
    "axis_weights",
    "blend_block",
    "block_grid",
    "masks_from_probs",
    "needs_windows",
    "overview_shape",
    "parse_window_key",
    "plan_windows",
    "rgb_bands",
    "stretch_from_sample",
    "to_rgb8",
    "window_key",
    "windows_overlapping",
]


# ---------------------------------------------------------------------------------------------- windows


def needs_windows(hw: Sequence[int], *, window_pixels: int) -> bool:
    """True when a raster of size ``hw`` has MORE than ``window_pixels`` pixels (exactly ``window_pixels`` fits in
    one row)."""
    h, w = check_hw(hw)
    if window_pixels < 1:
        raise ValueError(f"window_pixels must be >= 1, got {window_pixels=}")
    return h * w > window_pixels


def plan_windows(hw: Sequence[int], *, window: int, overlap: int, window_pixels: int,
                 offset: Sequence[int] = (0, 0)) -> list[Window]:
    """The windows a raster of size ``hw`` is processed in, row-major.

    More than ``window_pixels`` pixels: ``tile_grid(hw, tile=window, overlap=overlap, offset=offset)`` (windows of
    ``min(window, h) x min(window, w)``, consecutive ones overlapping by >= ``overlap``, the last flush with the
    border; ``offset`` moves the seams). Otherwise one window covering the raster (it travels as one row).
    """
    h, w = check_hw(hw)
    if not needs_windows((h, w), window_pixels=window_pixels):
        return [Window(0, 0, h, w)]
    return tile_grid((h, w), tile=window, overlap=overlap, offset=offset)


def window_key(scene_key: str, win: Window) -> str:
    """Row / manifest key of a window: ``"<scene key>#<y0>_<x0>"`` (e.g. ``"a/scene.tif#1792_0"``)."""
    return f"{scene_key}#{win.y0}_{win.x0}"


def parse_window_key(key: str) -> tuple[str, int, int]:
    """``"<scene key>#<y0>_<x0>"`` -> (scene key, y0, x0). The scene key may itself contain ``#``."""
    scene, sep, pos = key.rpartition("#")
    try:
        y0, x0 = (int(v) for v in pos.split("_"))
    except ValueError:
        raise ValueError(f"not a window key (expected '<scene>#<y0>_<x0>'), got {key!r}") from None
    if not sep or not scene:
        raise ValueError(f"not a window key (expected '<scene>#<y0>_<x0>'), got {key!r}")
    return scene, y0, x0


def overview_shape(hw: Sequence[int], *, max_side: int = 1024) -> tuple[int, int]:
    """Size of the decimated read used for statistics: ``hw`` shrunk (never grown) so that its long side is at most
    ``max_side``, aspect kept, each side >= 1 (ceil, so a 1-px-wide raster stays 1 px)."""
    h, w = check_hw(hw)
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side=}")
    f = min(1.0, max_side / max(h, w))
    return max(1, math.ceil(h * f)), max(1, math.ceil(w * f))


# ---------------------------------------------------------------------------------------------- bands, stretch


def rgb_bands(count: int, bands: Sequence[int] | None = None) -> tuple[int, int, int]:
    """1-based band indices read as (R, G, B) from a raster with ``count`` bands.

    ``bands`` given: checked against ``count`` and returned. Otherwise bands 1, 2, 3 when there are >= 3 bands
    (a 4th band, e.g. alpha or near-infrared, is not shown), and band 1 replicated (grey) with 1 or 2 bands.
    """
    if count < 1:
        raise ValueError(f"a raster needs at least one band, got {count=}")
    if bands is None:
        return (1, 2, 3) if count >= 3 else (1, 1, 1)
    b = tuple(int(v) for v in bands)
    if len(b) != 3 or min(b) < 1 or max(b) > count:
        raise ValueError(f"bands must be three 1-based band indices <= {count} (the raster's band count), "
                         f"got {bands=}; set JobConfig.bands to e.g. [3, 2, 1] for B, G, R ordered imagery")
    return b  # type: ignore[return-value]


@dataclass(frozen=True)
class Stretch:
    """Per-channel linear stretch: value ``lo[c]`` -> 0, ``hi[c]`` -> 255 (clipped), in the raster's units.

    ``identity`` (8-bit data): values are used as they are, no scaling."""

    lo: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hi: tuple[float, float, float] = (255.0, 255.0, 255.0)
    identity: bool = True

    def __post_init__(self) -> None:
        if len(self.lo) != 3 or len(self.hi) != 3:
            raise ValueError(f"lo and hi need one value per RGB channel, got {self.lo=}, {self.hi=}")
        if not all(h > lo for lo, h in zip(self.lo, self.hi)):
            raise ValueError(f"stretch needs hi > lo per channel, got {self.lo=}, {self.hi=}")

    def to_dict(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi), "identity": self.identity}

    @classmethod
    def from_dict(cls, d: dict) -> "Stretch":
        return cls(tuple(float(v) for v in d["lo"]), tuple(float(v) for v in d["hi"]), bool(d["identity"]))


def stretch_from_sample(sample: np.ndarray, *, percentiles: Sequence[float] = (2.0, 98.0),
                        valid: np.ndarray | None = None) -> Stretch:
    """Stretch for a scene from a decimated sample ``(3, h, w)`` of its R, G, B bands (any dtype).

    uint8 samples give ``Stretch()`` (identity: 8-bit imagery is shown as is). Otherwise, per channel,
    ``lo, hi = np.percentile(values, percentiles)`` over the ``valid`` pixels ((h, w) bool; default all, NaN never
    counts); ``hi`` is raised to ``lo + 1`` when the channel is flat (or has no valid pixel: then 0, 1), so the
    stretch is always defined.
    """
    a = np.asarray(sample)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"sample must be (3, h, w) (R, G, B bands), got shape {a.shape}")
    p_lo, p_hi = (float(v) for v in percentiles)
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles=}")
    if a.dtype == np.uint8:
        return Stretch()
    ok = np.ones(a.shape[1:], bool) if valid is None else np.asarray(valid, bool)
    if ok.shape != a.shape[1:]:
        raise ValueError(f"valid must be (h, w) = {a.shape[1:]}, got {ok.shape}")
    lo, hi = [], []
    for c in range(3):
        v = a[c][ok].astype(np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            lo.append(0.0)
            hi.append(1.0)
            continue
        q_lo, q_hi = np.percentile(v, [p_lo, p_hi])
        lo.append(float(q_lo))
        hi.append(float(q_hi) if q_hi > q_lo else float(q_lo) + 1.0)
    return Stretch(tuple(lo), tuple(hi), identity=False)  # type: ignore[arg-type]


def to_rgb8(data: np.ndarray, stretch: Stretch) -> np.ndarray:
    """Bands ``(3, h, w)`` (R, G, B; any dtype) -> ``(h, w, 3) uint8`` C-contiguous RGB.

    Identity stretch: the values must already be uint8 (they are moved, not scaled). Otherwise
    ``round(clip((v - lo) * 255 / (hi - lo), 0, 255))`` per channel; NaN -> 0.
    """
    a = np.asarray(data)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"data must be (3, h, w) (R, G, B bands), got shape {a.shape}")
    if stretch.identity:
        if a.dtype != np.uint8:
            raise TypeError(f"an identity stretch needs uint8 data, got {a.dtype}; compute the stretch with "
                            "stretch_from_sample on a sample of this raster")
        return np.ascontiguousarray(np.moveaxis(a, 0, -1))
    out = np.empty((*a.shape[1:], 3), np.uint8)
    for c in range(3):
        scale = 255.0 / (stretch.hi[c] - stretch.lo[c])
        v = (a[c].astype(np.float32) - np.float32(stretch.lo[c])) * np.float32(scale)
        out[..., c] = np.rint(np.clip(np.nan_to_num(v, nan=0.0), 0.0, 255.0))
    return out


# ---------------------------------------------------------------------------------------------- stitching


def block_grid(hw: Sequence[int], *, block: int) -> list[Window]:
    """Non-overlapping ``block x block`` windows tiling ``hw`` row-major, aligned on multiples of ``block`` (the
    last row / column is cut by the border), i.e. the tiles of a GeoTIFF with that block size."""
    h, w = check_hw(hw)
    if block < 1:
        raise ValueError(f"block must be >= 1 px, got {block=}")
    return [Window(y, x, min(y + block, h), min(x + block, w))
            for y in range(0, h, block) for x in range(0, w, block)]


def windows_overlapping(block: Window, windows: Sequence[Window]) -> list[Window]:
    """The windows sharing at least one pixel with ``block``, in their given order."""
    return [w for w in windows
            if w.y0 < block.y1 and block.y0 < w.y1 and w.x0 < block.x1 and block.x0 < w.x1]


def axis_weights(win: Window, hw: Sequence[int], *, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """The separable factors of ``tiling.blend_weights(win, hw, overlap=overlap)``: ``(wy (win.h,), wx (win.w,))``
    float32 with ``blend_weights == outer(wy, wx)`` (to float32 rounding). Obtained from ``blend_weights`` itself on
    one-pixel-wide windows, so the ramp is exactly the core library's; costs O(h + w), not O(h * w)."""
    h, w = check_hw(hw)
    win.check_inside((h, w))
    wy = blend_weights(Window(win.y0, 0, win.y1, 1), (h, 1), overlap=overlap)[:, 0]
    wx = blend_weights(Window(0, win.x0, 1, win.x1), (1, w), overlap=overlap)[0]
    return wy, wx


def blend_block(block: Window, hw: Sequence[int], windows: Sequence[Window],
                load: Callable[[Window], np.ndarray], *, overlap: int) -> np.ndarray:
    """Blend the windows' maps over ONE block: ``(C, block.h, block.w)`` float32 in [0, 1].

    ``windows``: every window of the scene (or at least every one overlapping ``block``); ``load(win)`` returns its
    map ``(C, win.h, win.w)`` (uint8 0..255 -> divided by 255, or float in [0, 1]). The value at each pixel is
    ``sum_i w_i * p_i / sum_i w_i`` over the windows covering it with ``w_i = blend_weights(win_i, hw,
    overlap=overlap)``: exactly ``tiling.stitch(hw, windows, maps, overlap=overlap)`` restricted to the block, but
    only the overlapping windows are touched. Raises RuntimeError when a pixel of the block has no window.
    """
    h, w = check_hw(hw)
    block.check_inside((h, w))
    num = den = None
    for win in windows_overlapping(block, windows):
        p = np.asarray(load(win))
        if p.ndim != 3 or p.shape[1:] != win.hw:
            raise ValueError(f"load({win!r}) must return (C, {win.h}, {win.w}), got shape {p.shape}")
        ys = slice(max(block.y0, win.y0), min(block.y1, win.y1))
        xs = slice(max(block.x0, win.x0), min(block.x1, win.x1))
        wy, wx = axis_weights(win, (h, w), overlap=overlap)
        wts = np.outer(wy[ys.start - win.y0: ys.stop - win.y0], wx[xs.start - win.x0: xs.stop - win.x0])
        part = p[:, ys.start - win.y0: ys.stop - win.y0, xs.start - win.x0: xs.stop - win.x0].astype(np.float64)
        if p.dtype == np.uint8:
            part /= 255.0
        if num is None:
            num = np.zeros((p.shape[0], block.h, block.w), np.float64)
            den = np.zeros((block.h, block.w), np.float64)
        by = slice(ys.start - block.y0, ys.stop - block.y0)
        bx = slice(xs.start - block.x0, xs.stop - block.x0)
        num[:, by, bx] += wts[None] * part
        den[by, bx] += wts
    if num is None or not np.all(den > 0):
        missing = block.h * block.w if den is None else int((den <= 0).sum())
        raise RuntimeError(f"{missing} pixels of block {block!r} are covered by no window; plan the windows with "
                           "plan_windows(hw, ...) so they cover the whole scene")
    return (num / den[None]).astype(np.float32)


def masks_from_probs(prob: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """``(C, h, w)`` float probabilities -> ``(C, h, w)`` bool masks: ``prob >= threshold``, and with several
    classes a pixel keeps only its most probable class among those above the threshold (ties -> lower index), the
    rule of ``finedetail.pipeline.fuse``."""
    p = np.asarray(prob)
    if p.ndim != 3:
        raise ValueError(f"prob must be (C, h, w), got shape {p.shape}")
    return one_class_per_pixel(p >= threshold, p)


class BlockStitcher:
    """Streams a scene's blended probability map block by block from per-window maps kept outside memory.

    ``load(win) -> (C, win.h, win.w)`` reads one window's map (e.g. decodes its PNG). ``block(b)`` returns the
    blended ``(C, b.h, b.w)`` float32 for an output block; windows overlapping ``b`` stay decoded until a later block
    no longer overlaps them, so visiting blocks row-major decodes each window about ``ceil(window / block) + 1``
    times and never holds more than the windows overlapping one block: per axis at most
    ``floor((block + window - 1) / stride) + 2`` of them (the windows start ``stride`` apart, except the last one,
    flush with the border, which may start closer), e.g. <= 3 x 3 for 512-px blocks and 1920-px windows with a
    1664-px stride. ``loads`` counts the decodes, ``max_cached`` the most windows held at once.
    """

    def __init__(self, hw: Sequence[int], windows: Sequence[Window], load: Callable[[Window], np.ndarray], *,
                 overlap: int) -> None:
        self.hw = check_hw(hw)
        self.windows = list(windows)
        self.overlap = int(overlap)
        self._load = load
        self._cache: dict[Window, np.ndarray] = {}
        self.loads = 0
        self.max_cached = 0

    def _get(self, win: Window) -> np.ndarray:
        if win not in self._cache:
            self._cache[win] = self._load(win)
            self.loads += 1
        return self._cache[win]

    def block(self, block: Window) -> np.ndarray:
        needed = windows_overlapping(block, self.windows)
        for win in [w for w in self._cache if w not in needed]:
            del self._cache[win]
        out = blend_block(block, self.hw, needed, self._get, overlap=self.overlap)
        self.max_cached = max(self.max_cached, len(self._cache))
        return out
