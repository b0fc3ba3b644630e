"""Test-time augmentation views: flips, 90-degree rotations, circular shifts and their compositions, each with its
exact inverse for arrays, points and boxes, plus the `Transform` protocol every frame shares (pure: numpy).

Frames. Every coordinate lives in the CONTINUOUS pixel frame: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)`` and
its centre is ``(c + 0.5, r + 0.5)``. Points are ``(N, 2)`` as ``(x, y)``; boxes are ``(N, 4)`` XYXY. Sizes are
``(h, w)`` tuples of ints.

Every transform is a small frozen dataclass with the same methods:

- ``out_size(hw)`` / ``in_size(hw)``: size after / before the transform.
- ``apply_image(a, *, interp="linear")`` / ``invert_image(a, *, interp="linear")``: ``a`` is ``(H, W)`` or
  ``(H, W, C)`` of any dtype (``uint8`` images, ``float32`` maps, ``bool`` masks); the result keeps dtype and channel
  layout and is C-contiguous. ``interp`` (one of ``INTERPS``, see ``finedetail.frames.resize``) only matters for
  the resampling frames ``Scale`` and ``LongestSide`` (``finedetail.frames``); the exact transforms here check it
  and ignore it, so callers can pass one value to any transform.
- ``apply_coords(pts, hw)``: ``pts`` ``(N, 2)`` xy in the frame of an input of size ``hw`` (the ORIGINAL size);
  ``invert_coords(pts, hw)``: ``pts`` in the TRANSFORMED frame, ``hw`` = the transformed size (``out_size`` of the
  original). Both return ``(N, 2) float64``.
- ``apply_boxes(boxes, hw)`` / ``invert_boxes(boxes, hw)``: same frames for ``(N, 4)`` XYXY; results are ``float64``
  and normalised (``x0 <= x1``, ``y0 <= y1``).
- ``inverse()``: the transform that undoes this one; ``name``: a short label (``parse_tta(t.name)`` rebuilds every
  transform except ``Scale``, whose label records its sizes).

Exactness. Flips, 90-degree rotations and circular shifts move whole pixels, so ``invert_image(apply_image(x)) == x``
bit for bit for every dtype, and coordinates move exactly where the pixels went. ``Scale`` is exact on sizes and
coordinates (``x' = x * w' / w``) and approximate on values (resampling, see ``finedetail.frames.resize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "INTERPS",
    "TTA_NAMES",
    "Compose",
    "HFlip",
    "Identity",
    "Rot90",
    "Shift",
    "Transform",
    "VFlip",
    "check_hw",
    "parse_tta",
]

INTERPS = ("linear", "bilinear", "nearest")
TTA_NAMES = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


# --------------------------------------------------------------------------------------------------------------
# checks


def check_hw(hw: Sequence[int], *, what: str = "hw") -> tuple[int, int]:
    """Return ``hw`` as a ``(h, w)`` tuple of positive ints, or raise ValueError."""
    try:
        h, w = hw
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (h, w) pair of positive ints, got {hw!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in (h, w)):
        raise ValueError(f"{what} must be a (h, w) pair of positive ints, got {hw!r}")
    return int(h), int(w)


def check_array(a: np.ndarray) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim not in (2, 3) or a.shape[0] < 1 or a.shape[1] < 1:
        got = f"shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"expected an (H, W) or (H, W, C) numpy array with H, W >= 1, got {got}")
    return a


def check_interp(interp: str) -> str:
    if interp not in INTERPS:
        raise ValueError(f"interp must be one of {INTERPS}, got {interp!r}")
    return interp


def as_points(pts: np.ndarray) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) as (x, y), got shape {p.shape}; reshape with pts.reshape(-1, 2)")
    return p


def as_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) XYXY, got shape {b.shape}; reshape with boxes.reshape(-1, 4)")
    return b


def normalise_boxes(b: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
         np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])],
        axis=1,
    )


def _boxes_via_corners(t: "Transform", boxes: np.ndarray, hw: tuple[int, int], *, invert: bool) -> np.ndarray:
    """Map a box's two opposite corners and renormalise: right for flips, rotations and scaling, which map
    axis-aligned rectangles to axis-aligned rectangles."""
    b = as_boxes(boxes)
    f = t.invert_coords if invert else t.apply_coords
    p0 = f(b[:, 0:2], hw)
    p1 = f(b[:, 2:4], hw)
    return normalise_boxes(np.concatenate([p0, p1], axis=1))


# --------------------------------------------------------------------------------------------------------------
# transforms


class Transform:
    """Shared behaviour of all transforms; subclasses are frozen dataclasses implementing ``out_size``,
    ``in_size``, ``apply_image``, ``apply_coords``, ``inverse`` and ``name``. The inverse methods delegate to
    ``inverse()``, so every pair is consistent by construction."""

    @property
    def name(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def inverse(self) -> "Transform":  # pragma: no cover - overridden
        raise NotImplementedError

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def in_size(self, hw: Sequence[int]) -> tuple[int, int]:
        """Size of the input that ``out_size`` maps to ``hw``."""
        return self.inverse().out_size(hw)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def apply_boxes(self, boxes: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        """(N, 4) XYXY in the original frame of size ``hw`` -> (N, 4) float64 XYXY in the transformed frame."""
        return _boxes_via_corners(self, boxes, check_hw(hw), invert=False)

    def invert_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        """Transformed-frame array -> original-frame array (same dtype and channel layout)."""
        return self.inverse().apply_image(a, interp=interp)

    def invert_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        """(N, 2) xy in the TRANSFORMED frame, ``hw`` = transformed size -> (N, 2) float64 in the original frame."""
        return self.inverse().apply_coords(pts, hw)

    def invert_boxes(self, boxes: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        """(N, 4) XYXY in the TRANSFORMED frame, ``hw`` = transformed size -> (N, 4) float64 in the original frame."""
        return self.inverse().apply_boxes(boxes, hw)


@dataclass(frozen=True)
class Identity(Transform):
    """Does nothing (returns copies, so callers may write to the result)."""

    @property
    def name(self) -> str:
        return "identity"

    def inverse(self) -> "Identity":
        return self

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        return check_hw(hw)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        check_interp(interp)
        return np.ascontiguousarray(check_array(a)).copy()

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        check_hw(hw)
        return as_points(pts).copy()


@dataclass(frozen=True)
class HFlip(Transform):
    """Mirror left-right: column ``c`` -> ``w - 1 - c``; continuous ``x' = w - x``."""

    @property
    def name(self) -> str:
        return "hflip"

    def inverse(self) -> "HFlip":
        return self

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        return check_hw(hw)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        check_interp(interp)
        return np.ascontiguousarray(check_array(a)[:, ::-1])

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        _, w = check_hw(hw)
        p = as_points(pts)
        return np.stack([w - p[:, 0], p[:, 1]], axis=1)


