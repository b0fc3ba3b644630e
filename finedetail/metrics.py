"""Segmentation quality metrics that reward fine detail (pure: numpy + OpenCV).

All functions take ``pred`` and ``gt`` as ``(H, W) bool`` masks of the same size (same frame) and return a Python
float in ``[0, 1]``. Empty-vs-empty conventions: when a score's denominator is empty on BOTH sides (nothing to find
and nothing found) the score is 1.0; when only one side is empty it is 0.0. Each docstring states its exact rule.
"""

from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

__all__ = ["boundary_f", "boundary_iou", "boundary_region", "iou", "mba", "mba_radii", "thin_recall"]

_K3 = np.ones((3, 3), np.uint8)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|pred & gt| / |pred | gt|; 1.0 when both are empty."""
    pred, gt = _check_pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_region(mask: np.ndarray, *, width: int) -> np.ndarray:
    """Inner boundary band of ``mask``: mask pixels within Chebyshev distance ``width`` of a background pixel.

    Computed as ``mask & ~erode(mask, 3x3, iterations=width)`` with the image border padded by BACKGROUND, so a
    mask touching the border has a band along it (the convention of Cheng et al.'s reference implementation).
    (H, W) bool -> (H, W) bool.
    """
    mask = _check_mask(mask, what="mask")
    if width < 1:
        raise ValueError(f"width must be >= 1 pixel, got {width=}")
    eroded = cv2.erode(
        mask.view(np.uint8), _K3, iterations=int(width), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return mask & (eroded == 0)


def boundary_iou(pred: np.ndarray, gt: np.ndarray, *, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021, "Boundary IoU: Improving Object-Centric Image Segmentation Evaluation").

    ``d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))``; ``P_d`` / ``G_d`` are the mask pixels within distance
    ``d`` of the mask's contour (``boundary_region(m, width=d)``: the mask minus its erosion, border counted as
    contour); the score is ``|P_d & G_d| / |P_d | G_d|``. 1.0 when both bands are empty (both masks empty).
    """
    pred, gt = _check_pair(pred, gt)
    if dilation_ratio <= 0:
        raise ValueError(f"dilation_ratio must be > 0, got {dilation_ratio=}")
    h, w = gt.shape
    d = max(1, int(round(dilation_ratio * float(np.hypot(h, w)))))
    pb = boundary_region(pred, width=d)
    gb = boundary_region(gt, width=d)
    union = np.count_nonzero(pb | gb)
    if union == 0:
        return 1.0
    return np.count_nonzero(pb & gb) / union


def boundary_f(pred: np.ndarray, gt: np.ndarray, *, tol: float = 2) -> float:
    """Boundary F-measure with a distance tolerance (the DAVIS / BSDS "F" idea).

    Boundary pixels of a mask are its pixels with a 4-neighbour outside the mask; the image border is NOT a
    boundary (outside the image counts as "same as the edge pixel"). Precision = fraction of pred boundary pixels
    whose Euclidean distance (pixel centres) to the nearest gt boundary pixel is <= ``tol``; recall likewise from
    gt to pred. Returns ``2PR / (P + R)`` (0.0 when P + R == 0). Both boundaries empty -> 1.0; exactly one
    empty -> 0.0.
    """
    pred, gt = _check_pair(pred, gt)
    if tol < 0:
        raise ValueError(f"tol must be >= 0 pixels, got {tol=}")
    pb, gb = _edge_pixels(pred), _edge_pixels(gt)
    n_p, n_g = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    dist_to_g = _distance_to(gb)
    dist_to_p = _distance_to(pb)
    precision = np.count_nonzero(dist_to_g[pb] <= tol) / n_p
    recall = np.count_nonzero(dist_to_p[gb] <= tol) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mba_radii(hw: tuple[int, int], *, steps: int = 5) -> list[int]:
    """The band radii ``mba`` uses by default, derived from the image size (CascadePSP-style evaluation).

    ``R = (h + w) / 300``; ``r_i = max(1, 1 + int((R - 1) * i / steps))`` for ``i = 0 .. steps-1`` (``int``
    truncates toward zero). E.g. 1024x768 -> R = 5.97 -> [1, 1, 2, 3, 4]; anything under 600 px total -> all 1.
    """
    h, w = hw
    big_r = (h + w) / 300.0
    return [max(1, 1 + int((big_r - 1) * i / steps)) for i in range(steps)]


def mba(pred: np.ndarray, gt: np.ndarray, *, radii: Iterable[int] | None = None) -> float:
    """Mean boundary accuracy: mean over radii ``r`` of the pixel accuracy ``mean(pred == gt)`` inside the band
    around the GT boundary of radius ``r``.

    The band is the morphological gradient of ``gt`` (dilation minus erosion) with an elliptical
    ``(2r+1) x (2r+1)`` kernel (``cv2.MORPH_ELLIPSE``): pixels on either side within about ``r`` of the contour;
    outside the image is ignored (the border is not a contour). ``radii`` defaults to ``mba_radii(gt.shape)``.
    When the band is empty (gt empty or full) that radius scores 1.0 if ``pred == gt`` everywhere, else 0.0.
    """
    pred, gt = _check_pair(pred, gt)
    radii = mba_radii(gt.shape) if radii is None else [int(r) for r in radii]
    if not radii or any(r < 1 for r in radii):
        raise ValueError(f"radii must be a non-empty list of ints >= 1, got {radii=}")
    g8 = gt.view(np.uint8)
    correct = pred == gt
    accs = []
    for r in radii:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        band = cv2.morphologyEx(g8, cv2.MORPH_GRADIENT, kernel) > 0
        n = np.count_nonzero(band)
        if n == 0:
            accs.append(1.0 if bool(correct.all()) else 0.0)
        else:
            accs.append(np.count_nonzero(correct & band) / n)
    return float(np.mean(accs))


def thin_recall(pred: np.ndarray, skeleton: np.ndarray) -> float:
    """Fraction of ``skeleton`` pixels (centre lines of thin structures) that ``pred`` covers; 1.0 if no skeleton."""
    pred, skeleton = _check_pair(pred, skeleton, names=("pred", "skeleton"))
    n = np.count_nonzero(skeleton)
    if n == 0:
        return 1.0
    return np.count_nonzero(pred & skeleton) / n


def _edge_pixels(mask: np.ndarray) -> np.ndarray:
    # 4-neighbour erosion with a replicated border: only real fg/bg transitions count
    k4 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    eroded = cv2.erode(mask.view(np.uint8), k4, borderType=cv2.BORDER_REPLICATE)
    return mask & (eroded == 0)


def _distance_to(points: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from every pixel centre to the nearest True pixel of ``points`` (non-empty)."""
    return cv2.distanceTransform((~points).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _check_mask(mask: np.ndarray, *, what: str) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != bool:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"{what} must be an (H, W) bool mask, got {got}; threshold probabilities first (prob >= 0.5)")
    return np.ascontiguousarray(mask)


def _check_pair(
    a: np.ndarray, b: np.ndarray, *, names: tuple[str, str] = ("pred", "gt")
) -> tuple[np.ndarray, np.ndarray]:
    a = _check_mask(a, what=names[0])
    b = _check_mask(b, what=names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same (H, W), got {a.shape} and {b.shape}; "
            f"map the prediction back to the ground truth's frame first"
        )
    return a, b
