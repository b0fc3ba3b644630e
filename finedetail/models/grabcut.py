"""The weight-free backend's GrabCut refiner (``--backend classical``, ``refiner_model: grabcut``): ``cv2.grabCut``
seeded from each component's prompts; deterministic, CPU only, pure numpy + OpenCV.

``GrabCutRefiner`` (PromptedRefiner)
    ``encode`` shrinks the image so its long side is at most ``input_size`` (1024, like SAM; never enlarged) and
    keeps it. ``refine`` runs ``cv2.grabCut`` (``GC_INIT_WITH_MASK``, ``iterations`` rounds) per component on a region
    of interest = the box expanded by ``margin = max(min_margin, box_margin * long side of the box)`` on each side,
    plus a ``ring`` of px around it. Seeds, later rules overriding earlier ones:

    1. the ring outside the expanded box, and inside it every pixel farther than ``band = max(min_band, band_frac *
       long side of the box)`` px from the coarse mask and the positive points: definite background (GrabCut's
       background samples; the band bounds how far GrabCut may grow the component). The band is a fraction of the
       box, not of the coarse area, so it is scale-covariant: the same object seen at 2x or zoomed in a crop gets
       the same reach relative to its size, and a thin component (a vessel tree, a wire, whose area is tiny for
       its extent) reaches its own thin parts that the coarse mask missed;
    2. inside the expanded box, within the band: probable background;
    3. the component's coarse mask (resized to the working resolution, area value >= 0.25) inside the expanded box:
       probable foreground;
    4. positive points: definite foreground disks of ``point_radius`` px, clipped to the expanded box (foreground
       outside the expanded box is impossible, up to the final bilinear resize's reach of one working pixel: the
       box wins over a point outside it);
    5. negative points: definite background disks of ``point_radius`` px.

    The result is 1 where GrabCut labels ``GC_FGD`` or ``GC_PR_FGD``, else 0, in the working resolution; it is
    resized bilinearly to the image frame, which is its only softness (no extra smoothing). When the seeds leave
    fewer than ``min_samples`` pixels on either side (GrabCut cannot fit its colour models), or GrabCut raises, the
    component's coarse mask is returned instead. ``prompt.logits`` are not used (GrabCut has no mask-logit input;
    the coarse mask comes from ``prompt.mask``). ``cv2.setRNGSeed(seed)`` before every call makes it deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from finedetail.frames import LongestSide
from finedetail.models.weightfree import WorkingFrameRefiner
from finedetail.types import ComponentPrompt

__all__ = ["GrabCutConfig", "GrabCutEmbedding", "GrabCutRefiner", "grabcut_component"]


@dataclass(frozen=True)
class GrabCutConfig:
    """Knobs of the GrabCut refiner (module docstring). Pixel sizes are working-resolution pixels."""

    input_size: int = 1024
    iterations: int = 3
    box_margin: float = 0.15
    min_margin: int = 8
    band_frac: float = 0.5
    min_band: int = 8
    ring: int = 16
    point_radius: int = 2
    min_samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16 px, got {self.input_size=}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations=}")
        if self.box_margin < 0 or self.min_margin < 0 or self.point_radius < 0:
            raise ValueError(f"box_margin, min_margin and point_radius must be >= 0, got {self.box_margin=}, "
                             f"{self.min_margin=}, {self.point_radius=}")
        if self.band_frac < 0 or self.min_band < 1:
            raise ValueError(f"band_frac must be >= 0 and min_band >= 1 px, got {self.band_frac=}, {self.min_band=}")
        if self.ring < 1:
            raise ValueError(f"ring must be >= 1 px (GrabCut needs definite background), got {self.ring=}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples=}")


@dataclass(frozen=True, eq=False)
class GrabCutEmbedding:
    """GrabCutRefiner's encoding of one image. frame: its working frame (``frame.src`` the image's (h, w),
    ``frame.size`` = (h', w'), long side <= input_size). image: (h', w', 3) uint8, the image in that frame."""

    frame: LongestSide
    image: np.ndarray

    @property
    def hw(self) -> tuple[int, int]:
        return self.frame.src


def _expanded_box(box: np.ndarray, hw: tuple[int, int], cfg: GrabCutConfig) -> tuple[int, int, int, int]:
    """Box (XYXY, working frame) -> expanded integer box (x0, y0, x1, y1), clipped to ``hw``."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    m = max(cfg.min_margin, cfg.box_margin * max(x1 - x0, y1 - y0))
    h, w = hw
    return (max(0, int(np.floor(x0 - m))), max(0, int(np.floor(y0 - m))),
            min(w, int(np.ceil(x1 + m))), min(h, int(np.ceil(y1 + m))))


