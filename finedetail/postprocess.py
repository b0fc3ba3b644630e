"""Edge-aware post-processing of probability maps (pure: numpy + OpenCV; optional pydensecrf).

This is the CPU "fuse" stage's library half: a guided filter snaps the soft map to the image's edges, a threshold
makes it a mask, and gentle morphology cleans the mask without erasing thin structures (fur, wires, vessels).

Frames and dtypes:

- image / guide: ``(H, W, 3) uint8 RGB`` (``uint8`` guides are divided by 255) or float in ``[0, 1]``;
  a grey ``(H, W)`` guide works too.
- probability map: ``(H, W) float32`` in ``[0, 1]``, same frame as the image.
- mask: ``(H, W) bool``.

Guided filter conventions (checked against ``cv2.ximgproc.guidedFilter`` in tests/test_postprocess.py):

- Border: every box mean uses OpenCV's ``BORDER_REFLECT`` (``fedcba|abcdefgh|hgfedcb``, the edge pixel repeated).
  That is what ``cv2.ximgproc.guidedFilter`` uses internally (found by experiment with OpenCV 5.0.0: with
  ``BORDER_REFLECT_101`` the border band differs by up to 0.19, with ``BORDER_REFLECT`` by < 3e-5).
- ``eps`` is in units of a ``[0, 1]`` guide. OpenCV applies its ``eps`` to the guide's own values, so a ``uint8``
  guide handed to OpenCV needs ``eps * 255**2`` to mean the same thing; here a ``uint8`` guide is scaled to
  ``[0, 1]`` first and ``eps`` is used as given.
- No clipping: the output can leave ``[0, 1]`` by a little near strong edges (OpenCV does not clip either);
  ``postprocess`` clips.
- Agreement: max |ours - OpenCV| < 4e-5 for uint8 and float guides (tests require <= 1e-3), and < 3e-6 against a
  float64 per-pixel reference. One OpenCV quirk: with a float32 COLOUR guide and eps <= 1e-4 OpenCV's own result
  is off by up to 0.07 on a few near-singular pixels (its uint8 path and the float64 reference agree with us).

Morphology conventions: foreground components are 8-connected, background components (holes) 4-connected (the dual
pair, so a diagonal 1-px line of foreground closes a hole). A structuring element of ``size`` s is the digital disc
of diameter 2s + 1 (pixel centres within s + 0.5 px: ``x**2 + y**2 <= (s + 0.5)**2``): s = 1 is the 3x3 square (so a
closing bridges 1-px gaps in 1-px lines, diagonal ones too), s = 2 the 5x5 square minus its corners. Borders: a
closing treats outside the image as background (it never glues objects to the frame); the erosion of an opening
treats it as foreground (OpenCV's default), so objects cut by the frame are not eaten from that side. Closing only
adds pixels, openings only remove them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from finedetail.knobs import knob
from finedetail.types import check_image, check_prob

__all__ = [
    "OPENINGS",
    "PostprocessConfig",
    "close",
    "dense_crf",
    "disk",
    "fast_guided_filter",
    "fill_holes",
    "guided_filter",
    "open_by_reconstruction",
    "one_class_per_pixel",
    "open_plain",
    "postprocess",
    "remove_islands",
]

OPENINGS = ("reconstruction", "plain", "none")

# Pixels per row block of the filter: keeps the ~30 float32 temporaries of one block in cache (~30 % less time
# than whole-image arrays at 2048x2048) while the halo rows (2 * radius per side) stay a small overhead.
_BLOCK_PIXELS = 1 << 17

_CRF_HINT = "dense CRF needs the 'crf' extra: pip install 'finedetail[crf]' (pydensecrf2)"


# ---------------------------------------------------------------------------------------------------------------
# guided filter


def _check_radius_eps(radius: int, eps: float) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"radius must be an int >= 1 (window 2*radius+1), got {radius=}")
    if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite float > 0 in [0, 1]-guide units (e.g. 1e-3), got {eps=}")


def _guide_planes(guide: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Guide -> (list of 1 or 3 C-contiguous planes in the guide's dtype, scale that maps them to [0, 1])."""
    if not isinstance(guide, np.ndarray):
        raise TypeError(f"guide must be a numpy array (H, W, 3) or (H, W), got {type(guide).__name__}")
    if guide.ndim == 3 and guide.shape[2] == 1:
        guide = guide[..., 0]
    if not (guide.ndim == 2 or (guide.ndim == 3 and guide.shape[2] == 3)):
        raise ValueError(f"guide must be (H, W, 3) colour or (H, W) grey, got shape {guide.shape}")
    if guide.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif guide.dtype == np.uint16:
        scale = 1.0 / 65535.0
    elif guide.dtype in (np.float32, np.float64):
        scale = 1.0
    else:
        raise TypeError(
            f"guide must be uint8 (0..255), uint16 (0..65535) or float in [0, 1], got {guide.dtype}; "
            "convert it first (e.g. image.astype(np.float32) / max_value)"
        )
    if guide.ndim == 2:
        return [np.ascontiguousarray(guide)], scale
    if guide.size == 0:  # cv2.split returns no planes for an empty image
        return [np.ascontiguousarray(guide[..., c]) for c in range(3)], scale
    return list(cv2.split(np.ascontiguousarray(guide))), scale


