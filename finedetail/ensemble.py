"""Voting rules that fuse several probability maps of one image (pure: numpy only).

Every rule takes ``maps``: an ``(N, H, W)`` array or a sequence of N ``(H, W)`` arrays, all in the SAME frame
(the original image's), ``float32``/``float64`` in ``[0, 1]`` or ``uint8`` 0..255 (divided by 255; ``bool`` is
0/1). Each returns a SOFT map ``(H, W) float32`` in ``[0, 1]`` whose ``>= 0.5`` is EXACTLY the rule's decision, so
edge-aware filtering can run on it before thresholding. The decisions ("votes" are maps with value ``>= 0.5``):

- ``union``: at least one vote. Soft map = per-pixel max.
- ``majority`` (k of N): at least ``k`` votes. Soft map = per-pixel k-th largest value.
- ``mean`` (``mean_threshold``): weighted mean ``>= tau``. Soft map = ``clip(mean - tau + 0.5, 0, 1)``.
- ``majority_or_confident``: at least ``k`` votes, or the max ``>= tau_high``.
  Soft map = ``max(k-th largest, clip(max - tau_high + 0.5, 0, 1))``.

The mean is computed in float64, accumulated in map order: ``sum_i(w_i * m_i) / sum_i(w_i)``. The shifted soft
values are nudged by at most one float32 ulp around 0.5 where rounding would otherwise flip a decision.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "RULES",
    "ensemble",
    "majority",
    "majority_or_confident",
    "mean_threshold",
    "union",
    "weighted_mean",
]

RULES = ("union", "majority", "mean", "majority_or_confident")

_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0.0))

Maps = np.ndarray | Sequence[np.ndarray]


def union(maps: Maps) -> np.ndarray:
    """Per-pixel max of the maps: foreground iff any map is ``>= 0.5``. -> (H, W) float32."""
    ms = _as_maps(maps)
    out = ms[0].copy()
    for m in ms[1:]:
        np.maximum(out, m, out=out)
    return out


def majority(maps: Maps, *, k: int) -> np.ndarray:
    """Per-pixel k-th largest value: foreground iff at least ``k`` of the N maps are ``>= 0.5``. 1 <= k <= N."""
    ms = _as_maps(maps)
    return _kth_largest(ms, _check_k(k, len(ms)))


def weighted_mean(maps: Maps, *, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted per-pixel mean (float64 accumulation, see module doc), clipped to [0, 1]. -> (H, W) float32.

    ``weights``: N non-negative numbers with a positive sum (default: all 1).
    """
    ms = _as_maps(maps)
    return np.clip(_mean64(ms, weights), 0.0, 1.0).astype(np.float32)


def mean_threshold(maps: Maps, *, tau: float = 0.5, weights: Sequence[float] | None = None) -> np.ndarray:
    """Foreground iff the weighted mean is ``>= tau`` (0 < tau <= 1). Soft map ``clip(mean - tau + 0.5, 0, 1)``."""
    _check_unit("tau", tau)
    ms = _as_maps(maps)
    mean = _mean64(ms, weights)
    return _shifted(mean, tau)


def majority_or_confident(maps: Maps, *, k: int, tau_high: float = 0.9) -> np.ndarray:
    """Foreground iff at least ``k`` maps are ``>= 0.5`` OR any map is ``>= tau_high`` (0 < tau_high <= 1).

    Soft map ``max(k-th largest, clip(max - tau_high + 0.5, 0, 1))``; catches a thin structure that only the
    high-resolution variant saw, as long as it saw it confidently.
    """
    _check_unit("tau_high", tau_high)
    ms = _as_maps(maps)
    kth = _kth_largest(ms, _check_k(k, len(ms)))
    confident = _shifted(union(ms).astype(np.float64), tau_high)
    return np.maximum(kth, confident)


def ensemble(
    maps: Maps,
    *,
    rule: str,
    k: int | None = None,
    tau: float = 0.5,
    tau_high: float = 0.9,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Dispatch to one of ``RULES`` by name. ``k`` defaults to ``N // 2 + 1`` (strict majority) and is ignored by
    ``union`` and ``mean``; ``tau`` is used by ``mean`` only, ``tau_high`` by ``majority_or_confident`` only;
    ``weights`` only by ``mean`` (passing them to another rule is an error, not silently ignored)."""
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; expected one of {RULES}")
    if weights is not None and rule != "mean":
        raise ValueError(f"weights are only used by rule='mean', got {rule=} with weights; drop them or use 'mean'")
    ms = _as_maps(maps)
    if rule == "union":
        return union(ms)
    if rule == "mean":
        return mean_threshold(ms, tau=tau, weights=weights)
    kk = len(ms) // 2 + 1 if k is None else k
    if rule == "majority":
        return majority(ms, k=kk)
    return majority_or_confident(ms, k=kk, tau_high=tau_high)


def _as_maps(maps: Maps) -> list[np.ndarray]:
    """-> list of N >= 1 (H, W) float32 arrays (views where the input already is float32)."""
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise ValueError(f"maps must be (N, H, W) or a sequence of (H, W) maps, got an array of shape {maps.shape}")
        items = list(maps)
    else:
        items = list(maps)
    if not items:
        raise ValueError("maps is empty; ensembling needs at least one (H, W) map")
    out = []
    shape = None
    for i, m in enumerate(items):
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"map {i} must be (H, W), got shape {m.shape}; pass one map per class")
        if shape is None:
            shape = m.shape
        elif m.shape != shape:
            raise ValueError(
                f"all maps must share one (H, W) frame, map 0 is {shape} but map {i} is {m.shape}; "
                f"map variants back to the original frame first"
            )
        if m.dtype == np.uint8:
            m = m.astype(np.float32) / np.float32(255.0)
        elif m.dtype == bool:
            m = m.astype(np.float32)
        elif m.dtype in (np.float32, np.float64):
            m = m.astype(np.float32, copy=False)
            lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)
            if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
                raise ValueError(f"map {i} must be in [0, 1], got values in [{lo}, {hi}]; convert uint8 with from_u8")
        else:
            raise TypeError(f"map {i} must be float32 in [0, 1] or uint8 0..255, got {m.dtype}")
        out.append(m)
    return out


def _kth_largest(ms: list[np.ndarray], k: int) -> np.ndarray:
    n = len(ms)
    if k == 1:
        return union(ms)
    stack = np.stack(ms)
    # ascending partition: index n - k holds the k-th largest
    return np.partition(stack, n - k, axis=0)[n - k]


def _mean64(ms: list[np.ndarray], weights: Sequence[float] | None) -> np.ndarray:
    n = len(ms)
    if weights is None:
        w = np.ones(n, np.float64)
    else:
        w = np.asarray(weights, np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"weights must be {n} finite non-negative numbers with a positive sum (one per map), got {weights=}"
            )
    acc = np.zeros(ms[0].shape, np.float64)
    for wi, m in zip(w, ms):
        acc += wi * m.astype(np.float64)
    acc /= w.sum()
    return acc


def _shifted(values: np.ndarray, tau: float) -> np.ndarray:
    """float64 values -> float32 clip(values - tau + 0.5, 0, 1) with ``>= 0.5`` exactly ``values >= tau``."""
    decision = values >= tau
    soft = np.clip(values - tau + 0.5, 0.0, 1.0).astype(np.float32)
    soft = np.where(decision, np.maximum(soft, np.float32(0.5)), np.minimum(soft, _BELOW_HALF))
    return soft.astype(np.float32, copy=False)


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}] (votes needed out of {n} maps), got {k=}")
    return int(k)


def _check_unit(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {name}={value}")