def grabcut_component(image: np.ndarray, mask: np.ndarray, box: np.ndarray, points: np.ndarray, labels: np.ndarray,
                      cfg: GrabCutConfig) -> np.ndarray | None:
    """GrabCut one component at the working resolution.

    image: (h, w, 3) uint8 working frame; mask: (h, w) bool coarse component (working frame); box: (4,) XYXY and
    points: (P, 2) xy, both already in the working frame; labels (P,) 1 = positive, 0 = negative.
    Returns (h, w) bool, or None when the seeds are degenerate or GrabCut fails (the caller falls back).
    """
    h, w = mask.shape
    bx0, by0, bx1, by1 = _expanded_box(box, (h, w), cfg)
    if bx1 <= bx0 or by1 <= by0:
        return None
    rx0, ry0 = max(0, bx0 - cfg.ring), max(0, by0 - cfg.ring)
    rx1, ry1 = min(w, bx1 + cfg.ring), min(h, by1 + cfg.ring)
    seeds = np.full((ry1 - ry0, rx1 - rx0), cv2.GC_BGD, np.uint8)
    inner = (slice(by0 - ry0, by1 - ry0), slice(bx0 - rx0, bx1 - rx0))
    in_box = np.zeros(seeds.shape, bool)
    in_box[inner] = True
    roi_mask = mask[ry0:ry1, rx0:rx1] & in_box
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    labs = np.asarray(labels).reshape(-1)
    centres = [(int(np.floor(x)) - rx0, int(np.floor(y)) - ry0) for x, y in pts]
    positive = np.zeros(seeds.shape, np.uint8)
    for c, lab in zip(centres, labs):
        if lab == 1:
            cv2.circle(positive, c, cfg.point_radius, 1, thickness=-1)
    positive = (positive > 0) & in_box
    source = roi_mask | positive
    band = max(float(cfg.min_band), cfg.band_frac * max(float(box[2] - box[0]), float(box[3] - box[1])))
    if source.any():
        dist = cv2.distanceTransform((~source).astype(np.uint8), cv2.DIST_L2, 3)
        seeds[in_box & (dist <= band)] = cv2.GC_PR_BGD
    seeds[roi_mask] = cv2.GC_PR_FGD
    seeds[positive] = cv2.GC_FGD
    for c, lab in zip(centres, labs):
        if lab == 0:
            cv2.circle(seeds, c, cfg.point_radius, int(cv2.GC_BGD), thickness=-1)
    fg = np.count_nonzero((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD))
    if fg < cfg.min_samples or seeds.size - fg < cfg.min_samples:
        return None
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(cfg.seed)
    try:
        cv2.grabCut(np.ascontiguousarray(image[ry0:ry1, rx0:rx1]), seeds, None, bgd, fgd, cfg.iterations,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    out = np.zeros((h, w), bool)
    out[ry0:ry1, rx0:rx1] = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    return out


class GrabCutRefiner(WorkingFrameRefiner):
    """Weight-free prompted refiner (PromptedRefiner) built on ``cv2.grabCut``; method in the module docstring.

    ``encode`` counts one encoder pass per image; ``refine`` returns (N, H, W) float32 in [0, 1], image frame.
    """

    name = "classical-grabcut"
    embedding_type = GrabCutEmbedding

    def __init__(self, *, config: GrabCutConfig | None = None) -> None:
        super().__init__(config or GrabCutConfig())

    def _embed(self, image: np.ndarray, frame: LongestSide) -> GrabCutEmbedding:
        return GrabCutEmbedding(frame=frame, image=image)

    def refine(self, embedding: GrabCutEmbedding, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All prompts of one image (image frame) -> (N, H, W) float32 in [0, 1], image frame."""
        frame = self._frame_of(embedding, prompts)
        out = np.zeros((len(prompts), *frame.src), np.float32)
        for i, p in enumerate(prompts):
            small = frame.apply_image(p.mask.astype(np.float32)) >= 0.25
            box = frame.apply_boxes(np.asarray(p.box, np.float64).reshape(1, 4))[0]
            pts = frame.apply_coords(np.asarray(p.points, np.float64).reshape(-1, 2))
            cut = grabcut_component(embedding.image, small, box, pts, p.labels, self.config)
            out[i] = p.mask if cut is None else self.to_image(frame, cut)
        return out