@dataclass(frozen=True)
class VFlip(Transform):
    """Mirror top-bottom: row ``r`` -> ``h - 1 - r``; continuous ``y' = h - y``."""

    @property
    def name(self) -> str:
        return "vflip"

    def inverse(self) -> "VFlip":
        return self

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        return check_hw(hw)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        check_interp(interp)
        return np.ascontiguousarray(check_array(a)[::-1])

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        h, _ = check_hw(hw)
        p = as_points(pts)
        return np.stack([p[:, 0], h - p[:, 1]], axis=1)


@dataclass(frozen=True)
class Rot90(Transform):
    """Rotate by ``k * 90`` degrees counter-clockwise, ``k`` in {1, 2, 3}: ``np.rot90(a, k)`` on axes (0, 1).

    Continuous frame, input of size (h, w): k=1: ``(x, y) -> (y, w - x)`` (output size (w, h));
    k=2: ``(x, y) -> (w - x, h - y)``; k=3: ``(x, y) -> (h - y, x)`` (output size (w, h)).
    """

    k: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k not in (1, 2, 3):
            raise ValueError(f"Rot90 k must be 1, 2 or 3 (quarter turns counter-clockwise), got {self.k=}; "
                             "use Identity() for k=0")
        object.__setattr__(self, "k", int(self.k))

    @property
    def name(self) -> str:
        return f"rot{90 * int(self.k)}"

    def inverse(self) -> "Rot90":
        return Rot90(4 - int(self.k))

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        h, w = check_hw(hw)
        return (w, h) if self.k % 2 else (h, w)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        check_interp(interp)
        return np.ascontiguousarray(np.rot90(check_array(a), int(self.k), axes=(0, 1)))

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        h, w = check_hw(hw)
        p = as_points(pts)
        x, y = p[:, 0], p[:, 1]
        if self.k == 1:
            return np.stack([y, w - x], axis=1)
        if self.k == 2:
            return np.stack([w - x, h - y], axis=1)
        return np.stack([h - y, x], axis=1)


