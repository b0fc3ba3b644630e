"""Thin-structure filters: what makes vessels, cracks and wires visible (pure: numpy + OpenCV, float32).

Thin objects are ridges (bright lines) and valleys (dark lines) a few pixels wide. These filters turn an image into
per-pixel responses a classifier can read; every function maps ``(H, W) float32`` to maps of the same frame.

- ``local_normalise``: (g - local mean) / local std, both Gaussian-weighted over ``sigma`` px: removes slow
  illumination and contrast changes (the role CLAHE plays in fundus and crack pipelines, but linear and smooth).
- ``hessian_eigen``: the two eigenvalues of the Gaussian-smoothed Hessian at scale ``sigma``, scale-normalised by
  ``sigma**2`` (Lindeberg's gamma = 1 normalisation), sorted ``l_lo <= l_hi``. A bright line of width ~2 sigma has
  ``l_lo << 0`` and ``l_hi ~ 0``; a dark line ``l_hi >> 0`` and ``l_lo ~ 0``; a blob has both large.
- ``lineness``: Sato-style line measures from the eigenvalues: dark ``max(0, l_hi - |l_lo|)`` and bright
  ``max(0, -l_lo - |l_hi|)``, each 0 on blobs, edges and flat areas.
- ``line_filter``: Ricci-Perfetti line detector: mean along a segment of ``length`` px through the pixel at
  ``angles`` orientations minus the mean of the ``length`` x ``length`` square around it; returns the maximum (bright
  lines) and minimum (dark lines) over orientations. Longer support than the Hessian, so faint but long lines
  (power lines, vessel trunks) stand out from isotropic texture.
- ``coherent_lines``: orientation-coherent ridge evidence: per orientation the sigma-normalised second derivative
  across that orientation (steered from the three Hessian components), rectified for bright / dark lines and minus
  the |second derivative| along it (0 on blobs and edges), then averaged over a ``length`` px segment along that same
  orientation; the maximum over orientations. A long line keeps its full response however faint its contrast to a
  textured background; foliage, grass and gravel have ridges of every orientation, so no single orientation
  accumulates them along a segment.

Borders: ``BORDER_REFLECT`` everywhere (the edge pixel repeated), so a line touching the frame keeps its response.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["coherent_lines", "hessian_eigen", "line_filter", "line_kernels", "lineness", "local_normalise",
           "thin_features"]

_BORDER = cv2.BORDER_REFLECT


def _check_gray(gray: np.ndarray) -> np.ndarray:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2:
        got = f"{gray.dtype} {gray.shape}" if isinstance(gray, np.ndarray) else type(gray).__name__
        raise TypeError(f"expected an (H, W) float32 grey image, got {got}; convert colour with cv2.cvtColor first")
    return np.ascontiguousarray(gray, np.float32)


def _normalise(g: np.ndarray, sigma: float, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised, local mean, local std) of a float32 grey image; see ``local_normalise``."""
    mean = cv2.GaussianBlur(g, (0, 0), sigma, borderType=_BORDER)
    d = g - mean
    std = np.sqrt(cv2.GaussianBlur(d * d, (0, 0), sigma, borderType=_BORDER))
    return (d / np.sqrt(std * std + np.float32(eps * eps))).astype(np.float32), mean, std


