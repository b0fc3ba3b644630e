"""Segmentation quality metrics that reward fine detail (pure: numpy + OpenCV + scikit-image).

All functions take ``pred`` and ``gt`` as ``(H, W) bool`` masks of the same size (same frame) and return a Python
float in ``[0, 1]``. Empty conventions, unless a docstring says otherwise: when a score's denominator is empty on
BOTH sides (nothing to find and nothing found) the score is 1.0; when only one side is empty it is 0.0. Where a
reference implementation returns NaN for such a case (0 / 0), the docstring says so.

Metrics that match a reference implementation (golden values from the reference's own code in
``tests/test_metrics.py``): ``boundary_iou`` (bowenc0221/boundary-iou-api), ``mba`` (hkchengrex/CascadePSP),
``davis_f`` (davisvideochallenge/davis2017-evaluation ``f_measure``), ``cldice_scores`` and its parts ``cldice`` /
``topology_precision`` / ``topology_sensitivity`` (jocpae/clDice ``cldice_metric``). Our own definitions:
``boundary_f_tol``, ``tolerance_f``, ``thin_recall``, ``iou`` and the ``pixel_*`` scores.

Pixel-count metrics (``iou``, ``pixel_*``, ``thin_recall``, ``tolerance_f``) take an optional ``valid`` mask
(``(H, W) bool``, e.g. DRIVE's field of view): only pixels inside it are counted; both masks are ANDed with it.
"""

from __future__ import annotations

import math
from typing import Iterable

import cv2
import numpy as np
from skimage.morphology import skeletonize

__all__ = [
    "boundary_f_tol",
    "boundary_iou",
    "boundary_region",
    "cldice",
    "cldice_scores",
    "davis_f",
    "iou",
    "mba",
    "mba_radii",
    "pixel_counts",
    "pixel_f1",
    "pixel_precision",
    "pixel_recall",
    "thin_recall",
    "tolerance_f",
    "topology_precision",
    "topology_sensitivity",
]

_K3 = np.ones((3, 3), np.uint8)


# ------------------------------------------------------------------------------------------------ pixel counts


