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

Implementation: every rule runs over row blocks of ``_BLOCK_PIXELS`` pixels so that all of a block's
temporaries stay in cache and each input pixel is read from memory once (input checks included). The k-th
largest value comes from a selection network (``finedetail.selection``: a sorting network with every comparator
whose outputs cannot reach the wanted rank removed), evaluated with ``np.minimum`` / ``np.maximum`` on whole blocks.
Results do not depend on the block size: every step is elementwise and the same float operations run in the same
order as on whole maps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Sequence

import numpy as np

from finedetail.selection import selection_program

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

# Pixels per row block (at least one row). The k-th largest of 8 maps keeps ~12 block buffers live and makes ~30
# numpy calls per block: smaller blocks pay the per-call overhead, larger ones fall out of cache. 2**14..2**16 were
# within noise of each other on 8 x 2048^2 maps (2-core EPYC, 512 KiB L2 per core); results never depend on it.
_BLOCK_PIXELS = 1 << 15

Maps = np.ndarray | Sequence[np.ndarray]


def union(maps: Maps) -> np.ndarray:
    """Per-pixel max of the maps: foreground iff any map is ``>= 0.5``. -> (H, W) float32."""
    return _union(_as_maps(maps))


def majority(maps: Maps, *, k: int) -> np.ndarray:
    """Per-pixel k-th largest value: foreground iff at least ``k`` of the N maps are ``>= 0.5``. 1 <= k <= N."""
    ms = _as_maps(maps)
    return _majority(ms, _check_k(k, len(ms)))


