"""COCO run-length encoding of binary masks (pure: numpy only).

Layout (the COCO convention, byte-compatible with ``pycocotools.mask.encode``/``decode``):

- The ``(H, W)`` mask is flattened in COLUMN-MAJOR (Fortran) order.
- ``counts`` alternates run lengths of 0s and 1s and always starts with a run of 0s (possibly of length 0).
- Compressed form: ``counts`` is an ASCII string. Each count ``x`` (from the 3rd on, i.e. index ``i > 2``, the
  difference ``counts[i] - counts[i - 2]``, which may be negative) is written as little-endian 5-bit groups of its
  two's-complement value; every character is ``48 + group``, where bit ``0x20`` of a group means "more groups follow"
  and bit ``0x10`` of the LAST group is the sign (the value is sign-extended from it).
- Uncompressed form: ``counts`` is a list of ints (the ``iscrowd`` annotations of COCO json files).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["StripRle", "rle_area", "rle_decode", "rle_encode", "rle_counts", "counts_to_string",
           "string_to_counts"]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a (H, W) bool mask in column-major order, starting with a (possibly empty) run of 0s."""
    mask = _check_mask(mask)
    flat = mask.ravel(order="F")
    if flat.size == 0:
        return [0]
    # positions where the value changes; a leading 1 means the first (background) run is empty
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(edges).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs


def counts_to_string(counts: list[int]) -> str:
    """Compress run lengths into the COCO string form (see the module docstring)."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = int(count)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative values converge to -1
            # stop once the remaining bits are pure sign extension of this group's sign bit
            more = (x != -1) if (group & 0x10) else (x != 0)
            if more:
                group |= 0x20
            out.append(chr(group + 48))
    return "".join(out)


def string_to_counts(s: str | bytes) -> list[int]:
    """Inverse of ``counts_to_string``: the COCO compressed string -> run lengths."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    pos = 0
    n = len(data)
    while pos < n:
        x = 0
        shift = 0
        more = True
        while more:
            if pos >= n:
                raise ValueError(f"truncated RLE string: a count's continuation bit is set at the end ({s!r})")
            group = data[pos] - 48
            if not 0 <= group < 64:
                raise ValueError(f"invalid RLE character {chr(data[pos])!r} at {pos}; expected chars '0'..'o'")
            x |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and (group & 0x10):
                x -= 1 << shift  # sign-extend from the last group's sign bit
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


class StripRle:
    """``rle_counts`` of an (H, W) bool mask fed as horizontal strips, top to bottom (``add``), for masks too large to
    hold: memory is one row plus one int64 per change of value down a column (the size of the RLE itself).

    >>> r = StripRle((3, 2)); r.add(np.array([[0, 1]], bool)); r.add(np.array([[1, 1], [0, 1]], bool))
    >>> r.counts() == rle_counts(np.array([[0, 1], [1, 1], [0, 1]], bool))
    True
    """

    def __init__(self, hw: tuple[int, int]) -> None:
        self.h, self.w = int(hw[0]), int(hw[1])
        if self.h < 0 or self.w < 0:
            raise ValueError(f"hw must be (h, w) >= 0, got {hw=}")
        self.rows = 0
        self._first: np.ndarray | None = None
        self._last: np.ndarray | None = None
        self._changes: list[np.ndarray] = []  # column-major indices i where flat[i] != flat[i - 1]

    def add(self, strip: np.ndarray) -> None:
        """The next (h, W) rows of the mask."""
        strip = _check_mask(strip)
        if strip.shape[1] != self.w or self.rows + strip.shape[0] > self.h:
            raise ValueError(f"strip {strip.shape} does not continue a ({self.h}, {self.w}) mask at row {self.rows}")
        if strip.shape[0] == 0:
            return
        if self._first is None:
            self._first = strip[0].copy()
        stacked = strip if self._last is None else np.concatenate([self._last[None], strip])
        top = self.rows - (self._last is not None)  # mask row of stacked[0]
        r, x = np.nonzero(stacked[1:] != stacked[:-1])
        self._changes.append(x.astype(np.int64) * self.h + (top + 1 + r))
        self._last = strip[-1].copy()
        self.rows += strip.shape[0]

    def counts(self) -> list[int]:
        """Run lengths, exactly ``rle_counts`` of the whole mask; every row must have been added."""
        if self.rows != self.h:
            raise ValueError(f"got {self.rows} of the mask's {self.h} rows; add the rest first")
        if self.h * self.w == 0:
            return [0]
        x = np.arange(1, self.w)
        wrap = x[self._last[x - 1] != self._first[x]].astype(np.int64) * self.h  # bottom of column x-1 -> top of x
        change = np.sort(np.concatenate([*self._changes, wrap]))
        runs = np.diff(np.concatenate(([0], change, [self.h * self.w]))).tolist()
        if self._first[0]:
            runs.insert(0, 0)
        return runs


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool mask -> ``{"size": [h, w], "counts": str}`` compressed COCO RLE.

    ``pycocotools`` returns ``counts`` as ``bytes``; this returns the same characters as ``str`` (json-ready).
    """
    mask = _check_mask(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts_to_string(rle_counts(mask))}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (compressed ``str``/``bytes`` counts or an uncompressed list of ints) -> (H, W) bool mask."""
    h, w, counts = _parse(rle)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()  # column-major -> C-contiguous (H, W)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of a COCO RLE (no decoding to a mask)."""
    _, _, counts = _parse(rle)
    return int(sum(counts[1::2]))


def _parse(rle: Mapping[str, Any]) -> tuple[int, int, list[int]]:
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise TypeError(f"rle must be a mapping with 'size' [h, w] and 'counts', got {type(rle).__name__} {rle!r:.80}")
    size = rle["size"]
    if len(size) != 2 or any(int(v) < 0 for v in size):
        raise ValueError(f"rle 'size' must be [h, w] with non-negative ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    raw = rle["counts"]
    counts = string_to_counts(raw) if isinstance(raw, (str, bytes, bytearray)) else [int(c) for c in raw]
    if any(c < 0 for c in counts):
        raise ValueError(f"rle counts must be non-negative run lengths, got a negative one in {counts[:20]}...")
    total = sum(counts)
    if total != h * w:
        raise ValueError(
            f"rle counts sum to {total} but size {h}x{w} needs {h * w}; the rle is corrupt or 'size' is not [h, w]"
        )
    return h, w, counts


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != bool:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise TypeError(f"mask must be (H, W) bool, got {got}; threshold first (prob >= 0.5)")
    return mask