@dataclass(frozen=True)
class Shift(Transform):
    """Circular shift by ``dy`` rows and ``dx`` columns: ``np.roll(a, (dy, dx), axis=(0, 1))``.

    Pixel ``(r, c)`` -> ``((r + dy) mod h, (c + dx) mod w)``; continuous points wrap the same way:
    ``x' = (x + dx) mod w`` in ``[0, w)``. Boxes: see ``apply_boxes``.
    """

    dy: int = 0
    dx: int = 0

    def __post_init__(self) -> None:
        for v in (self.dy, self.dx):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"Shift needs integer pixel offsets, got {self.dy=}, {self.dx=}; "
                                 "use Scale or round the offsets")
        object.__setattr__(self, "dy", int(self.dy))
        object.__setattr__(self, "dx", int(self.dx))

    @property
    def name(self) -> str:
        return f"shift:{int(self.dy)},{int(self.dx)}"

    def inverse(self) -> "Shift":
        return Shift(-int(self.dy), -int(self.dx))

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        return check_hw(hw)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        check_interp(interp)
        return np.ascontiguousarray(np.roll(check_array(a), (int(self.dy), int(self.dx)), axis=(0, 1)))

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        h, w = check_hw(hw)
        p = as_points(pts)
        return np.stack([_wrap(p[:, 0] + self.dx, w), _wrap(p[:, 1] + self.dy, h)], axis=1)

    def apply_boxes(self, boxes: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        """(N, 4) XYXY, original frame of size ``hw`` -> shifted frame.

        A box that still fits after wrapping moves rigidly. A box that straddles the wrap seam after the shift is
        split in two by the roll; it is returned as the covering box along that axis (``0 .. w`` or ``0 .. h``),
        which is exactly the tight box of the rolled pixels. Such boxes do not invert back to the original."""
        h, w = check_hw(hw)
        b = normalise_boxes(as_boxes(boxes))
        x0, x1 = _shift_interval(b[:, 0], b[:, 2], self.dx, w)
        y0, y1 = _shift_interval(b[:, 1], b[:, 3], self.dy, h)
        return np.stack([x0, y0, x1, y1], axis=1)


def _wrap(v: np.ndarray, n: int) -> np.ndarray:
    out = np.mod(v, n)
    # float mod can round a tiny negative up to exactly n; the frame is [0, n)
    return np.where(out >= n, out - n, out)


def _shift_interval(lo: np.ndarray, hi: np.ndarray, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    length = hi - lo
    new_lo = _wrap(lo + d, n)
    new_hi = new_lo + length
    split = (new_hi > n) | (length >= n)
    return np.where(split, 0.0, new_lo), np.where(split, float(n), new_hi)


@dataclass(frozen=True)
class Compose(Transform):
    """Apply ``transforms`` left to right; inverts right to left. ``Compose([])`` is the identity."""

    transforms: tuple[Transform, ...] = ()

    def __post_init__(self) -> None:
        ts = tuple(self.transforms)
        bad = [t for t in ts if not isinstance(t, Transform)]
        if bad:
            raise TypeError(f"Compose takes Transform instances, got {bad!r}; build them with parse_tta(name)")
        object.__setattr__(self, "transforms", ts)

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.transforms) if self.transforms else "identity"

    def inverse(self) -> "Compose":
        return Compose(tuple(t.inverse() for t in reversed(self.transforms)))

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        hw = check_hw(hw)
        for t in self.transforms:
            hw = t.out_size(hw)
        return hw

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        check_interp(interp)
        out = np.ascontiguousarray(check_array(a)).copy()
        for t in self.transforms:
            out = t.apply_image(out, interp=interp)
        return out

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        hw = check_hw(hw)
        p = as_points(pts).copy()
        for t in self.transforms:
            p, hw = t.apply_coords(p, hw), t.out_size(hw)
        return p

    def apply_boxes(self, boxes: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        # chained per step (not via corners) so a Shift inside keeps its seam rule
        hw = check_hw(hw)
        b = normalise_boxes(as_boxes(boxes))
        for t in self.transforms:
            b, hw = t.apply_boxes(b, hw), t.out_size(hw)
        return b


def parse_tta(name: str) -> Transform:
    """Transform from its name: one of ``TTA_NAMES`` (``"identity"``, ``"hflip"``, ``"vflip"``, ``"rot90"``,
    ``"rot180"``, ``"rot270"``), ``"shift:DY,DX"`` (integers, e.g. ``"shift:8,8"``, ``"shift:-4,0"``), or several
    joined by ``"+"`` (``"hflip+rot90"``: hflip first), which gives a ``Compose``. Whitespace is ignored."""
    if not isinstance(name, str):
        raise TypeError(f"TTA name must be a str, got {type(name).__name__}")
    parts = [p.strip().lower() for p in name.split("+")]
    if len(parts) > 1:
        return Compose(tuple(parse_tta(p) for p in parts))
    n = parts[0]
    fixed = {"identity": Identity(), "hflip": HFlip(), "vflip": VFlip(),
             "rot90": Rot90(1), "rot180": Rot90(2), "rot270": Rot90(3)}
    if n in fixed:
        return fixed[n]
    if n.startswith("shift:"):
        try:
            dy, dx = (int(v) for v in n[len("shift:"):].split(","))
        except ValueError:
            raise ValueError(f"shift TTA must look like 'shift:DY,DX' with integers, e.g. 'shift:8,8', got {name!r}")
        return Shift(dy, dx)
    raise ValueError(f"unknown TTA name {name!r}; valid: {', '.join(TTA_NAMES)}, 'shift:DY,DX' (e.g. 'shift:8,8'), "
                     "or several joined by '+'")
