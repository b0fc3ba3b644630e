"""Model input frames: resampling (`resize`), exact-size scaling (`Scale`) and the resize-long-side-then-pad frame of
SAM and SegGPT (`LongestSide`), each with its exact coordinate forms (pure: numpy + OpenCV).

The continuous pixel frame and the ``Transform`` methods are those of ``finedetail.transforms``: pixel ``(r, c)``
covers ``[c, c+1) x [r, r+1)``; points ``(N, 2)`` xy, boxes ``(N, 4)`` XYXY, sizes ``(h, w)``. ``Scale`` and
``LongestSide`` are exact on sizes and coordinates (``x' = x * w' / w``) and approximate on values (resampling, see
``resize``); ``interp`` is one of ``INTERPS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from finedetail.transforms import Transform, as_points, check_array, check_hw, check_interp

__all__ = ["LongestSide", "Scale", "long_side_size", "resize", "SquareFrame", "frame_logits"]

# dtypes cv2.resize handles natively for INTER_LINEAR / INTER_AREA; others go through float64.
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
# INTER_AREA upscaling in OpenCV rejects more than 4 channels, so wide arrays are resized in chunks.
_CV2_MAX_CHANNELS = 4


def resize(a: np.ndarray, size: Sequence[int], *, interp: str = "linear") -> np.ndarray:
    """Resample ``a`` ((H, W) or (H, W, C), any dtype) to ``size = (h, w)``; keeps dtype and channel layout.

    Pixel centres are aligned (half-pixel convention, like ``cv2.resize``): output pixel ``j`` samples input
    position ``(j + 0.5) * W / w - 0.5``, so the continuous frame scales by exactly ``w / W``.

    ``interp="linear"``, non-bool: ``cv2.INTER_AREA`` when neither side grows (anti-aliased downscaling: each output
    pixel is the mean of the input area it covers), otherwise ``cv2.INTER_LINEAR`` (bilinear, edge pixels replicated).
    Integer results are rounded and saturated by OpenCV; dtypes OpenCV lacks are resampled in float64 and cast back
    (rounded and clipped for integers).
    ``interp="linear"``, bool: the mask is resampled as float32 with the rule above and thresholded ``>= 0.5``, which
    keeps 1-px structures when downscaling by up to 2x where nearest-neighbour would drop every other line.
    ``interp="bilinear"``: ``cv2.INTER_LINEAR`` both ways (no area averaging when shrinking), the resampling of
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` that SAM's ``postprocess_masks`` uses
    for model outputs; dtypes and bool masks as for ``"linear"``.
    ``interp="nearest"``: output pixel ``j`` copies input pixel ``floor((j + 0.5) * W / w)`` (centre-aligned nearest,
    like ``cv2.INTER_NEAREST_EXACT``); any dtype, values are copied, never mixed.
    """
    a = check_array(a)
    h, w = check_hw(size, what="size")
    check_interp(interp)
    if a.shape[:2] == (h, w):
        return np.ascontiguousarray(a).copy()
    if interp == "nearest":
        rows = np.minimum(((np.arange(h) + 0.5) * (a.shape[0] / h)).astype(np.intp), a.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * (a.shape[1] / w)).astype(np.intp), a.shape[1] - 1)
        return np.ascontiguousarray(a[rows[:, None], cols[None, :]])
    if a.dtype == bool:
        return resize(a.astype(np.float32), (h, w), interp=interp) >= 0.5
    shrinks = h <= a.shape[0] and w <= a.shape[1]
    flag = cv2.INTER_AREA if (shrinks and interp == "linear") else cv2.INTER_LINEAR
    if a.dtype.type in _CV2_DTYPES:
        return _cv2_resize(a, (h, w), flag)
    out = _cv2_resize(a.astype(np.float64), (h, w), flag)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(a.dtype)


def _cv2_resize(a: np.ndarray, hw: tuple[int, int], flag: int) -> np.ndarray:
    dsize = (hw[1], hw[0])  # cv2 wants (width, height)
    if a.ndim == 2:
        return cv2.resize(np.ascontiguousarray(a), dsize, interpolation=flag)
    chunks = []
    for c0 in range(0, a.shape[2], _CV2_MAX_CHANNELS):
        part = cv2.resize(np.ascontiguousarray(a[:, :, c0:c0 + _CV2_MAX_CHANNELS]), dsize, interpolation=flag)
        chunks.append(part.reshape(hw[0], hw[1], -1))  # cv2 drops a trailing channel axis of length 1
    return np.ascontiguousarray(np.concatenate(chunks, axis=2))


@dataclass(frozen=True)
class Scale(Transform):
    """Resample from ``src = (h, w)`` to ``size = (h', w')``; build with ``Scale.to_size`` or ``Scale.by_factor``.

    Both sizes are recorded, so ``invert_image`` lands exactly on ``src`` whatever rounding made ``size``.
    Coordinates scale by the exact size ratio: ``x' = x * w' / w``, ``y' = y * h' / h`` (not by a nominal factor).
    Values are resampled by ``resize`` (``interp="linear"``: INTER_AREA when shrinking, INTER_LINEAR when growing;
    bool masks: threshold ``>= 0.5`` of that; ``interp="nearest"``: centre-aligned nearest). Arrays and ``hw``
    passed in must have the recorded size of their frame (``src`` for apply, ``size`` for invert).
    """

    src: tuple[int, int]
    size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", check_hw(self.src, what="Scale src"))
        object.__setattr__(self, "size", check_hw(self.size, what="Scale size"))

    @classmethod
    def to_size(cls, src_hw: Sequence[int], dst_hw: Sequence[int]) -> "Scale":
        """Scale an image of size ``src_hw`` to exactly ``dst_hw`` (aspect ratio may change)."""
        return cls(src=tuple(src_hw), size=tuple(dst_hw))

    @classmethod
    def by_factor(cls, src_hw: Sequence[int], factor: float) -> "Scale":
        """Scale ``src_hw`` by ``factor`` > 0: ``size = (max(1, round(h * factor)), max(1, round(w * factor)))``
        (Python's round: halves to even). Coordinates then use the exact ratio of the rounded sizes."""
        h, w = check_hw(src_hw, what="src_hw")
        if not (isinstance(factor, (int, float, np.number)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a finite number > 0, got {factor=}")
        return cls(src=(h, w), size=(max(1, round(h * factor)), max(1, round(w * factor))))

    @property
    def name(self) -> str:
        return f"scale:{self.src[0]}x{self.src[1]}->{self.size[0]}x{self.size[1]}"

    def inverse(self) -> "Scale":
        return Scale(src=self.size, size=self.src)

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        self._check_src(hw, "hw")
        return self.size

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        self._check_src(check_array(a).shape[:2], "array")
        return resize(a, self.size, interp=interp)

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int]) -> np.ndarray:
        self._check_src(hw, "hw")
        p = as_points(pts)
        # multiply before dividing: exact whenever the product is representable (integers, halves, ...)
        return np.stack([p[:, 0] * self.size[1] / self.src[1], p[:, 1] * self.size[0] / self.src[0]], axis=1)

    def _check_src(self, hw: Sequence[int], what: str) -> None:
        if check_hw(hw, what=what) != self.src:
            raise ValueError(
                f"this Scale maps size {self.src} to {self.size}, got an {what} of size {tuple(hw)}; build the "
                f"transform for this input with Scale.to_size({tuple(hw)}, dst_hw) (or invert from {self.size})"
            )


def long_side_size(hw: Sequence[int], long_side: int) -> tuple[int, int]:
    """``hw`` scaled so that its long side is ``long_side``: each side becomes ``int(side * long_side / max(h, w) +
    0.5)`` (rounded half up, as segment-anything's ``ResizeLongestSide.get_preprocess_shape``), at least 1."""
    h, w = check_hw(hw)
    if isinstance(long_side, bool) or not isinstance(long_side, (int, np.integer)) or long_side < 1:
        raise ValueError(f"long_side must be an int >= 1 (pixels), got {long_side=}")
    s = long_side / max(h, w)
    return max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))


@dataclass(frozen=True)
class LongestSide(Transform):
    """A model's input frame: resize ``src = (h, w)`` so its long side is ``long_side`` (``size``, see
    ``long_side_size``), then, for models that need a square, pad bottom/right with zeros to ``long_side`` x
    ``long_side``. SAM's frame is ``LongestSide(hw, 1024)`` (segment-anything's ``ResizeLongestSide`` plus the
    padding of ``Sam.preprocess``), whose 256 x 256 low-res mask grid covers the PADDED square; the SegGPT proxy's
    448 canvas is ``LongestSide(hw, 448)`` without padding.

    As a ``Transform`` it is ``Scale(src, size)``: ``apply_image`` / ``apply_coords`` / ``apply_boxes`` and their
    inverses are exact on sizes and coordinates (``x' = x * w' / w``) and resample values with ``resize``
    (``interp="linear"``: area when shrinking, bilinear when growing). The padding adds no coordinate change: the
    resized image sits at the square's origin. ``pad`` / ``unpad`` move arrays between the resized and the padded
    frame; ``to_low_res`` / ``from_low_res`` between the resized frame and a coarse grid over the padded square.
    """

    src: tuple[int, int]
    long_side: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", check_hw(self.src, what="LongestSide src"))
        long_side_size(self.src, self.long_side)  # validates long_side
        object.__setattr__(self, "long_side", int(self.long_side))

    @property
    def size(self) -> tuple[int, int]:
        """(h', w'): ``src`` resized, long side ``long_side`` (the valid part of the padded square)."""
        return long_side_size(self.src, self.long_side)

    @property
    def scale(self) -> Scale:
        return Scale(src=self.src, size=self.size)

    @property
    def name(self) -> str:
        return f"longest:{self.src[0]}x{self.src[1]}->{self.long_side}"

    def inverse(self) -> Scale:
        return self.scale.inverse()

    def out_size(self, hw: Sequence[int]) -> tuple[int, int]:
        return self.scale.out_size(hw)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        return self.scale.apply_image(a, interp=interp)

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int] | None = None) -> np.ndarray:
        """(N, 2) xy, ``src`` frame -> (N, 2) float64 xy, resized (= padded) frame. ``hw`` defaults to ``src``."""
        return self.scale.apply_coords(pts, self.src if hw is None else hw)

    def apply_boxes(self, boxes: np.ndarray, hw: Sequence[int] | None = None) -> np.ndarray:
        """(N, 4) XYXY, ``src`` frame -> (N, 4) float64 XYXY, resized (= padded) frame. ``hw`` defaults to ``src``."""
        return self.scale.apply_boxes(boxes, self.src if hw is None else hw)

    def pad(self, a: np.ndarray) -> np.ndarray:
        """(h', w'[, C]) array in the resized frame -> (long_side, long_side[, C]), zeros bottom/right, same dtype."""
        a = check_array(a)
        if a.shape[:2] != self.size:
            raise ValueError(f"pad takes an array of the resized size {self.size}, got {a.shape[:2]}; resize it with "
                             f"apply_image first")
        out = np.zeros((self.long_side, self.long_side, *a.shape[2:]), a.dtype)
        out[: self.size[0], : self.size[1]] = a
        return out

    def unpad(self, a: np.ndarray) -> np.ndarray:
        """(long_side, long_side[, C]) padded array -> its valid (h', w'[, C]) part (a C-contiguous copy)."""
        a = check_array(a)
        if a.shape[:2] != (self.long_side, self.long_side):
            raise ValueError(f"unpad takes a padded ({self.long_side}, {self.long_side}) array, got {a.shape[:2]}")
        return np.ascontiguousarray(a[: self.size[0], : self.size[1]])

    def to_low_res(self, a: np.ndarray, low_res: int) -> np.ndarray:
        """(h', w') array in the resized frame -> (low_res, low_res): padded with zeros, then area-averaged (SAM's
        mask-input grid: one cell = long_side / low_res padded pixels). ``low_res <= long_side``."""
        if isinstance(low_res, bool) or not isinstance(low_res, (int, np.integer)) or not 1 <= low_res <= self.long_side:
            raise ValueError(f"need 1 <= low_res <= long_side={self.long_side}, got {low_res=}")
        return resize(self.pad(a), (low_res, low_res))

    def from_low_res(self, low: np.ndarray, *, interp: str = "bilinear") -> np.ndarray:
        """A (n, n) map over the padded square -> ``src`` frame: upsampled to (long_side, long_side), padding cut
        off, resized to ``src``; all ``interp`` (default: SAM's ``postprocess_masks`` chain, bilinear both times)."""
        full = resize(low, (self.long_side, self.long_side), interp=interp)
        return resize(self.unpad(full), self.src, interp=interp)


# ------------------------------------------------------------------ SAM 2's input frame (transformers refiners)
# Input frames of the transformers refiners (pure: numpy / OpenCV, no torch).
#
# SAM and SAM-HQ share ``finedetail.transforms.LongestSide(hw, 1024)``: long side resized to 1024, aspect kept, zero
# padding bottom/right to 1024 x 1024; the 256 x 256 low-res grid covers the PADDED square.
#
# SAM 2 does not keep the aspect ratio: its image processor (transformers ``Sam2ImageProcessor``, ``size={"height":
# 1024, "width": 1024}``, ``do_pad`` off; the original ``SAM2Transforms`` likewise ``Resize((1024, 1024))``) stretches
# every image to 1024 x 1024, scales prompt coordinates per axis (``x * 1024 / w``, ``y * 1024 / h``) and upsamples
# its 256 x 256 low-res masks straight to the original (h, w) (``post_process_masks``: one bilinear
# ``F.interpolate``, no crop). ``SquareFrame`` is that frame with the interface ``LongestSide`` offers the refiners
# (``src``, ``size``, ``long_side``, ``apply_image``, ``apply_coords``, ``apply_boxes``, ``to_low_res``,
# ``from_low_res``), so one decoding path serves both.


@dataclass(frozen=True)
class SquareFrame:
    """``src = (h, w)`` stretched to ``side`` x ``side`` (aspect not kept, no padding): SAM 2's input frame.

    Coordinates scale per axis by the exact size ratio (``Scale``); the low-res grid (``to_low_res``) covers the
    whole square, and ``from_low_res`` goes straight back to ``src`` (SAM 2's ``post_process_masks``)."""

    src: tuple[int, int]
    side: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", check_hw(self.src, what="SquareFrame src"))
        if isinstance(self.side, bool) or not isinstance(self.side, (int, np.integer)) or self.side < 1:
            raise ValueError(f"side must be an int >= 1, got {self.side!r}")
        object.__setattr__(self, "side", int(self.side))

    @property
    def size(self) -> tuple[int, int]:
        return (self.side, self.side)

    @property
    def long_side(self) -> int:
        return self.side

    @property
    def scale(self) -> Scale:
        return Scale(src=self.src, size=self.size)

    def apply_image(self, a: np.ndarray, *, interp: str = "linear") -> np.ndarray:
        return self.scale.apply_image(a, interp=interp)

    def apply_coords(self, pts: np.ndarray, hw: Sequence[int] | None = None) -> np.ndarray:
        """(N, 2) xy, ``src`` frame -> (N, 2) float64 xy in the square."""
        return self.scale.apply_coords(pts, self.src if hw is None else hw)

    def apply_boxes(self, boxes: np.ndarray, hw: Sequence[int] | None = None) -> np.ndarray:
        """(N, 4) XYXY, ``src`` frame -> (N, 4) float64 XYXY in the square."""
        return self.scale.apply_boxes(boxes, self.src if hw is None else hw)

    def to_low_res(self, a: np.ndarray, low_res: int) -> np.ndarray:
        """(side, side) array in the square -> (low_res, low_res), area-averaged."""
        if a.shape[:2] != self.size:
            raise ValueError(f"to_low_res takes an array of the square's size {self.size}, got {a.shape[:2]}")
        if isinstance(low_res, bool) or not isinstance(low_res, (int, np.integer)) or not 1 <= low_res <= self.side:
            raise ValueError(f"need 1 <= low_res <= side={self.side}, got {low_res=}")
        return resize(a, (low_res, low_res))

    def from_low_res(self, low: np.ndarray, *, interp: str = "bilinear") -> np.ndarray:
        """A (n, n) map over the square -> ``src`` frame in one resize (SAM 2's ``post_process_masks``)."""
        return resize(low, self.src, interp=interp)


def frame_logits(mask: np.ndarray, frame: LongestSide | SquareFrame, *, low_res: int = 256,
                 scale: float = 20.0) -> np.ndarray:
    """A component's (H, W) bool mask -> (low_res, low_res) float32 mask-input logits in ``frame``'s low-res grid,
    with ``prompts.mask_to_sam_logits``' convention: resized into the frame (bilinear up / area down), area-averaged
    to the grid, ``logit = scale * (p - 0.5)``, padding (``LongestSide``) at ``-scale / 2``."""
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != frame.src:
        raise ValueError(f"mask must be (H, W) bool of the frame's source size {frame.src}, got {m.dtype} {m.shape}")
    p = frame.to_low_res(np.clip(frame.apply_image(m.astype(np.float32)), 0.0, 1.0), low_res)
    return (np.float32(scale) * (np.clip(p, 0.0, 1.0) - np.float32(0.5))).astype(np.float32)