def _src_plane(src: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if not isinstance(src, np.ndarray) or src.ndim != 2:
        got = src.shape if isinstance(src, np.ndarray) else type(src).__name__
        raise ValueError(f"src must be an (H, W) map, got {got}; filter multi-class maps one class at a time")
    if src.shape != hw:
        raise ValueError(f"src is {src.shape} but the guide is {hw}; both must be (H, W) in the same frame")
    if src.dtype == np.uint8:
        return src.astype(np.float32) * np.float32(1.0 / 255.0)
    if src.dtype in (np.float32, np.float64, np.float16, bool):
        return np.ascontiguousarray(src, dtype=np.float32)
    raise TypeError(f"src must be float in [0, 1] (or uint8 0..255), got {src.dtype}")


def _to_float(planes: list[np.ndarray], scale: float) -> list[np.ndarray]:
    if planes[0].dtype == np.float32 and scale == 1.0:
        return planes
    return [x.astype(np.float32) * np.float32(scale) for x in planes]


def _box(x: np.ndarray, ksize: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (ksize, ksize), normalize=True, borderType=cv2.BORDER_REFLECT)


def _coefficients(planes: list[np.ndarray], p: np.ndarray, radius: int, eps: float) -> list[np.ndarray]:
    """Per-pixel linear model of He et al.: returns [a_1, ..., a_C, b] (float32), NOT yet box-averaged.

    ``planes`` are C in {1, 3} float32 guide planes in [0, 1], ``p`` the float32 source, all (h, w).
    Colour: a = (Sigma + eps I)^-1 cov(I, p) with the 3x3 inverse written out (adjugate / determinant) so it is
    vectorised over pixels; grey: a = cov / (var + eps).
    """
    k = 2 * radius + 1
    eps32 = np.float32(eps)
    mp = _box(p, k)
    if len(planes) == 1:
        g = planes[0]
        mg = _box(g, k)
        var = _box(g * g, k)
        var -= mg * mg
        var += eps32
        cov = _box(g * p, k)
        cov -= mg * mp
        a = cov / var
        b = mp - a * mg
        return [a, b]

    r, g, b_ = planes
    mr, mg, mb = _box(r, k), _box(g, k), _box(b_, k)

    def moment(x: np.ndarray, y: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
        out = _box(x * y, k)
        out -= mx * my
        return out

    vrr, vrg, vrb = moment(r, r, mr, mr), moment(r, g, mr, mg), moment(r, b_, mr, mb)
    vgg, vgb, vbb = moment(g, g, mg, mg), moment(g, b_, mg, mb), moment(b_, b_, mb, mb)
    vrr += eps32
    vgg += eps32
    vbb += eps32
    cr, cg, cb = moment(r, p, mr, mp), moment(g, p, mg, mp), moment(b_, p, mb, mp)

    # Adjugate of the symmetric 3x3 [[vrr, vrg, vrb], [vrg, vgg, vgb], [vrb, vgb, vbb]].
    c00 = vgg * vbb
    c00 -= vgb * vgb
    c01 = vrb * vgb
    c01 -= vrg * vbb
    c02 = vrg * vgb
    c02 -= vrb * vgg
    c11 = vrr * vbb
    c11 -= vrb * vrb
    c12 = vrb * vrg
    c12 -= vrr * vgb
    c22 = vrr * vgg
    c22 -= vrg * vrg
    inv_det = vrr * c00
    inv_det += vrg * c01
    inv_det += vrb * c02
    np.reciprocal(inv_det, out=inv_det)

    def row(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = x * cr
        out += y * cg
        out += z * cb
        out *= inv_det
        return out

    ar, ag, ab = row(c00, c01, c02), row(c01, c11, c12), row(c02, c12, c22)
    bb = mp - ar * mr
    bb -= ag * mg
    bb -= ab * mb
    return [ar, ag, ab, bb]


def _combine(planes: list[np.ndarray], coef: list[np.ndarray]) -> np.ndarray:
    """q = sum_c mean_a_c * I_c + mean_b (float32)."""
    q = coef[-1].copy()
    for a, x in zip(coef[:-1], planes, strict=True):
        q += a * x
    return q


def _coefficient_blocks(
    planes: list[np.ndarray], scale: float, p: np.ndarray, radius: int, eps: float
) -> Iterator[tuple[int, int, list[np.ndarray], list[np.ndarray]]]:
    """Yield ``(y0, y1, guide_rows, coef_rows)`` over row blocks of the image: the float32 [0, 1] guide planes of
    rows [y0, y1) and their box-averaged coefficients [mean_a_1, ..., mean_a_C, mean_b], exactly as whole-image
    box filters with ``BORDER_REFLECT`` would give.

    Blocks keep the ~30 float32 temporaries in cache. The coefficients of rows [y0 - r, y1 + r) need guide rows
    [y0 - 2r, y1 + 2r); where a block meets the image border its border IS the image border, so BORDER_REFLECT
    inside the block is exact there too, and elsewhere the rows that saw the block's fake border are cut off.
    """
    h, w = p.shape
    k = 2 * radius + 1
    rows = max(8 * radius, _BLOCK_PIXELS // max(w, 1))
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        g0, g1 = max(0, y0 - 2 * radius), min(h, y1 + 2 * radius)
        a0, a1 = max(0, y0 - radius), min(h, y1 + radius)
        fp = _to_float([x[g0:g1] for x in planes], scale)
        coef = _coefficients(fp, p[g0:g1], radius, eps)
        coef = [_box(np.ascontiguousarray(c[a0 - g0 : a1 - g0]), k)[y0 - a0 : y1 - a0] for c in coef]
        yield y0, y1, [x[y0 - g0 : y1 - g0] for x in fp], coef


def guided_filter(guide: np.ndarray, src: np.ndarray, *, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (ECCV 2010 / TPAMI 2013), O(N) in the pixel count via box means.

    guide:  (H, W, 3) colour or (H, W) grey; uint8 (divided by 255), uint16 (by 65535) or float in [0, 1].
    src:    (H, W) float in [0, 1] (uint8 is divided by 255), same frame as ``guide``.
    radius: window is (2 * radius + 1)^2 pixels, radius >= 1.
    eps:    regulariser in [0, 1]-guide units (edges with local variance << eps are smoothed away).
    Returns (H, W) float32, not clipped. Borders follow ``BORDER_REFLECT``; with the guide scaled to [0, 1] this
    equals ``cv2.ximgproc.guidedFilter(guide01, src, radius, eps)`` within float32 rounding (see module docstring).
    """
    _check_radius_eps(radius, eps)
    planes, scale = _guide_planes(guide)
    p = _src_plane(src, planes[0].shape)
    out = np.empty(p.shape, np.float32)
    if p.size == 0:
        return out
    for y0, y1, fp, coef in _coefficient_blocks(planes, scale, p, radius, eps):
        out[y0:y1] = _combine(fp, coef)
    return out


def fast_guided_filter(
    guide: np.ndarray, src: np.ndarray, *, radius: int, eps: float, subsample: int = 4
) -> np.ndarray:
    """He & Sun's fast guided filter (arXiv 1505.00996): the linear coefficients at 1/subsample resolution.

    Guide and src are shrunk by ``subsample`` (``INTER_AREA``, size ``ceil(H / s) x ceil(W / s)``), the box-averaged
    coefficients are computed there with radius ``round(radius / subsample)``, upsampled bilinearly
    (``INTER_LINEAR``) to (H, W) and applied to the full-resolution guide, so edges stay sharp. ~s^2 times less
    work than ``guided_filter``. ``subsample`` is capped at ``radius`` (so the low-resolution window is at least
    3x3), and ``subsample=1`` or ``radius=1`` IS ``guided_filter``. The effective window is then
    ``(2 * round(radius / s) + 1) * s`` full-resolution pixels wide (s the capped subsample), not ``2 * radius + 1``:
    12 px at radius 4, subsample 4 (the exact filter's window is 9 px), 6 px against 5 at radius 2, 20 against 17 at
    radius 8, so the fast filter smooths over a somewhat wider neighbourhood than the one requested; one pixel of
    ``src`` reaches two windows' width (24 px at radius 4, subsample 4; 17 px for the exact filter).
    Same inputs, units and output as ``guided_filter``; the mean absolute difference to it is ~1e-3 on the
    2048^2 bench maps and below 0.01 (s=2) / 0.02 (s=4) on a small scene dense in 1-2 px lines (tested). A uint8
    guide is shrunk in uint8 (rounded to 1/255; changes the result by < 5e-3).
    """
    _check_radius_eps(radius, eps)
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise ValueError(f"subsample must be an int >= 1 (1 = exact filter), got {subsample=}")
    subsample = min(int(subsample), int(radius))
    if subsample == 1:
        return guided_filter(guide, src, radius=radius, eps=eps)
    planes, scale = _guide_planes(guide)
    h, w = planes[0].shape
    p = _src_plane(src, (h, w))
    if p.size == 0:
        return np.empty((h, w), np.float32)
    lh, lw = -(-h // subsample), -(-w // subsample)
    small = [cv2.resize(x, (lw, lh), interpolation=cv2.INTER_AREA) for x in planes]
    p_small = cv2.resize(p, (lw, lh), interpolation=cv2.INTER_AREA)
    coef = [np.empty((lh, lw), np.float32) for _ in range(len(planes) + 1)]
    for y0, y1, _, block in _coefficient_blocks(small, scale, p_small, round(radius / subsample), eps):
        for full, part in zip(coef, block, strict=True):
            full[y0:y1] = part
    # Fold the guide's integer scale into a, so the full-resolution pass multiplies the raw planes.
    if scale != 1.0:
        for a in coef[:-1]:
            a *= np.float32(scale)
    q = cv2.resize(coef[-1], (w, h), interpolation=cv2.INTER_LINEAR)
    # One reused full-size buffer, products formed in place: fresh (H, W) temporaries cost page faults.
    a_up = np.empty((h, w), np.float32)
    for a, x in zip(coef[:-1], planes, strict=True):
        cv2.resize(a, (w, h), dst=a_up, interpolation=cv2.INTER_LINEAR)
        cv2.multiply(a_up, x, dst=a_up, dtype=cv2.CV_32F)
        q += a_up
    return q


# ---------------------------------------------------------------------------------------------------------------
# morphology


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


def _drop_components(mask: np.ndarray, *, max_area: int, erode_size: int) -> np.ndarray:
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
    return _drop_components(mask, max_area=max_area, erode_size=0)


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
    return _drop_components(mask, max_area=0, erode_size=size)


# ---------------------------------------------------------------------------------------------------------------
# dense CRF


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    *,
    iters: int = 5,
    sxy_gaussian: float = 3,
    compat_gaussian: float = 3,
    sxy_bilateral: float = 50,
    srgb: float = 5,
    compat_bilateral: float = 5,
) -> np.ndarray:
    """Fully connected CRF (Kraehenbuehl & Koltun 2011) on a two-label (background / foreground) problem.

    image: (H, W, 3) uint8 RGB; prob: (H, W) float32 foreground probability in [0, 1] (the unary is -log p,
    p clipped to [1e-6, 1 - 1e-6]). Pairwise terms: a Gaussian smoothness kernel (``sxy_gaussian`` px,
    ``compat_gaussian``) and a bilateral appearance kernel (``sxy_bilateral`` px, ``srgb`` intensity levels,
    ``compat_bilateral``); ``iters`` mean-field iterations. Returns (H, W) float32 foreground marginals.
    Needs pydensecrf (``pip install 'finedetail[crf]'``); raises ImportError with that hint when missing.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(_CRF_HINT) from e
    check_image(image)
    check_prob(prob)
    if prob.shape != image.shape[:2]:
        raise ValueError(f"prob is {prob.shape} but the image is {image.shape[:2]}; both must share one frame")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters=}")
    h, w = prob.shape
    p = np.clip(prob, 1e-6, 1.0 - 1e-6)
    unary = np.ascontiguousarray(-np.log(np.stack([1.0 - p, p]).reshape(2, -1)), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    crf.addPairwiseBilateral(
        sxy=sxy_bilateral, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=compat_bilateral
    )
    q = np.asarray(crf.inference(int(iters)), dtype=np.float32).reshape(2, h, w)
    return np.ascontiguousarray(q[1])


# ---------------------------------------------------------------------------------------------------------------
# the whole stage


@dataclass(frozen=True)
class PostprocessConfig:
    """Knobs of ``postprocess``. Sizes in pixels of the map's (original image) frame.

    guided:       run the guided filter with the image as colour guide.
    radius, eps:  guided filter window radius (px) and regulariser ([0, 1]-guide units).
    subsample:    1 = exact guided filter; s > 1 = fast guided filter at 1/s resolution (``fast_guided_filter``,
                  capped at radius). Default 4: ~5x faster than exact at 2048^2 (the CPU fuse step must keep
                  up with the GPU stages); mean |difference| to the exact filter ~1e-3 on the bench maps. On
                  the synthetic scenes (Gaussian-blurred truth as the soft map) it also recovers far more thin
                  structure than the exact filter: the coefficients fitted at low resolution are applied to the
                  full-resolution guide, whose thin lines have more contrast than the shrunk guide's.
    threshold:    foreground iff filtered prob >= threshold.
    close_size:   closing disc "radius" s (diameter 2s + 1 px; 0 = off; 1 = 3x3); at most 3 so strands don't merge.
    hole_area:    holes of area <= hole_area are filled (0 = off).
    opening:      "reconstruction" (keeps thin parts attached to a body, removes free-standing ones thinner than
                  the disc), "plain" (erases all thin parts), or "none" (keeps free-standing wires; islands are
                  still removed by area).
    opening_size: erosion disc "radius" of the opening, 1..3 (1 = 3x3: parts without a 3x3 core are debris).
    island_area:  foreground components of area <= island_area are removed (0 = off).
    crf, crf_iters: dense CRF after the guided filter (needs the 'crf' extra) and its mean-field iterations.
    """

    guided: bool = knob(True, "run the guided filter on the fused map with the image as colour guide")
    radius: int = knob(4, "guided filter window radius (px)", range=">= 1")
    eps: float = knob(1e-3, "guided filter regulariser (guide in [0, 1] units): larger smooths more across weak "
                            "edges", range="> 0")
    subsample: int = knob(4, "1: exact guided filter; s > 1: fast guided filter fitted at 1/s resolution (capped "
                             "at radius), ~5x faster at 2048^2", range=">= 1")
    threshold: float = knob(0.5, "a pixel is foreground iff its filtered probability is at least this",
                            range="in (0, 1)")
    close_size: int = knob(1, "closing disc radius s (diameter 2s + 1 px; 1 = 3x3; 0 = off), small so strands do "
                              "not merge", range="0..3")
    hole_area: int = knob(64, "holes of at most this many px are filled (0 = off)", range=">= 0")
    opening: str = knob("reconstruction", "'reconstruction' removes free-standing parts thinner than the disc but "
                                          "keeps thin parts attached to a body, 'plain' erases every thin part, "
                                          "'none' keeps free-standing wires", range=f"one of: {', '.join(OPENINGS)}")
    opening_size: int = knob(1, "erosion disc radius of the opening (1 = 3x3: parts without a 3x3 core are "
                                "debris)", range="1..3")
    island_area: int = knob(16, "foreground components of at most this many px are removed (0 = off)",
                            range=">= 0")
    crf: bool = knob(False, "dense CRF after the guided filter (needs the 'crf' extra)")
    crf_iters: int = knob(5, "mean-field iterations of the dense CRF", range=">= 1")

    def __post_init__(self) -> None:
        for name in ("guided", "crf"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {name}={value!r}")
        for name, lo, hi in (
            ("radius", 1, None),
            ("subsample", 1, None),
            ("close_size", 0, 3),
            ("hole_area", 0, None),
            ("opening_size", 1, 3),
            ("island_area", 0, None),
            ("crf_iters", 1, None),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < lo
                or (hi is not None and value > hi)
            ):
                rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be an int {rng}, got {name}={value!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite float > 0, got eps={self.eps!r}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be a float in (0, 1), got threshold={self.threshold!r}")
        if self.opening not in OPENINGS:
            raise ValueError(f"opening must be one of {OPENINGS}, got opening={self.opening!r}")


def _morphology(mask: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    # Close first so 1-px gaps in a wire are bridged before area filters judge its pieces; islands last so
    # debris left by the opening is also swept.
    if cfg.close_size:
        mask = close(mask, size=cfg.close_size)
    if cfg.hole_area:
        mask = fill_holes(mask, max_area=cfg.hole_area)
    if cfg.opening == "plain":
        mask = open_plain(mask, size=cfg.opening_size)
    # Opening by reconstruction and island removal both drop whole components: one labelling does both.
    erode = cfg.opening_size if cfg.opening == "reconstruction" else 0
    return _drop_components(mask, max_area=cfg.island_area, erode_size=erode)


def postprocess(
    soft: np.ndarray, image: np.ndarray, cfg: PostprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Guided filter -> (dense CRF) -> threshold -> morphology, for one class.

    soft:  (H, W) float32 in [0, 1], e.g. an ensemble's soft map (its >= 0.5 is the ensemble's decision).
    image: (H, W, 3) uint8 RGB, same frame; it is the guided filter's colour guide and the CRF's appearance term.
    Returns ``(prob, mask)``: prob (H, W) float32 in [0, 1] after the guided filter (and CRF), before morphology;
    mask (H, W) bool = morphology(prob >= cfg.threshold). Morphology may make mask differ from
    ``prob >= threshold`` (filled holes, removed islands); the mask is the stage's decision.
    """
    cfg = PostprocessConfig() if cfg is None else cfg
    check_prob(soft, what="soft map")
    check_image(image)
    if soft.shape != image.shape[:2]:
        raise ValueError(
            f"soft map is {soft.shape} but the image is {image.shape[:2]}; map it back to the image frame first"
        )
    if cfg.guided:
        prob = fast_guided_filter(image, soft, radius=cfg.radius, eps=cfg.eps, subsample=cfg.subsample)
        np.clip(prob, 0.0, 1.0, out=prob)
    else:
        prob = soft.copy()
    if cfg.crf:
        prob = dense_crf(image, prob, iters=cfg.crf_iters)
    mask = prob >= np.float32(cfg.threshold)
    return prob, _morphology(mask, cfg)


def one_class_per_pixel(mask: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The multi-class rule: ``mask`` (C, H, W) bool, each class post-processed on its own, keeps at each pixel only
    the class of highest ``prob`` (C, H, W) among those set there (ties -> lower index). In place; returns ``mask``.
    One class: unchanged."""
    if mask.shape[0] > 1:
        winner = np.argmax(np.where(mask, prob, -1.0), axis=0)
        mask &= np.arange(mask.shape[0])[:, None, None] == winner[None]
    return mask