def weighted_mean(maps: Maps, *, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted per-pixel mean (float64 accumulation, see module doc), clipped to [0, 1]. -> (H, W) float32.

    ``weights``: N non-negative numbers with a positive sum (default: all 1).
    """
    ms = _as_maps(maps)
    return _mean(ms, _check_weights(weights, len(ms)), tau=None)


def mean_threshold(maps: Maps, *, tau: float = 0.5, weights: Sequence[float] | None = None) -> np.ndarray:
    """Foreground iff the weighted mean is ``>= tau`` (0 < tau <= 1). Soft map ``clip(mean - tau + 0.5, 0, 1)``."""
    _check_unit("tau", tau)
    ms = _as_maps(maps)
    return _mean(ms, _check_weights(weights, len(ms)), tau=tau)


def majority_or_confident(maps: Maps, *, k: int, tau_high: float = 0.9) -> np.ndarray:
    """Foreground iff at least ``k`` maps are ``>= 0.5`` OR any map is ``>= tau_high`` (0 < tau_high <= 1).

    Soft map ``max(k-th largest, clip(max - tau_high + 0.5, 0, 1))``; catches a thin structure that only the
    high-resolution variant saw, as long as it saw it confidently.
    """
    _check_unit("tau_high", tau_high)
    ms = _as_maps(maps)
    return _majority_or_confident(ms, _check_k(k, len(ms)), tau_high)


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
        return _union(ms)
    if rule == "mean":
        _check_unit("tau", tau)
        return _mean(ms, _check_weights(weights, len(ms)), tau=tau)
    kk = len(ms) // 2 + 1 if k is None else k
    if rule == "majority":
        return _majority(ms, _check_k(kk, len(ms)))
    _check_unit("tau_high", tau_high)
    return _majority_or_confident(ms, _check_k(kk, len(ms)), tau_high)


# ---------------------------------------------------------------------------------------------------------------
# input: checked up front for shape and dtype; values are checked block by block while the rules read them


def _as_maps(maps: Maps) -> list[np.ndarray]:
    """-> list of N >= 1 (H, W) arrays of one shape, dtype float32, float64, uint8 or bool (views, not converted).

    Values are not checked here but block by block while a rule reads them (``_blocks``, ``_select``), so errors
    about the knobs (k, tau, weights) come first. Where a shape or dtype error comes after a map with values
    outside [0, 1], the value error is raised (maps are reported in order).
    """
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise ValueError(f"maps must be (N, H, W) or a sequence of (H, W) maps, got an array of shape {maps.shape}")
        items = list(maps)
    else:
        items = list(maps)
    if not items:
        raise ValueError("maps is empty; ensembling needs at least one (H, W) map")
    out: list[np.ndarray] = []
    shape = None
    for i, m in enumerate(items):
        m = np.asarray(m)
        error: Exception | None = None
        if m.ndim != 2:
            error = ValueError(f"map {i} must be (H, W), got shape {m.shape}; pass one map per class")
        elif shape is not None and m.shape != shape:
            error = ValueError(
                f"all maps must share one (H, W) frame, map 0 is {shape} but map {i} is {m.shape}; "
                f"map variants back to the original frame first"
            )
        elif not (m.dtype == np.uint8 or m.dtype == bool or m.dtype in (np.float32, np.float64)):
            error = TypeError(f"map {i} must be float32 in [0, 1] or uint8 0..255, got {m.dtype}")
        if error is not None:
            _check_values(out)
            raise error
        shape = m.shape
        out.append(m)
    return out


def _check_values(ms: list[np.ndarray]) -> None:
    """Raise for the first float map (in list order) with a value outside [0, 1] or NaN, judged in float32."""
    for i, m in enumerate(ms):
        if m.dtype in (np.float32, np.float64) and m.size:
            m = m.astype(np.float32, copy=False)
            lo, hi = float(m.min()), float(m.max())
            if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
                raise ValueError(f"map {i} must be in [0, 1], got values in [{lo}, {hi}]; convert uint8 with from_u8")


def _block_rows(w: int) -> int:
    return max(1, _BLOCK_PIXELS // max(w, 1))


def _has_floats(ms: list[np.ndarray]) -> bool:
    return any(m.dtype in (np.float32, np.float64) for m in ms)


def _blocks(ms: list[np.ndarray], *, check: bool = True) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """Yield ``(y0, y1, blocks)``: rows [y0, y1) of every map as (y1 - y0, W) float32 arrays (views of float32
    maps, else converted into reused buffers, so valid until the next step). ``check``: raise (``_check_values``)
    unless every block lies in [0, 1]; a caller that passes False must call ``_check_block`` itself."""
    h, w = ms[0].shape
    rows = _block_rows(w)
    convert = [m.dtype != np.float32 for m in ms]
    bufs = [np.empty((rows, w), np.float32) if c else None for c in convert]
    check = check and w > 0 and _has_floats(ms)
    stack = _as_stack(ms) if check else None
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        out = []
        for m, c, buf in zip(ms, convert, bufs):
            part = m[y0:y1]
            if c:  # uint8 / 255 in float32, float64 rounded to float32 like astype, bool to 0 / 1
                dst = buf[: y1 - y0]
                if part.dtype == np.uint8:
                    np.divide(part, np.float32(255.0), out=dst, dtype=np.float32)
                else:
                    np.copyto(dst, part, casting="unsafe")
                part = dst
            out.append(part)
        if check:
            _check_block(ms, _lowest(out, stack, y0, y1), _highest(out, stack, y0, y1))
        yield y0, y1, out


def _lowest(blocks: list[np.ndarray], stack: np.ndarray | None, y0: int, y1: int) -> float:
    """Smallest value of a block over all maps (NaN if any is NaN); converted maps lie in [0, 1] and don't matter."""
    if stack is not None:
        return stack[:, y0:y1].min()
    return np.min([b.min() for b in blocks])  # np.min, unlike min(), keeps a NaN


def _highest(blocks: list[np.ndarray], stack: np.ndarray | None, y0: int, y1: int) -> float:
    if stack is not None:
        return stack[:, y0:y1].max()
    return np.max([b.max() for b in blocks])


def _check_block(ms: list[np.ndarray], lo: float, hi: float) -> None:
    if not (0.0 <= lo and hi <= 1.0):  # NaN compares False
        _check_values(ms)  # reports the first bad map over its whole extent


def _as_stack(ms: list[np.ndarray]) -> np.ndarray | None:
    """A read-only (N, H, W) view over float32 maps that are equally spaced in one buffer (``list(stack)`` is),
    so that a block is checked with one reduction instead of one per map; None otherwise."""
    if len(ms) < 2 or any(m.dtype != np.float32 for m in ms):
        return None
    first = ms[0]
    ptrs = [m.__array_interface__["data"][0] for m in ms]
    step = ptrs[1] - ptrs[0]
    if any(m.shape != first.shape or m.strides != first.strides for m in ms) or any(
        p - ptrs[0] != i * step for i, p in enumerate(ptrs)
    ):
        return None
    # Element (i, y, x) of the view is at ptrs[0] + i * step + y * sy + x * sx: exactly ms[i][y, x].
    return np.lib.stride_tricks.as_strided(first, (len(ms), *first.shape), (step, *first.strides), writeable=False)


def _select(
    ms: list[np.ndarray],
    ranks: tuple[int, ...],
    finish: Callable[[int, int, list[np.ndarray]], None] | None = None,
) -> list[np.ndarray]:
    """Per-pixel ``ranks`` (r = r-th largest, distinct) of the maps -> one (H, W) float32 per rank.

    ``finish(y0, y1, outs)``, if given, runs on each block's outputs right after they are computed (while they
    are in cache) and may rewrite them in place.
    """
    n = len(ms)
    h, w = ms[0].shape
    want = tuple(n - r for r in ranks)
    check = w > 0 and _has_floats(ms)
    extremes = _check_plan(n, want) if check else ()
    positions = want + extremes
    ops, results, n_work = selection_program(n, positions)
    rows = _block_rows(w)
    outs = [np.empty((h, w), np.float32) for _ in want]
    scratch = [np.empty((rows, w), np.float32) for _ in extremes]
    work = [np.empty((rows, w), np.float32) for _ in range(n_work)]
    stack = _as_stack(ms) if check else None
    minimum, maximum = np.minimum, np.maximum
    for y0, y1, blocks in _blocks(ms, check=False):
        k = y1 - y0
        dests = [*(o[y0:y1] for o in outs), *(b[:k] for b in scratch)]
        slots = [*blocks, *(b[:k] for b in work), *dests]
        for is_max, a, b, o in ops:
            (maximum if is_max else minimum)(slots[a], slots[b], out=slots[o])
        for j, s in enumerate(results):
            if s < n:  # an input passed through untouched (n == 1)
                np.copyto(dests[j], slots[s])
        if check:
            got = dict(zip(positions, dests))
            lo = got[0].min() if 0 in got else _lowest(blocks, stack, y0, y1)
            hi = got[n - 1].max() if n - 1 in got else _highest(blocks, stack, y0, y1)
            _check_block(ms, lo, hi)
        if finish is not None:
            finish(y0, y1, dests[: len(want)])
    return outs


@functools.lru_cache(maxsize=128)
def _check_plan(n: int, want: tuple[int, ...]) -> tuple[int, ...]:
    """Which of the min (position 0) and max (n - 1) to add to the network for checking the inputs: those that
    cost fewer block passes as extra comparator outputs (~3 passes per op) than as a reduction over all n maps."""
    options = [(), (0,), (n - 1,), (0, n - 1)]
    options = [tuple(p for p in o if p not in want) for o in options]

    def cost(extra: tuple[int, ...]) -> int:
        have = set(want) | set(extra)
        return 3 * len(selection_program(n, want + extra)[0]) + n * ((0 not in have) + (n - 1 not in have))

    return min(dict.fromkeys(options), key=cost)


def _union(ms: list[np.ndarray]) -> np.ndarray:
    return _select(ms, (1,))[0]


def _majority(ms: list[np.ndarray], k: int) -> np.ndarray:
    return _select(ms, (k,))[0]


def _majority_or_confident(ms: list[np.ndarray], k: int, tau_high: float) -> np.ndarray:
    rows, w = _block_rows(ms[0].shape[1]), ms[0].shape[1]
    v64 = np.empty((rows, w), np.float64)
    conf = np.empty((rows, w), np.float32)
    dec = np.empty((rows, w), bool)

    def finish(y0: int, y1: int, outs: list[np.ndarray]) -> None:
        kth, top = outs[0], outs[-1]
        m = y1 - y0
        np.copyto(v64[:m], top)
        _shift_into(v64[:m], tau_high, conf[:m], dec[:m])
        np.maximum(kth, conf[:m], out=kth)

    outs = _select(ms, (k,) if k == 1 else (k, 1), finish)
    return outs[0]


# ---------------------------------------------------------------------------------------------------------------
# mean


def _check_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, np.float64)
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"weights must be {n} finite non-negative numbers with a positive sum (one per map), got {weights=}"
        )
    return w