def pixel_counts(pred: np.ndarray, gt: np.ndarray, *, valid: np.ndarray | None = None) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` pixel counts inside ``valid`` (everywhere when None), for dataset-level (micro) averages."""
    pred, gt = _check_pair(pred, gt)
    pred, gt = _restrict(valid, pred, gt)
    tp = np.count_nonzero(pred & gt)
    return tp, np.count_nonzero(pred) - tp, np.count_nonzero(gt) - tp


def iou(pred: np.ndarray, gt: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """``tp / (tp + fp + fn)``; 1.0 when both are empty (inside ``valid``)."""
    tp, fp, fn = pixel_counts(pred, gt, valid=valid)
    return _ratio(tp, tp + fp + fn)


def pixel_precision(pred: np.ndarray, gt: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """``tp / |pred|``; 1.0 when pred and gt are both empty, 0.0 when only pred is (inside ``valid``)."""
    tp, fp, fn = pixel_counts(pred, gt, valid=valid)
    return _ratio(tp, tp + fp, other=tp + fn)


def pixel_recall(pred: np.ndarray, gt: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """``tp / |gt|``; 1.0 when pred and gt are both empty, 0.0 when only gt is (inside ``valid``)."""
    tp, fp, fn = pixel_counts(pred, gt, valid=valid)
    return _ratio(tp, tp + fn, other=tp + fp)


def pixel_f1(pred: np.ndarray, gt: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Pixel F1 (= Dice) ``2 tp / (|pred| + |gt|)``; 1.0 when both are empty (inside ``valid``)."""
    tp, fp, fn = pixel_counts(pred, gt, valid=valid)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def thin_recall(pred: np.ndarray, skeleton: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Fraction of ``skeleton`` pixels (centre lines of thin structures) that ``pred`` covers; 1.0 if no skeleton."""
    pred, skeleton = _check_pair(pred, skeleton, names=("pred", "skeleton"))
    pred, skeleton = _restrict(valid, pred, skeleton)
    return _ratio(np.count_nonzero(pred & skeleton), np.count_nonzero(skeleton))


# ------------------------------------------------------------------------------------------------ Boundary IoU


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
    d = max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))  # the reference's np.sqrt(h**2 + w**2)
    pb = boundary_region(pred, width=d)
    gb = boundary_region(gt, width=d)
    return _ratio(np.count_nonzero(pb & gb), np.count_nonzero(pb | gb))


# ------------------------------------------------------------------------------------------------ boundary F


def davis_f(pred: np.ndarray, gt: np.ndarray, *, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure: ``f_measure`` of davisvideochallenge/davis2017-evaluation ``davis2017/metrics.py``.

    Boundary maps are ``seg2bmap``'s (D. Martin, BSDS): a pixel (foreground or background) is boundary when it
    differs from its east, south or south-east neighbour, so the map sits half a pixel towards the origin of the
    true contour; in the last row only the east neighbour counts, in the last column only the south one, the
    bottom-right pixel never: the image border is never a boundary (a full or empty mask has none). The tolerance is
    ``r = ceil(bound_th * sqrt(H**2 + W**2))`` pixels when ``bound_th < 1``, else ``bound_th`` pixels (an integer);
    a boundary pixel matches when a pixel of the other boundary lies in the disk ``dx**2 + dy**2 <= r**2`` around
    it. Precision = matched pred boundary pixels / pred boundary pixels, recall likewise for gt; F = ``2PR/(P+R)``,
    0.0 when P + R == 0. Empty boundaries (DAVIS's own rule): both empty -> 1.0; exactly one empty -> 0.0 (DAVIS
    sets P, R to 1, 0 or 0, 1).
    """
    pred, gt = _check_pair(pred, gt)
    if bound_th <= 0 or (bound_th >= 1 and bound_th != int(bound_th)):
        raise ValueError(
            f"bound_th must be a fraction of the diagonal in (0, 1) or a whole number of pixels >= 1, got {bound_th=}"
        )
    h, w = gt.shape
    radius = int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.sqrt(h * h + w * w))
    return _match_f(_seg2bmap(pred), _seg2bmap(gt), radius=radius)


def boundary_f_tol(pred: np.ndarray, gt: np.ndarray, *, tol: float = 2) -> float:
    """Boundary F-measure with a fixed distance tolerance in pixels (our definition; NOT DAVIS's F, see ``davis_f``).

    Boundary pixels of a mask are its pixels with a 4-neighbour outside the mask; the image border is NOT a
    boundary (outside the image counts as "same as the edge pixel"). Precision = fraction of pred boundary pixels
    whose Euclidean distance (pixel centres) to the nearest gt boundary pixel is <= ``tol``; recall likewise from
    gt to pred. Returns ``2PR / (P + R)`` (0.0 when P + R == 0). Both boundaries empty -> 1.0; exactly one
    empty -> 0.0.
    """
    pred, gt = _check_pair(pred, gt)
    _check_tol(tol)
    return _match_f(_edge_pixels(pred), _edge_pixels(gt), radius=tol)


def tolerance_f(pred: np.ndarray, gt: np.ndarray, *, tol: float = 2, valid: np.ndarray | None = None) -> float:
    """Centre-line F with a distance tolerance, for thin labels (power lines, cracks, vessels 1-2 px wide).

    Both masks are thinned to 1-px skeletons with ``skimage.morphology.skeletonize`` (Zhang-Suen thinning, the
    same as ``cldice``), then restricted to ``valid``. Precision = fraction of pred skeleton pixels within
    Euclidean distance ``tol`` (pixel centres, ``dx**2 + dy**2 <= tol**2``) of some gt skeleton pixel; recall likewise
    from gt to pred; F = ``2PR / (P + R)`` (0.0 when P + R == 0). Both skeletons empty -> 1.0; exactly one empty
    -> 0.0. Matching is many-to-one (any pixel within ``tol`` counts), so this is NOT BSDS's ODS/OIS F, which
    pairs pixels one-to-one by bipartite matching (with the same skeletons and tolerance that can only lower P and R).
    """
    pred, gt = _check_pair(pred, gt)
    _check_tol(tol)
    sp, sg = _restrict(valid, skeletonize(pred), skeletonize(gt))
    return _match_f(sp, sg, radius=tol)


# ------------------------------------------------------------------------------------------------ mBA


def mba_radii(hw: tuple[int, int], *, steps: int = 5) -> list[int]:
    """The band radii ``mba`` uses by default: CascadePSP's ``compute_boundary_acc`` (``util/compute_boundary_acc.py``).

    ``R = (h + w) / 300``; ``r_i = 1 + int((R - 1) / steps * i)`` for ``i = 0 .. steps-1``, evaluated in float64 in
    exactly that order (divide, then multiply: ``(R - 1) * i / steps`` rounds differently, e.g. h + w = 3800 gives
    r_3 = 7 here and 8 there); ``int`` truncates toward zero, so sizes under 600 px in total give all 1.
    E.g. 1024x768 -> R = 5.97 -> [1, 1, 2, 3, 4].
    """
    h, w = hw
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps=}")
    max_radius = (w + h) / 300
    return [1 + int((max_radius - 1) / steps * i) for i in range(steps)]


def mba(pred: np.ndarray, gt: np.ndarray, *, radii: Iterable[int] | None = None) -> float:
    """Mean boundary accuracy (CascadePSP, Cheng et al., CVPR 2020): ``compute_boundary_acc`` in hkchengrex/CascadePSP.

    For each radius ``r``, the band is the morphological gradient of ``gt`` (dilation minus erosion, OpenCV's
    default border: outside the image is ignored, so the border is not a contour) with the elliptical
    ``(2r+1) x (2r+1)`` kernel ``cv2.getStructuringElement(cv2.MORPH_ELLIPSE, ...)``; its score is the pixel accuracy
    ``mean(pred == gt)`` inside the band. mBA = ``sum(scores) / len(radii)``. ``radii`` defaults to
    ``mba_radii(gt.shape)`` (the reference's 5 steps). Empty band (only when ``gt`` is all False or all True): the
    reference divides 0 by 0 (NaN); here that radius scores 1.0 if ``pred == gt`` everywhere, else 0.0, so two
    empty masks score 1.0.
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
    # the reference's sum() / len (float64 adds left to right), not np.mean's pairwise sum
    return float(sum(accs) / len(accs))


# ------------------------------------------------------------------------------------------------ clDice


def cldice_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """``(Tprec, Tsens, clDice)`` of Shit et al., CVPR 2021, from ONE skeletonization of each mask.

    ``Tprec = |S(pred) & gt| / |S(pred)|``, ``Tsens = |S(gt) & pred| / |S(gt)|``, ``clDice = 2 Tprec Tsens /
    (Tprec + Tsens)``, S = ``skimage.morphology.skeletonize`` (Zhang-Suen thinning; its cost grows with the
    thickness of the mask, ~10 s for a 700 px radius disk), as ``clDice(v_p, v_l)`` in jocpae/clDice
    ``cldice_metric/cldice.py`` (2-D). The reference names its variables the other way round (its ``tprec`` is the
    paper's Tsens); clDice is symmetric and computed in the reference's float order, so it is bit-identical.
    Empty (S(m) is empty only when m is): both masks empty -> (1.0, 1.0, 1.0); exactly one empty -> all 0.0;
    Tprec + Tsens == 0 -> clDice 0.0. The reference returns NaN in all these cases (0 / 0).
    """
    pred, gt = _check_pair(pred, gt)
    sp, sg = skeletonize(pred), skeletonize(gt)
    n_p, n_g = np.count_nonzero(sp), np.count_nonzero(sg)
    t_prec = _ratio(np.count_nonzero(sp & gt), n_p, other=n_g)
    t_sens = _ratio(np.count_nonzero(sg & pred), n_g, other=n_p)
    if t_prec + t_sens == 0:
        return t_prec, t_sens, 0.0
    return t_prec, t_sens, 2 * t_sens * t_prec / (t_sens + t_prec)


def topology_precision(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice's Tprec ``|S(pred) & gt| / |S(pred)|`` (see ``cldice_scores``; pred empty: 1.0 if gt is, else 0.0)."""
    return cldice_scores(pred, gt)[0]


def topology_sensitivity(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice's Tsens ``|S(gt) & pred| / |S(gt)|`` (see ``cldice_scores``; gt empty: 1.0 if pred is, else 0.0)."""
    return cldice_scores(pred, gt)[1]


def cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice (see ``cldice_scores``, which also returns Tprec and Tsens for the same skeletonization cost)."""
    return cldice_scores(pred, gt)[2]


# ------------------------------------------------------------------------------------------------ helpers


def _ratio(num: int, den: int, *, other: int = 0) -> float:
    """``num / den``; when ``den == 0``: 1.0 if ``other == 0`` too (both sides empty), else 0.0."""
    if den == 0:
        return 1.0 if other == 0 else 0.0
    return num / den


def _match_f(a: np.ndarray, b: np.ndarray, *, radius: float) -> float:
    """F of point sets ``a`` (predicted) and ``b`` (true) matched many-to-one within Euclidean ``radius``.

    Precision = |a within radius of b| / |a|, recall = |b within radius of a| / |b|, F = ``2PR / (P + R)``
    (0.0 when P + R == 0); both sets empty -> 1.0, exactly one empty -> 0.0.
    """
    n_a, n_b = np.count_nonzero(a), np.count_nonzero(b)
    if n_a == 0 or n_b == 0:
        return 1.0 if n_a == n_b else 0.0
    disk = _disk(radius)
    near_b = cv2.dilate(b.view(np.uint8), disk) > 0
    near_a = cv2.dilate(a.view(np.uint8), disk) > 0
    precision = np.count_nonzero(a & near_b) / n_a
    recall = np.count_nonzero(b & near_a) / n_b
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _disk(radius: float) -> np.ndarray:
    """uint8 kernel of the offsets with ``dx**2 + dy**2 <= radius**2`` (centred; = skimage's ``disk`` for whole r)."""
    r = math.floor(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def _seg2bmap(mask: np.ndarray) -> np.ndarray:
    """BSDS / DAVIS ``seg2bmap`` boundary map of an (H, W) bool mask (rules in ``davis_f``'s docstring)."""
    inner = mask[:-1, :-1]
    bmap = np.zeros_like(mask)
    bmap[:-1, :-1] = (inner ^ mask[:-1, 1:]) | (inner ^ mask[1:, :-1]) | (inner ^ mask[1:, 1:])
    bmap[-1, :-1] = mask[-1, :-1] ^ mask[-1, 1:]  # last row: east only
    bmap[:-1, -1] = mask[:-1, -1] ^ mask[1:, -1]  # last column: south only
    return bmap


def _edge_pixels(mask: np.ndarray) -> np.ndarray:
    # 4-neighbour erosion with a replicated border: only real fg/bg transitions count
    k4 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    eroded = cv2.erode(mask.view(np.uint8), k4, borderType=cv2.BORDER_REPLICATE)
    return mask & (eroded == 0)


def _check_tol(tol: float) -> None:
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0 pixels, got {tol=}")


def _restrict(valid: np.ndarray | None, *masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """``masks`` ANDed with the ``valid`` region (unchanged when None): the one place scoring regions are applied."""
    if valid is None:
        return masks
    valid = _check_mask(valid, what="valid")
    if valid.shape != masks[0].shape:
        raise ValueError(
            f"valid must have the masks' (H, W), got {valid.shape} and {masks[0].shape}; "
            f"pass the region to score (e.g. the field-of-view mask) in the ground truth's frame"
        )
    return tuple(m & valid for m in masks)


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
