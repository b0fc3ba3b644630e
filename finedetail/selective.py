"""Selective compute (README, The method, step 6): decide where another encoder pass is worth it (pure: numpy + OpenCV).

The cost unit is encoder passes per image. Every decision is a pure function of maps already computed:

- ``detail_map``: the fine detail a map shows: thin parts of its mask (the mask minus its opening by a small disc),
  the structures a finer look can grow;
- ``window_has_detail`` / ``has_prompts``: run a >1x tile only where the lower-scale map shows at least ``min_px``
  detail pixels and the coarse map gives the refiner something to prompt with (a refiner window without a prompt
  returns its coarse input, so its encoder pass buys nothing); ``cover_windows``: of those, only the windows
  holding detail that the chosen ones do not already own;
- ``variants_agree``: stop running TTA views once the views already run agree (pairwise IoU of their masks);
- ``object_needs_crop``: zoom into an object only when its outline is uncertain or detailed (the pipeline also
  ranks an image's crops by the ``detail_map`` pixels of their object they hold).

Counts are in pixels of the ORIGINAL image frame, so a rule means the same at every scale (a count in a 2x frame is
divided by 4) and does not depend on the window's size (a fraction would: a 1024 tile with a 100-px wire is 0.01 %
detail).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from finedetail.morphology import disk
from finedetail.tiling import Window, blend_weights

__all__ = [
    "cover_windows",
    "detail_map",
    "has_prompts",
    "object_needs_crop",
    "variants_agree",
    "window_has_detail",
]

_K3 = np.ones((3, 3), np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def variants_agree(maps: Sequence[np.ndarray], *, min_iou: float) -> bool:
    """maps: (C, H, W) float32 each, same frame. True when there are at least two and every pair's masks (>= 0.5)
    have IoU >= ``min_iou`` in every class (empty vs empty counts as agreement)."""
    if len(maps) < 2:
        return False
    masks = [m >= 0.5 for m in maps]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            for c in range(masks[i].shape[0]):
                if _iou(masks[i][c], masks[j][c]) < min_iou:
                    return False
    return True


def _thin_parts(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool: mask pixels its opening by ``disk(radius)`` removes (parts at most 2 * radius px wide)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, disk(radius), borderType=cv2.BORDER_REPLICATE)
    return mask & (opened == 0)


def detail_map(prob: np.ndarray, *, thin_radius: int = 3) -> np.ndarray:
    """Fine detail a map shows. prob: (H, W) or (C, H, W) float32 in [0, 1]. Returns (H, W) bool, any class: the
    pixels of its mask (``>= 0.5``) that an opening by a disc of radius ``thin_radius`` removes, i.e. the parts at
    most ``2 * thin_radius`` px wide (a 3 px radius: strands, wires, vessels; the interior and the smooth edge of a
    blob are no detail). Border: replicated (an object cut by the frame is not thin there)."""
    if thin_radius < 1:
        raise ValueError(f"thin_radius must be >= 1 px, got {thin_radius=}")
    p = prob[None] if prob.ndim == 2 else prob
    out = np.zeros(p.shape[1:], bool)
    for c in range(p.shape[0]):
        out |= _thin_parts(p[c] >= 0.5, thin_radius)
    return out


def has_prompts(coarse: np.ndarray, *, min_area: int) -> bool:
    """coarse: (C, h, w) float32, the coarse map over one refiner window. True when some class has an 8-connected
    component of its mask (``>= 0.5``) with area >= ``min_area`` px, i.e. the window gets at least one prompt
    (``finedetail.prompts.prompts_from_mask`` drops smaller components)."""
    for c in range(coarse.shape[0]):
        m = (coarse[c] >= 0.5).astype(np.uint8)
        if not m.any():
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 1 and int(stats[1:, cv2.CC_STAT_AREA].max()) >= max(1, min_area):
            return True
    return False


def window_has_detail(ref: np.ndarray, *, min_px: float, detail: np.ndarray | None = None,
                      px_scale: float = 1.0) -> bool:
    """Does a lower-scale map show fine detail over one >1x refiner window? ref: (C, h, w) float32, the lower-scale
    map over the window (in the window's frame). True when the window holds at least ``min_px`` detail pixels,
    counted as ``count / px_scale`` (``px_scale`` = scale**2 turns a count in a scale-x frame into original-frame
    pixels), from ``detail`` ((h, w) bool, e.g. ``detail_map`` of the whole reference mapped into the window) or
    else ``detail_map(ref)``. ``min_px`` <= 0: always True."""
    if min_px <= 0:
        return True
    d = detail_map(ref) if detail is None else detail
    return np.count_nonzero(d) / px_scale >= min_px


def cover_windows(detail: np.ndarray, windows: Sequence[Window], *, min_px: float, overlap: int,
                  px_scale: float = 1.0) -> list[int]:
    """Greedy choice of the windows worth an encoder pass. detail: (H, W) bool in the windows' frame; windows: the
    candidates (``tiling.Window``, e.g. those with a prompt). Returns the chosen indices, ascending.

    Windows are taken in order of decreasing detail count; a window is chosen when at least ``min_px`` of its
    detail pixels (count / ``px_scale``, original-frame pixels) are not yet *served*, i.e. not where an already
    chosen window's blend weight (``tiling.blend_weights`` with ``overlap``) is >= 1/2: a stitched window owns
    the pixels more than half an overlap inside its inner edges. A window whose detail the chosen windows already
    own (the flush last window of a ``tile_grid`` overlaps its neighbour by up to a whole tile) is skipped."""
    if not windows:
        return []
    served = np.zeros(detail.shape, bool)
    counts = [np.count_nonzero(detail[w.slices]) for w in windows]
    chosen = []
    for k in sorted(range(len(windows)), key=lambda k: -counts[k]):
        w = windows[k]
        if np.count_nonzero(detail[w.slices] & ~served[w.slices]) / px_scale >= min_px:
            chosen.append(k)
            served[w.slices] |= blend_weights(w, detail.shape, overlap=overlap) >= 0.5
    return sorted(chosen)


def object_needs_crop(prob: np.ndarray, mask: np.ndarray, *, uncertain_frac: float, detail_ratio: float) -> bool:
    """prob: (H, W) float32 provisional map; mask: (H, W) bool, one object. True when the share of uncertain pixels
    (0.1 < p < 0.9) in the object's 2-px boundary band is >= ``uncertain_frac``, or when the object is detailed:
    perimeter² / area >= ``detail_ratio`` (a disc has 4π ≈ 12.6; thin or hairy outlines score far higher)."""
    area = int(mask.sum())
    if area == 0:
        return False
    grad = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, _K3)
    band = cv2.dilate(grad, _K3).astype(bool)
    uncertain = ((prob > 0.1) & (prob < 0.9) & band).sum() / max(1, band.sum())
    if uncertain >= uncertain_frac:
        return True
    perimeter = sum(cv2.arcLength(c, True) for c in
                    cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[0])
    return perimeter * perimeter / area >= detail_ratio
