"""The guided filter (He et al.) with a colour or grey guide, exact and fast (subsampled); pure numpy + OpenCV.

``guided_filter(guide, src, radius=, eps=)`` snaps a soft map ``src`` (H, W) float32 to the edges of ``guide``
((H, W, 3) uint8 RGB, divided by 255, or float in [0, 1]; a grey (H, W) guide works too); ``fast_guided_filter`` fits
the coefficients at 1/s resolution. ``finedetail.postprocess`` runs it with the image as guide.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

__all__ = ["fast_guided_filter", "guided_filter"]

# Pixels per row block of the filter: keeps the ~30 float32 temporaries of one block in cache (~30 % less time
# than whole-image arrays at 2048x2048) while the halo rows (2 * radius per side) stay a small overhead.
_BLOCK_PIXELS = 1 << 17


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