def local_normalise(gray: np.ndarray, *, sigma: float, eps: float = 1e-2) -> np.ndarray:
    """(H, W) float32 -> (g - G_sigma * g) / sqrt(G_sigma * (g - G_sigma * g)**2 + eps**2), float32.

    ``eps`` is in the units of ``gray`` (1e-2 for a [0, 1] image): flat areas stay near 0 instead of amplifying
    noise."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 px, got {sigma=}")
    return _normalise(_check_gray(gray), sigma, eps)[0]


_D2 = np.array([1.0, -2.0, 1.0], np.float32)
_D1 = np.array([-0.5, 0.0, 0.5], np.float32)
_ONE = np.array([1.0], np.float32)


def hessian_eigen(gray: np.ndarray, *, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 -> (l_lo, l_hi), each (H, W) float32, ``l_lo <= l_hi``: eigenvalues of ``sigma**2`` times the
    Hessian of the image smoothed by a Gaussian of ``sigma`` px (central differences on the smoothed image)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 px, got {sigma=}")
    g = cv2.GaussianBlur(_check_gray(gray), (0, 0), sigma, borderType=_BORDER)
    dxx = cv2.sepFilter2D(g, cv2.CV_32F, _D2, _ONE, borderType=_BORDER)
    dyy = cv2.sepFilter2D(g, cv2.CV_32F, _ONE, _D2, borderType=_BORDER)
    dxy = cv2.sepFilter2D(g, cv2.CV_32F, _D1, _D1, borderType=_BORDER)
    s2 = np.float32(sigma * sigma)
    half_tr = (dxx + dyy) * (0.5 * s2)
    root = np.sqrt((dxx - dyy) ** 2 * 0.25 + dxy * dxy) * s2
    return half_tr - root, half_tr + root


def lineness(l_lo: np.ndarray, l_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues from ``hessian_eigen`` -> (dark, bright) line measures, (H, W) float32 >= 0."""
    dark = np.maximum(l_hi - np.abs(l_lo), 0.0)
    bright = np.maximum(-l_lo - np.abs(l_hi), 0.0)
    return dark.astype(np.float32), bright.astype(np.float32)


@lru_cache(maxsize=16)
def line_kernels(length: int, angles: int) -> tuple[np.ndarray, ...]:
    """``angles`` kernels (length x length float32, each summing to 1): a 1-px segment of ``length`` px through the
    centre at angle k * 180 / angles degrees, drawn by bilinear splatting of 4 samples per px."""
    if length < 3 or length % 2 == 0:
        raise ValueError(f"length must be an odd number of px >= 3, got {length=}")
    if angles < 1:
        raise ValueError(f"angles must be >= 1, got {angles=}")
    c = (length - 1) / 2.0
    t = np.linspace(-c, c, 4 * length)
    out = []
    for k in range(angles):
        a = np.pi * k / angles
        x, y = c + t * np.cos(a), c - t * np.sin(a)
        k_ = np.zeros((length, length), np.float64)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                            (1, 1, fx * fy)):
            xi, yi = np.clip(x0 + dx, 0, length - 1), np.clip(y0 + dy, 0, length - 1)
            np.add.at(k_, (yi, xi), wgt)
        out.append((k_ / k_.sum()).astype(np.float32))
    return tuple(out)