def _mean(ms: list[np.ndarray], w: np.ndarray, *, tau: float | None) -> np.ndarray:
    """float64 weighted mean -> clip to [0, 1] (tau None) or the shifted soft map of ``mean >= tau``."""
    h, wd = ms[0].shape
    rows = _block_rows(wd)
    acc_buf = np.empty((rows, wd), np.float64)
    tmp_buf = np.empty((rows, wd), np.float64)
    dec_buf = np.empty((rows, wd), bool)
    total = w.sum()
    out = np.empty((h, wd), np.float32)
    for y0, y1, blocks in _blocks(ms):
        k = y1 - y0
        acc, tmp = acc_buf[:k], tmp_buf[:k]
        # Same float64 operations, in the same order, as acc = 0; acc += w_i * m_i; acc /= sum(w).
        # (1.0 * x == x exactly; the leading 0.0 + turns a -0.0 into +0.0 like the accumulator would.)
        for i, (wi, m) in enumerate(zip(w, blocks)):
            if i == 0:
                if wi == 1.0:
                    np.add(m, 0.0, out=acc, dtype=np.float64)
                else:
                    np.multiply(m, wi, out=acc, dtype=np.float64)
                    acc += 0.0
            elif wi == 1.0:
                np.add(acc, m, out=acc)
            else:
                np.multiply(m, wi, out=tmp, dtype=np.float64)
                acc += tmp
        acc /= total
        if tau is None:
            np.clip(acc, 0.0, 1.0, out=acc)
            np.copyto(out[y0:y1], acc, casting="unsafe")
        else:
            _shift_into(acc, tau, out[y0:y1], dec_buf[:k])
    return out


def _shift_into(values: np.ndarray, tau: float, out: np.ndarray, decision: np.ndarray) -> None:
    """float64 values (overwritten) -> ``out`` float32 = clip(values - tau + 0.5, 0, 1), nudged by at most one ulp
    so that ``out >= 0.5`` is exactly ``values >= tau``. ``decision``: bool scratch of the same shape."""
    np.greater_equal(values, tau, out=decision)
    np.subtract(values, tau, out=values)
    values += 0.5
    np.clip(values, 0.0, 1.0, out=values)
    np.copyto(out, values, casting="unsafe")
    np.maximum(out, np.float32(0.5), out=out, where=decision)
    np.logical_not(decision, out=decision)
    np.minimum(out, _BELOW_HALF, out=out, where=decision)


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}] (votes needed out of {n} maps), got {k=}")
    return int(k)


def _check_unit(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {name}={value}")
