"""Prompts for a promptable refiner (SAM) derived from a coarse mask (pure: numpy + OpenCV).

"Split then merge": the coarse mask is split into 8-connected components; each gets its own tight box, boundary
points (positive just inside, negative just outside) and a SAM-style low-resolution mask input.

Frames: masks are ``(H, W) bool`` in the image's frame; boxes and points use the CONTINUOUS pixel frame (pixel
``(r, c)`` covers ``[c, c+1) x [r, r+1)``), points are pixel centres ``(c + 0.5, r + 0.5)`` as ``(x, y)``.
"""

from __future__ import annotations

import cv2
import numpy as np

from finedetail.frames import LongestSide
from finedetail.types import ComponentPrompt

__all__ = ["boundary_points", "components", "mask_to_sam_logits", "prompts_from_mask", "tight_box"]

_K3 = np.ones((3, 3), np.uint8)


def components(mask: np.ndarray, *, min_area: int = 0) -> tuple[list[np.ndarray], int]:
    """Split a mask into its 8-connected components.

    mask: (H, W) bool. Returns ``(comps, n_dropped)``: one (H, W) bool mask per component with ``area >= min_area``,
    sorted by the (top row, left column) of their tight boxes (ties: label order, i.e. raster order of the
    component's first pixel); ``n_dropped`` counts the components with ``area < min_area``.
    """
    mask = _check_mask(mask)
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0 pixels, got {min_area=}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    keep.sort(key=lambda i: (stats[i, cv2.CC_STAT_TOP], stats[i, cv2.CC_STAT_LEFT], i))
    comps = []
    for i in keep:
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        comp = np.zeros(mask.shape, bool)
        comp[y : y + bh, x : x + bw] = labels[y : y + bh, x : x + bw] == i
        comps.append(comp)
    return comps, (n - 1) - len(keep)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float64 XYXY tight box of a non-empty (H, W) bool mask: ``(cmin, rmin, cmax + 1, rmax + 1)``."""
    mask = _check_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise ValueError("mask is empty; a tight box needs at least one foreground pixel")
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def boundary_points(
    mask: np.ndarray,
    *,
    k: int = 8,
    offset: float = 2.0,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` positive points just inside ``mask`` and up to ``k`` negative points just outside it.

    mask: (H, W) bool, usually one component. exclude: optional (H, W) bool of other foreground (e.g. the whole
    coarse mask); negatives never land on it. Returns ``points (P, 2) float64`` pixel centres ``(c + .5, r + .5)``
    and ``labels (P,) int32`` (1 = positive, 0 = negative), positives first. Deterministic.

    How: ``k`` anchors are spread evenly by arc length along the mask's outer contour(s). Positive candidates are
    mask pixels whose Euclidean distance to the background (image border counts as background) is within 0.5 px of
    ``min(offset, thickest)``: components thinner than ``offset`` use their ridge (maximal-distance) pixels.
    Negative candidates are pixels inside the image, outside ``mask`` and ``exclude``, whose distance to the mask
    is closest to ``offset`` (within 0.5 px of the best available). Each anchor takes the candidate nearest to the
    anchor moved 1 px along the contour's inward (positives) or outward (negatives) normal, so a 1-px line gets
    negatives on both sides; ties go to the first candidate in raster order; duplicates are dropped, hence
    "up to k" (a small blob may yield fewer). A component touching the image border gets no negatives beyond it.
    """
    mask = _check_mask(mask)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an int >= 0 (points per sign), got {k=}")
    if not offset > 0:
        raise ValueError(f"offset must be > 0 pixels, got {offset=}")
    if exclude is not None:
        exclude = _check_mask(exclude, what="exclude")
        if exclude.shape != mask.shape:
            raise ValueError(f"exclude must have the mask's shape {mask.shape}, got {exclude.shape}")
    box = tight_box(mask)
    empty = np.zeros((0, 2), np.float64), np.zeros((0,), np.int32)
    if k == 0:
        return empty

    # work in a window around the component: distances beyond offset + 2 px are never needed
    h, w = mask.shape
    pad = int(np.ceil(offset)) + 2
    x0, y0, x1, y1 = (int(v) for v in box)
    wy0, wx0, wy1, wx1 = max(0, y0 - pad), max(0, x0 - pad), min(h, y1 + pad), min(w, x1 + pad)
    m = np.ascontiguousarray(mask[wy0:wy1, wx0:wx1]).view(np.uint8)

    # inside distance with a 1-px background frame, so the image border counts as a boundary for positives
    framed = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    d_in = cv2.distanceTransform(framed, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    d_out = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)

    anchors, normals = _contour_anchors(framed, k)
    anchors -= 1  # framed -> window frame, (row, col)

    inside = m.astype(bool)
    target_in = min(float(offset), float(d_in[inside].max()))
    # anchors look 1 px along the inward / outward normal: breaks the tie between a line's two sides (and the
    # outer contour runs along both), yet keeps opposite anchors of a tiny blob from meeting in its middle
    pos = _pick(anchors - normals, inside, np.abs(d_in - target_in))

    allowed = ~inside
    if exclude is not None:
        allowed &= ~exclude[wy0:wy1, wx0:wx1]
    if allowed.any():
        neg = _pick(anchors + normals, allowed, np.abs(d_out - float(offset)))
    else:  # the component fills its surroundings: nowhere to put a negative
        neg = np.zeros((0, 2), np.int64)

    rc = np.concatenate([pos, neg]).astype(np.float64)
    points = np.stack([rc[:, 1] + wx0 + 0.5, rc[:, 0] + wy0 + 0.5], axis=1)
    labels = np.concatenate([np.ones(len(pos), np.int32), np.zeros(len(neg), np.int32)])
    return points, labels


