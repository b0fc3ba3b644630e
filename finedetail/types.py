"""Small shared value types and array checks (pure: numpy only).

Frames and dtypes used everywhere in finedetail:

- image: ``(H, W, 3) uint8`` RGB.
- probability map: ``(H, W) float32`` in ``[0, 1]``; a per-image state stores it as ``uint8`` (``to_u8``, see
  ``finedetail.state``).
- mask: ``(H, W) bool``.
- coordinates: continuous pixel frame, pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``; points ``(N, 2)`` as
  ``(x, y)``; boxes ``(N, 4)`` XYXY.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ComponentPrompt",
    "PromptPair",
    "check_image",
    "check_prob",
    "from_u8",
    "to_u8",
]


@dataclass(frozen=True, eq=False)
class ComponentPrompt:
    """Everything a prompted refiner gets for one connected component, in the frame of the image it was cut from.

    mask:   (H, W) bool, the component's pixels in the coarse mask.
    box:    (4,) float64 XYXY tight box, continuous frame.
    points: (P, 2) float64 (x, y) pixel centres; labels (P,) int32, 1 = foreground (just inside), 0 = background.
    logits: (256, 256) float32 SAM-style low-res mask input (see ``prompts.mask_to_sam_logits``) or None.
    """

    mask: np.ndarray
    box: np.ndarray
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mask.dtype != bool or self.mask.ndim != 2:
            raise TypeError(f"mask must be (H, W) bool, got {self.mask.dtype} {self.mask.shape}")
        if np.shape(self.box) != (4,):
            raise ValueError(f"box must be (4,) XYXY, got shape {np.shape(self.box)}")
        if len(self.points) != len(self.labels):
            raise ValueError(f"points and labels differ in length: {len(self.points)} != {len(self.labels)}")

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True, eq=False)
class PromptPair:
    """One in-context example: what to segment. image (H, W, 3) uint8; mask (H, W) bool (binary) or
    (H, W) uint8 class-index map (0 = background) when ``num_classes > 1``."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        check_image(self.image, what=f"prompt image {self.name!r}")
        if self.mask.shape != self.image.shape[:2]:
            raise ValueError(
                f"prompt {self.name!r}: mask is {self.mask.shape[1]}x{self.mask.shape[0]} but its image is "
                f"{self.image.shape[1]}x{self.image.shape[0]}; masks must have their image's size"
            )
        if not np.any(self.mask):
            raise ValueError(f"prompt {self.name!r}: mask is empty; a prompt must show at least one foreground pixel")


def check_image(image: np.ndarray, *, what: str = "image") -> np.ndarray:
    """Raise unless ``image`` is (H, W, 3) uint8; returns it unchanged."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"{what} must be (H, W, 3) uint8 RGB, got {got}; decode with finedetail.codecs.decode_image")
    return image


def check_prob(prob: np.ndarray, *, what: str = "probability map") -> np.ndarray:
    """Raise unless ``prob`` is (H, W) float32; returns it unchanged."""
    if not isinstance(prob, np.ndarray) or prob.dtype != np.float32 or prob.ndim != 2:
        got = f"{prob.dtype} {prob.shape}" if isinstance(prob, np.ndarray) else type(prob).__name__
        raise TypeError(f"{what} must be (H, W) float32 in [0, 1], got {got}")
    return prob


def to_u8(prob: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 0..255, rounded to nearest (0.5 -> 128, so ``from_u8(x) >= 0.5`` keeps 0.5)."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


def from_u8(prob_u8: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 [0, 1]."""
    return np.asarray(prob_u8, np.float32) / np.float32(255.0)
