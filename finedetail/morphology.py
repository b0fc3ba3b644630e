"""Thin-safe binary morphology: hole filling and island removal by area, closing, plain opening and opening by
reconstruction, with 1-3 px discs (pure numpy + OpenCV).

Masks are ``(H, W) bool``; every function returns a new mask. ``finedetail.postprocess`` runs them in one fixed
order; ``finedetail.blockmorph`` runs the same order block by block.

Morphology conventions: foreground components are 8-connected, background components (holes) 4-connected (the dual
pair, so a diagonal 1-px line of foreground closes a hole). A structuring element of ``size`` s is the digital disc
of diameter 2s + 1 (pixel centres within s + 0.5 px: ``x**2 + y**2 <= (s + 0.5)**2``): s = 1 is the 3x3 square (so a
closing bridges 1-px gaps in 1-px lines, diagonal ones too), s = 2 the 5x5 square minus its corners. Borders: a
closing treats outside the image as background (it never glues objects to the frame); the erosion of an opening
treats it as foreground (OpenCV's default), so objects cut by the frame are not eaten from that side. Closing only
adds pixels, openings only remove them.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "close",
    "disk",
    "drop_components",
    "fill_holes",
    "open_by_reconstruction",
    "open_plain",
    "remove_islands",
]


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 2:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"mask must be (H, W) bool, got {got}; threshold first (prob >= 0.5)")
    return np.ascontiguousarray(mask)


def _check_nonneg_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {name}={value!r}")


def _u8(mask: np.ndarray) -> np.ndarray:
    return mask.view(np.uint8)


def disk(size: int) -> np.ndarray:
    """Digital disc of diameter 2 * size + 1: pixel centres within size + 0.5 of the centre."""
    y, x = np.mgrid[-size : size + 1, -size : size + 1]
    return (4 * (x * x + y * y) <= (2 * size + 1) ** 2).astype(np.uint8)


def _labels(mask: np.ndarray, connectivity: int) -> tuple[int, np.ndarray]:
    """-> (n labels incl. 0, (H, W) labels), uint16 when they fit (cheaper to count and compare)."""
    # Without stats: OpenCV's stats pass costs ~6x the labelling itself; areas come from a histogram instead.
    n, labels = cv2.connectedComponents(_u8(mask), connectivity=connectivity, ltype=cv2.CV_32S)
    return n, (labels.astype(np.uint16) if n <= 1 << 16 else labels)


def _counts(labels: np.ndarray, n: int, where: np.ndarray | None = None) -> np.ndarray:
    """Pixels per label (optionally only where ``where`` is true): (n,) int64."""
    if labels.dtype == np.uint16:
        # calcHist counts in int and returns float32: exact below 2**24 px per label; above, the count stays
        # far above any sensible area threshold, which is all it is compared with.
        hist = cv2.calcHist([labels], [0], None if where is None else _u8(where), [n], [0, n])
        return np.rint(hist.reshape(-1)).astype(np.int64)
    return np.bincount((labels if where is None else labels[where]).ravel(), minlength=n)


def _hit(labels: np.ndarray, n: int, ids: np.ndarray) -> np.ndarray:
    """(H, W) bool, True where labels is one of ids."""
    if ids.size <= 8:  # a few full-image compares beat one gather through a lookup table
        hit = labels == ids[0]
        for i in ids[1:]:
            hit |= labels == i
        return hit
    lut = np.zeros(n, bool)
    lut[ids] = True
    # In row blocks: np.take first widens the indices to intp (8 bytes each); per block that copy stays in cache.
    hit = np.empty(labels.shape, bool)
    rows = max(1, (1 << 16) // max(labels.shape[1], 1))
    for y0 in range(0, labels.shape[0], rows):
        np.take(lut, labels[y0 : y0 + rows], out=hit[y0 : y0 + rows])
    return hit


def fill_holes(mask: np.ndarray, *, max_area: int) -> np.ndarray:
    """Fill holes of area <= max_area pixels. (H, W) bool -> new (H, W) bool.

    A hole is a 4-connected background component that does not touch the image border (background touching the
    border is outside, whatever its size). ``max_area=0`` fills nothing.
    """
    mask = _check_mask(mask)
    _check_nonneg_int(max_area, "max_area")
    if max_area == 0 or mask.size == 0:
        return mask.copy()
    n, labels = _labels(~mask, 4)
    fill = _counts(labels, n) <= max_area
    fill[0] = False  # label 0 is the foreground
    fill[labels[[0, -1], :]] = False
    fill[labels[:, [0, -1]]] = False
    ids = np.flatnonzero(fill)
    if ids.size == 0:
        return mask.copy()
    return np.logical_or(mask, _hit(labels, n, ids))


def drop_components(mask: np.ndarray, *, max_area: int, erode_size: int) -> np.ndarray:
    """Drop the 8-connected components with area <= max_area, and (erode_size > 0) those that vanish under erosion
    by the disc of diameter 2 * erode_size + 1. Both decide about whole components: one labelling serves both."""
    if mask.size == 0 or (max_area == 0 and erode_size == 0):
        return mask.copy()
    n, labels = _labels(mask, 8)
    drop = _counts(labels, n) <= max_area
    if erode_size:
        eroded = cv2.erode(_u8(mask), disk(erode_size))
        # Labels outside the eroded mask set to 0: every label > 0 counts as with the mask (label 0 is never
        # dropped), and an unmasked histogram is ~3x faster than a masked one.
        drop |= _counts(np.multiply(labels, eroded, dtype=labels.dtype), n) == 0
    drop[0] = False  # label 0 is the background
    ids = np.flatnonzero(drop)
    if ids.size == 0:
        return mask.copy()
    hit = _hit(labels, n, ids)
    return np.logical_and(mask, np.logical_not(hit, out=hit), out=hit)


def remove_islands(mask: np.ndarray, *, max_area: int) -> np.ndarray:
    """Remove 8-connected foreground components of area <= max_area pixels. (H, W) bool -> new (H, W) bool.

    ``max_area=0`` removes nothing. Thin parts attached to a larger component are never touched.
    """
    mask = _check_mask(mask)
    _check_nonneg_int(max_area, "max_area")
    return drop_components(mask, max_area=max_area, erode_size=0)


def close(mask: np.ndarray, *, size: int) -> np.ndarray:
    """Morphological closing (dilate, then erode) with the disc of diameter 2 * size + 1 (1 = 3x3 square).

    (H, W) bool -> new (H, W) bool, a superset of ``mask``. Bridges gaps of up to 2 * size px. Keep size
    in 1..3: larger discs merge neighbouring thin strands (e.g. fur). ``size=0`` returns a copy.
    """
    mask = _check_mask(mask)
    _check_nonneg_int(size, "size")
    if size == 0:
        return mask.copy()
    # Zero padding = the plane outside the image is empty; cv2's own border would count it as foreground for the
    # erosion and glue anything within `size` px of the frame to it.
    padded = cv2.copyMakeBorder(_u8(mask), size, size, size, size, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disk(size))
    return np.ascontiguousarray(closed[size:-size, size:-size]).view(bool)


def open_plain(mask: np.ndarray, *, size: int) -> np.ndarray:
    """Plain morphological opening (erode, then dilate) with the disc of diameter 2 * size + 1.

    (H, W) bool -> new (H, W) bool, a subset of ``mask``. Erases every structure narrower than the disc, so a
    1-px wire disappears even when attached to a large object; prefer ``open_by_reconstruction``.
    """
    mask = _check_mask(mask)
    _check_nonneg_int(size, "size")
    if size == 0:
        return mask.copy()
    return cv2.morphologyEx(_u8(mask), cv2.MORPH_OPEN, disk(size)).view(bool)


def open_by_reconstruction(mask: np.ndarray, *, size: int) -> np.ndarray:
    """Opening by reconstruction: keep every 8-connected component of ``mask`` that keeps at least one pixel after
    erosion by the disc of diameter 2 * size + 1 (1 = 3x3 square), and keep it whole.

    (H, W) bool -> new (H, W) bool, a subset of ``mask``. Equal to eroding and then reconstructing by geodesic
    dilation (3x3 square) inside ``mask`` until stable, computed in one pass with connected components. Removes
    specks and free-standing debris thinner than the disc (including a free-standing 1-px wire!); thin parts
    attached to a body that survives erosion are kept intact. ``size=0`` returns a copy.
    """
    mask = _check_mask(mask)
    _check_nonneg_int(size, "size")
    return drop_components(mask, max_area=0, erode_size=size)