def mask_to_sam_logits(
    prob: np.ndarray, *, long_side: int = 1024, low_res: int = 256, scale: float = 20.0
) -> np.ndarray:
    """A probability map -> SAM's low-resolution mask input: ``(low_res, low_res) float32`` logits.

    prob: (H, W) float in [0, 1] (or bool), image frame. SAM's frame (``frames.LongestSide(hw, long_side)``):
    resize so the long side is ``long_side`` (bilinear when enlarging, area averaging when shrinking so thin
    structures fade instead of vanishing), pad bottom/right with 0 to ``long_side``², area-downsample to
    ``low_res``² (``LongestSide.to_low_res``), then ``logit = scale * (p - 0.5)`` which lies in
    ``[-scale/2, scale/2]``. Padding maps to ``-scale / 2``.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty (H, W) map, got shape {prob.shape}")
    if prob.dtype == bool:
        prob = prob.astype(np.float32)
    elif prob.dtype.kind == "f":
        prob = prob.astype(np.float32, copy=False)
    else:
        raise TypeError(f"prob must be float in [0, 1] or bool, got {prob.dtype}; convert uint8 maps with from_u8")
    if long_side < low_res or low_res < 1:
        raise ValueError(f"need 1 <= low_res <= long_side, got {low_res=} {long_side=}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale=}")
    frame = LongestSide(prob.shape, long_side)
    low = frame.to_low_res(np.clip(frame.apply_image(prob), 0.0, 1.0), low_res)
    return (np.float32(scale) * (np.clip(low, 0.0, 1.0) - np.float32(0.5))).astype(np.float32)


def prompts_from_mask(
    prob_or_mask: np.ndarray,
    *,
    k: int = 8,
    offset: float = 2.0,
    min_area: int = 16,
    threshold: float = 0.5,
    logits: bool = True,
) -> tuple[list[ComponentPrompt], int]:
    """One ``ComponentPrompt`` per 8-connected component of the coarse mask.

    prob_or_mask: (H, W) bool mask, or float probability map thresholded as ``prob >= threshold``.
    Components with ``area < min_area`` are dropped and counted (second return value). Per component: its mask,
    ``tight_box``, ``boundary_points`` (negatives avoid every component of the coarse mask) and, if ``logits``,
    ``mask_to_sam_logits`` of the map restricted to the component and a 1-px ring around it (so soft edges survive
    but other components do not leak into this component's mask prompt).
    """
    arr = np.asarray(prob_or_mask)
    if arr.ndim != 2:
        raise ValueError(f"prob_or_mask must be (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        mask, prob = arr, None
    elif arr.dtype.kind == "f":
        mask, prob = arr >= threshold, arr.astype(np.float32, copy=False)
    else:
        raise TypeError(f"prob_or_mask must be bool or float in [0, 1], got {arr.dtype}; uint8 maps: use from_u8")
    comps, dropped = components(mask, min_area=min_area)
    out = []
    for comp in comps:
        points, labels = boundary_points(comp, k=k, offset=offset, exclude=mask)
        low = None
        if logits:
            if prob is None:
                low = mask_to_sam_logits(comp)
            else:
                low = mask_to_sam_logits(_component_prob(prob, comp, mask))
        out.append(ComponentPrompt(mask=comp, box=tight_box(comp), points=points, labels=labels, logits=low))
    return out, dropped


def _component_prob(prob: np.ndarray, comp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """prob kept on the component and its 1-px ring (minus other components), 0 elsewhere; (H, W) float32."""
    x0, y0, x1, y1 = (int(v) for v in tight_box(comp))
    h, w = comp.shape
    ys, xs = slice(max(0, y0 - 1), min(h, y1 + 1)), slice(max(0, x0 - 1), min(w, x1 + 1))
    c = np.ascontiguousarray(comp[ys, xs])
    ring = cv2.dilate(c.view(np.uint8), _K3).astype(bool) & ~(mask[ys, xs] & ~c)
    out = np.zeros(comp.shape, np.float32)
    out[ys, xs] = np.where(ring, prob[ys, xs], np.float32(0))
    return out


def _contour_anchors(framed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k positions spread evenly by arc length along the outer contours of a 0-framed uint8 mask, and the unit
    outward normal there. Both (k, 2) as (row, col) in the framed array's frame."""
    contours, _ = cv2.findContours(framed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts, normals, steps = [], [], []
    for c in contours:
        xy = c.reshape(-1, 2).astype(np.float64)
        n = len(xy)
        s = 2 if n > 4 else 1
        tangent = np.roll(xy, -s, axis=0) - np.roll(xy, s, axis=0)
        # shoelace sign gives the orientation (y points down); outward is the tangent turned towards the outside
        area2 = float(np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1]))
        sign = 1.0 if area2 >= 0 else -1.0
        normal = sign * np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)  # (x, y)
        length = np.linalg.norm(normal, axis=1, keepdims=True)
        normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)
        pts.append(xy[:, ::-1])
        normals.append(normal[:, ::-1])
        steps.append(np.linalg.norm(np.roll(xy, -1, axis=0) - xy, axis=1))
    pts_a, normals_a, step = np.concatenate(pts), np.concatenate(normals), np.concatenate(steps)
    cum = np.concatenate([[0.0], np.cumsum(step)])
    if cum[-1] == 0:  # a single pixel: one contour point; look in k directions around it
        angle = 2 * np.pi * np.arange(k) / k
        return np.repeat(pts_a[:1], k, axis=0), np.stack([-np.cos(angle), np.sin(angle)], axis=1)
    targets = (np.arange(k) + 0.5) * cum[-1] / k
    idx = np.clip(np.searchsorted(cum, targets, side="right") - 1, 0, len(pts_a) - 1)
    return pts_a[idx], normals_a[idx]


def _pick(anchors: np.ndarray, allowed: np.ndarray, deviation: np.ndarray) -> np.ndarray:
    """For each anchor the nearest allowed pixel whose deviation is within 0.5 of the smallest; (n, 2) (row, col)."""
    best = float(deviation[allowed].min())
    rows, cols = np.nonzero(allowed & (deviation <= best + 0.5))
    cand = np.stack([rows, cols], axis=1)
    d2 = ((anchors[:, None, :] - cand[None, :, :]) ** 2).sum(axis=2)
    choice = d2.argmin(axis=1)  # ties -> first candidate in raster order
    _, first = np.unique(choice, return_index=True)
    return cand[choice[np.sort(first)]]


def _check_mask(mask: np.ndarray, *, what: str = "mask") -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != bool:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"{what} must be (H, W) bool, got {got}; threshold first (prob >= 0.5)")
    return np.ascontiguousarray(mask)
