"""Input frames of the transformers refiners (pure: numpy / OpenCV, no torch).

SAM and SAM-HQ share ``finedetail.transforms.LongestSide(hw, 1024)``: long side resized to 1024, aspect kept, zero
padding bottom/right to 1024 x 1024; the 256 x 256 low-res grid covers the PADDED square.

SAM 2 does not keep the aspect ratio: its image processor (transformers ``Sam2ImageProcessor``, ``size={"height":
1024, "width": 1024}``, ``do_pad`` off; the original ``SAM2Transforms`` likewise ``Resize((1024, 1024))``) stretches
every image to 1024 x 1024, scales prompt coordinates per axis (``x * 1024 / w``, ``y * 1024 / h``) and upsamples
its 256 x 256 low-res masks straight to the original (h, w) (``post_process_masks``: one bilinear
``F.interpolate``, no crop). ``SquareFrame`` is that frame with the interface ``LongestSide`` offers the refiners
(``src``, ``size``, ``long_side``, ``apply_image``, ``apply_coords``, ``apply_boxes``, ``to_low_res``,
``from_low_res``), so one decoding path serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from finedetail.transforms import LongestSide, Scale, check_hw, resize

__all__ = ["SquareFrame", "frame_logits"]


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
