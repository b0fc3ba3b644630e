"""Selective compute (DESIGN step 9): decide where another encoder pass is worth it (pure: numpy + OpenCV).

The cost unit is encoder passes per image. Three decisions, each a pure function of maps already computed:

- ``variants_agree``: stop running TTA views once the views already run agree (pairwise IoU of their masks);
- ``window_has_detail``: run a 2x tile only where the 1x map has fine detail (a boundary or uncertain pixels);
- ``object_needs_crop``: zoom into an object only when its boundary is uncertain or detailed.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["object_needs_crop", "variants_agree", "window_has_detail"]


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


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)


def window_has_detail(ref: np.ndarray, *, min_frac: float) -> bool:
    """ref: (C, h, w) float32, the lower-scale map over one window. True when the fraction of the window's pixels
    that are on a mask boundary or uncertain (0.1 < p < 0.9) is >= ``min_frac`` in some class. A window that is all
    background or all object interior has nothing a finer look could add."""
    for c in range(ref.shape[0]):
        p = ref[c]
        detail = _boundary(p >= 0.5) | ((p > 0.1) & (p < 0.9))
        if detail.mean() >= min_frac and detail.any():
            return True
    return False


def object_needs_crop(prob: np.ndarray, mask: np.ndarray, *, uncertain_frac: float, detail_ratio: float) -> bool:
    """prob: (H, W) float32 provisional map; mask: (H, W) bool, one object. True when the share of uncertain pixels
    (0.1 < p < 0.9) in the object's 2-px boundary band is >= ``uncertain_frac``, or when the object is detailed:
    perimeter² / area >= ``detail_ratio`` (a disc has 4π ≈ 12.6; thin or hairy outlines score far higher)."""
    area = int(mask.sum())
    if area == 0:
        return False
    band = cv2.dilate(_boundary(mask).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    uncertain = ((prob > 0.1) & (prob < 0.9) & band).sum() / max(1, band.sum())
    if uncertain >= uncertain_frac:
        return True
    perimeter = sum(cv2.arcLength(c, True) for c in
                    cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[0])
    return perimeter * perimeter / area >= detail_ratio