def line_filter(gray: np.ndarray, *, length: int, angles: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 -> (bright, dark), each (H, W) float32: max over orientations of (segment mean - square
    mean), and -min over orientations of the same (so both are >= 0 on their kind of line)."""
    g = _check_gray(gray)
    square = cv2.boxFilter(g, cv2.CV_32F, (length, length), borderType=_BORDER)
    hi = lo = None
    for k in line_kernels(length, angles):
        r = cv2.filter2D(g, cv2.CV_32F, k, borderType=_BORDER)
        hi = r if hi is None else np.maximum(hi, r)
        lo = r if lo is None else np.minimum(lo, r)
    return (hi - square).astype(np.float32), (square - lo).astype(np.float32)


def coherent_lines(gray: np.ndarray, *, sigma: float, length: int, angles: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 -> (bright, dark), each (H, W) float32 >= 0: see the module docstring. Orientation k of
    ``line_kernels(length, angles)`` runs along (cos a, -sin a) in (x, y) image axes, a = k * pi / angles; its normal
    is (sin a, cos a), so the second derivative across it is ``s*s*Ixx + 2*s*c*Ixy + c*c*Iyy`` (s, c of a)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 px, got {sigma=}")
    g = cv2.GaussianBlur(_check_gray(gray), (0, 0), sigma, borderType=_BORDER)
    s2 = np.float32(sigma * sigma)
    dxx = cv2.sepFilter2D(g, cv2.CV_32F, _D2, _ONE, borderType=_BORDER) * s2
    dyy = cv2.sepFilter2D(g, cv2.CV_32F, _ONE, _D2, borderType=_BORDER) * s2
    dxy = cv2.sepFilter2D(g, cv2.CV_32F, _D1, _D1, borderType=_BORDER) * s2
    bright = dark = None
    for k, kernel in enumerate(line_kernels(length, angles)):
        a = np.pi * k / angles
        sn, cs = np.float32(np.sin(a)), np.float32(np.cos(a))
        across = sn * sn * dxx + 2 * sn * cs * dxy + cs * cs * dyy
        along = np.abs(cs * cs * dxx - 2 * sn * cs * dxy + sn * sn * dyy)
        br = cv2.filter2D(np.maximum(-across - along, 0), cv2.CV_32F, kernel, borderType=_BORDER)
        dk = cv2.filter2D(np.maximum(across - along, 0), cv2.CV_32F, kernel, borderType=_BORDER)
        bright = br if bright is None else np.maximum(bright, br)
        dark = dk if dark is None else np.maximum(dark, dk)
    return bright, dark


def thin_features(image: np.ndarray, *, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0), norm_sigma: float = 8.0,
                  line_length: int = 15, line_angles: int = 12, coherent_length: int = 0,
                  coherent_sigmas: tuple[float, ...] = ()) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, F) float32 per-pixel features of thin structures, F = 10 + 3 * len(sigmas)
    (``line_length`` 0 drops the two line-filter channels: F = 8 + 3 * len(sigmas)), plus 2 * len(coherent_sigmas)
    when ``coherent_length`` > 0.

    Channels, in order: CIE L, a, b (L / 100, a / 100, b / 100); n = ``local_normalise(L, sigma=norm_sigma)``;
    Gaussian local mean and std of L over ``norm_sigma``; per sigma the ``hessian_eigen`` pair of n and the
    sigma-scaled gradient magnitude of n smoothed by sigma; the maximum over sigmas of the dark and bright
    ``lineness``; ``line_filter`` bright and dark of n; per ``coherent_sigmas`` the ``coherent_lines`` bright and
    dark of n over ``coherent_length`` px (``line_angles`` orientations). Ridges are measured on n, so a vessel in a
    dim corner and one in the bright centre give the same response."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"image must be (H, W, 3) uint8 RGB, got {got}")
    if not sigmas or any(s <= 0 for s in sigmas):
        raise ValueError(f"sigmas must be positive px, got {sigmas=}")
    lab = cv2.cvtColor(image.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)
    lum = np.ascontiguousarray(lab[..., 0]) * np.float32(0.01)
    n, mean, std = _normalise(lum, norm_sigma, 1e-2)
    feats = [lum, lab[..., 1] * np.float32(0.01), lab[..., 2] * np.float32(0.01), n, mean, std]
    dark = bright = None
    for s in sigmas:
        lo, hi = hessian_eigen(n, sigma=s)
        dk, br = lineness(lo, hi)
        dark = dk if dark is None else np.maximum(dark, dk)
        bright = br if bright is None else np.maximum(bright, br)
        smooth = cv2.GaussianBlur(n, (0, 0), s, borderType=_BORDER)
        gx = cv2.sepFilter2D(smooth, cv2.CV_32F, _D1, _ONE, borderType=_BORDER)
        gy = cv2.sepFilter2D(smooth, cv2.CV_32F, _ONE, _D1, borderType=_BORDER)
        feats += [lo, hi, np.sqrt(gx * gx + gy * gy) * np.float32(s)]
    feats += [dark, bright]
    if line_length:
        feats += list(line_filter(n, length=line_length, angles=line_angles))
    if coherent_length:
        for cs in coherent_sigmas:
            feats += list(coherent_lines(n, sigma=cs, length=coherent_length, angles=line_angles))
    return np.stack(feats, axis=-1).astype(np.float32, copy=False)
