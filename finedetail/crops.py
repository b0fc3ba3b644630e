"""Per-object high-resolution crops: window with context, zoom, crop frame <-> image frame, paste back
(pure: numpy + OpenCV).

Frames. The IMAGE frame is the continuous pixel frame of the full image (pixel ``(r, c)`` covers
``[c, c+1) x [r, r+1)``). A ``Window`` ``win`` is an integer pixel rectangle of it. The CROP frame is the
continuous frame of ``crop_image(image, win, zoom)``, an array of ``crop_size(win, zoom) = (ch, cw)`` pixels that
shows exactly the window, so ``x_crop = (x - win.x0) * cw / win.w`` and ``y_crop = (y - win.y0) * ch / win.h``
(the exact size ratio, not ``zoom``, which the rounding of ``ch, cw`` only approximates).

Typical use: ``win = object_window(box, hw)``; ``z = zoom_for(win)``; run the model on ``crop_image(image, win,
z)`` with prompts made from the crop's own coarse map; bring its map back with ``from_crop_image`` and ``paste`` it
into the global map (a point or box would map as ``frames.Scale.to_size(win.hw, crop_size(win, z))`` after
subtracting ``(win.x0, win.y0)``). Objects whose window is longer than the model's input go through
``split_window`` first.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from finedetail.config import PASTE_MODES
from finedetail.tiling import Window, tile_grid
from finedetail.frames import resize
from finedetail.transforms import check_hw

__all__ = [
    "crop_image",
    "crop_size",
    "from_crop_image",
    "object_window",
    "paste",
    "split_window",
    "zoom_for",
]

def object_window(box: np.ndarray, hw: Sequence[int], *, pad_frac: float = 0.25, min_pad: float = 16) -> Window:
    """Window around an object's box with context, clipped to the image.

    ``box``: (4,) XYXY, image frame (continuous). ``hw``: image size. Each side is padded by
    ``pad = max(min_pad, pad_frac * max(box_w, box_h))`` pixels, then the window is the smallest integer rectangle
    containing the padded box (``floor`` of the low edges, ``ceil`` of the high ones), clipped to ``[0, w] x [0, h]``;
    it always holds at least one pixel. A box that does not touch the image raises ValueError.
    """
    h, w = check_hw(hw)
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or b[0] > b[2] or b[1] > b[3]:
        raise ValueError(f"box must be a finite (4,) XYXY with x0 <= x1 and y0 <= y1, got {box!r}")
    if not (pad_frac >= 0 and min_pad >= 0):
        raise ValueError(f"padding must be >= 0, got {pad_frac=}, {min_pad=}")
    if b[2] < 0 or b[0] > w or b[3] < 0 or b[1] > h:
        raise ValueError(f"box {b.tolist()} lies outside the image of size (h, w) = {(h, w)}; "
                         "boxes must be in the image's continuous pixel frame")
    pad = max(float(min_pad), float(pad_frac) * max(b[2] - b[0], b[3] - b[1]))
    x0, x1 = _clip_span(math.floor(b[0] - pad), math.ceil(b[2] + pad), w)
    y0, y1 = _clip_span(math.floor(b[1] - pad), math.ceil(b[3] + pad), h)
    return Window(y0, x0, y1, x1)


def _clip_span(lo: int, hi: int, n: int) -> tuple[int, int]:
    lo, hi = min(max(lo, 0), n), min(max(hi, 0), n)
    if hi <= lo:  # a zero-size box on the border with no padding: keep the pixel next to it
        lo = min(lo, n - 1)
        hi = lo + 1
    return lo, hi


def zoom_for(win: Window, *, target_long: int = 1024, max_zoom: float = 8.0) -> float:
    """Zoom that makes the window's long side ``target_long`` pixels: ``min(target_long / max(h, w), max_zoom)``.

    Below 1 when the window is longer than ``target_long`` (the crop is then downscaled; ``split_window`` avoids
    that). ``max_zoom`` caps the upscaling of tiny objects, whose crop would otherwise be mostly interpolation."""
    if isinstance(target_long, bool) or not isinstance(target_long, (int, np.integer)) or target_long < 1:
        raise ValueError(f"target_long must be an int >= 1 (pixels), got {target_long=}")
    if not (math.isfinite(max_zoom) and max_zoom > 0):
        raise ValueError(f"max_zoom must be a finite number > 0, got {max_zoom=}")
    return float(min(target_long / max(win.h, win.w), max_zoom))


def crop_size(win: Window, zoom: float) -> tuple[int, int]:
    """Size of the crop frame: ``(max(1, round(win.h * zoom)), max(1, round(win.w * zoom)))``."""
    if not (isinstance(zoom, (int, float, np.number)) and math.isfinite(zoom) and zoom > 0):
        raise ValueError(f"zoom must be a finite number > 0, got {zoom=}")
    return max(1, round(win.h * zoom)), max(1, round(win.w * zoom))


def crop_image(image: np.ndarray, win: Window, zoom: float, *, interp: str = "linear") -> np.ndarray:
    """``image[win.slices]`` resampled to ``crop_size(win, zoom)``.

    ``image``: (H, W) or (H, W, C), any dtype (see ``frames.resize`` for the resampling: linear growing, area
    shrinking, threshold for bool). Returns the same dtype and channel layout, C-contiguous."""
    win.check_inside(image.shape[:2])
    return resize(image[win.slices], crop_size(win, zoom), interp=interp)


def from_crop_image(crop_map: np.ndarray, win: Window, *, interp: str = "linear") -> np.ndarray:
    """Crop-frame array (any size, e.g. a model's output on ``crop_image``) resampled to the window's original
    resolution ``(win.h, win.w)``, ready for ``paste``. Same dtype and channel layout."""
    return resize(crop_map, win.hw, interp=interp)


def paste(global_map: np.ndarray, crop_map: np.ndarray, win: Window, *, mode: str = "max") -> None:
    """Write ``crop_map`` into ``global_map[win.slices]`` in place.

    ``global_map``: (H, W) (or (H, W, C)) array, modified in place. ``crop_map``: the window's map at its ORIGINAL
    resolution, shape ``(win.h, win.w)`` (+ the same trailing dims) — bring a model's crop output back with
    ``from_crop_image`` first. ``mode="max"``: element-wise maximum with what is there (union for bool masks,
    so overlapping objects never erase each other); ``mode="replace"``: overwrite the window.
    ``crop_map``'s dtype must cast to ``global_map``'s without changing kind (float64 -> float32 is fine,
    float -> uint8 is not).
    """
    if mode not in PASTE_MODES:
        raise ValueError(f"mode must be one of {PASTE_MODES}, got {mode!r}")
    if not isinstance(global_map, np.ndarray) or global_map.ndim < 2:
        raise TypeError(f"global_map must be an (H, W) numpy array, got {type(global_map).__name__}")
    win.check_inside(global_map.shape[:2])
    crop = np.asarray(crop_map)
    want = win.hw + global_map.shape[2:]
    if crop.shape != want:
        raise ValueError(f"crop_map for {win!r} must have shape {want} (the window at original resolution), got "
                         f"{crop.shape}; resize it with from_crop_image(crop_map, win)")
    if not np.can_cast(crop.dtype, global_map.dtype, casting="same_kind"):
        raise TypeError(f"cannot paste {crop.dtype} into a {global_map.dtype} map; convert it first "
                        "(e.g. finedetail.types.to_u8 for float -> uint8)")
    region = global_map[win.slices]
    if mode == "max":
        np.maximum(region, crop, out=region, casting="same_kind")
    else:
        region[...] = crop


def split_window(win: Window, *, max_side: int, overlap: int | None = None) -> list[Window]:
    """Overlapping windows of at most ``max_side x max_side`` pixels covering ``win`` (image frame).

    ``[win]`` itself when it already fits. Otherwise ``tile_grid`` over the window with tile ``max_side`` and
    ``overlap`` (default ``max_side // 4``) pixels of overlap between neighbours, translated into the image
    frame; the pieces stay inside ``win`` and the last ones are flush with its edges."""
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1:
        raise ValueError(f"max_side must be an int >= 1 (pixels), got {max_side=}")
    if overlap is None:
        overlap = int(max_side) // 4
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < max_side:
        raise ValueError(f"overlap must be an int with 0 <= overlap < max_side, got {overlap=} for {max_side=}")
    if win.h <= max_side and win.w <= max_side:
        return [win]
    return [t.translate(win.y0, win.x0) for t in tile_grid(win.hw, tile=int(max_side), overlap=overlap)]
