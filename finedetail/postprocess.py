"""The post-processing step of one class's fused map: guided filter -> (dense CRF) -> threshold -> morphology.

This is the CPU "fuse" stage's library half: a guided filter (``finedetail.guided``) snaps the soft map to the
image's edges, an optional dense CRF (``finedetail.crf``) sharpens it further, a threshold makes it a mask, and gentle
morphology (``finedetail.morphology``) cleans the mask without erasing thin structures (fur, wires, vessels).
`PostprocessConfig` holds the knobs; `one_class_per_pixel` is the multi-class rule applied after it.

Frames and dtypes:

- image / guide: ``(H, W, 3) uint8 RGB``, the guided filter's colour guide and the CRF's appearance term.
- probability map: ``(H, W) float32`` in ``[0, 1]``, same frame as the image.
- mask: ``(H, W) bool``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from finedetail.crf import dense_crf
from finedetail.guided import fast_guided_filter
from finedetail.knobs import knob
from finedetail.morphology import close, drop_components, fill_holes, open_plain
from finedetail.types import check_image, check_prob

__all__ = [
    "OPENINGS",
    "PostprocessConfig",
    "one_class_per_pixel",
    "postprocess",
]

OPENINGS = ("reconstruction", "plain", "none")


@dataclass(frozen=True)
class PostprocessConfig:
    """Knobs of ``postprocess``. Sizes in pixels of the map's (original image) frame.

    guided:       run the guided filter with the image as colour guide.
    radius, eps:  guided filter window radius (px) and regulariser ([0, 1]-guide units).
    subsample:    1 = exact guided filter; s > 1 = fast guided filter at 1/s resolution (``fast_guided_filter``,
                  capped at radius). Default 4: ~5x faster than exact at 2048^2 (the CPU fuse step must keep
                  up with the GPU stages); mean |difference| to the exact filter ~1e-3 on the bench maps. On
                  the synthetic scenes (Gaussian-blurred truth as the soft map) it also recovers far more thin
                  structure than the exact filter: the coefficients fitted at low resolution are applied to the
                  full-resolution guide, whose thin lines have more contrast than the shrunk guide's.
    threshold:    foreground iff filtered prob >= threshold.
    close_size:   closing disc "radius" s (diameter 2s + 1 px; 0 = off; 1 = 3x3); at most 3 so strands don't merge.
    hole_area:    holes of area <= hole_area are filled (0 = off).
    opening:      "reconstruction" (keeps thin parts attached to a body, removes free-standing ones thinner than
                  the disc), "plain" (erases all thin parts), or "none" (keeps free-standing wires; islands are
                  still removed by area).
    opening_size: erosion disc "radius" of the opening, 1..3 (1 = 3x3: parts without a 3x3 core are debris).
    island_area:  foreground components of area <= island_area are removed (0 = off).
    crf, crf_iters: dense CRF after the guided filter (needs the 'crf' extra) and its mean-field iterations.
    """

    guided: bool = knob(True, "run the guided filter on the fused map with the image as colour guide")
    radius: int = knob(4, "guided filter window radius (px)", range=">= 1")
    eps: float = knob(1e-3, "guided filter regulariser (guide in [0, 1] units): larger smooths more across weak "
                            "edges", range="> 0")
    subsample: int = knob(4, "1: exact guided filter; s > 1: fast guided filter fitted at 1/s resolution (capped "
                             "at radius), ~5x faster at 2048^2", range=">= 1")
    threshold: float = knob(0.5, "a pixel is foreground iff its filtered probability is at least this",
                            range="in (0, 1)")
    close_size: int = knob(1, "closing disc radius s (diameter 2s + 1 px; 1 = 3x3; 0 = off), small so strands do "
                              "not merge", range="0..3")
    hole_area: int = knob(64, "holes of at most this many px are filled (0 = off)", range=">= 0")
    opening: str = knob("reconstruction", "'reconstruction' removes free-standing parts thinner than the disc but "
                                          "keeps thin parts attached to a body, 'plain' erases every thin part, "
                                          "'none' keeps free-standing wires", range=f"one of: {', '.join(OPENINGS)}")
    opening_size: int = knob(1, "erosion disc radius of the opening (1 = 3x3: parts without a 3x3 core are "
                                "debris)", range="1..3")
    island_area: int = knob(16, "foreground components of at most this many px are removed (0 = off)",
                            range=">= 0")
    crf: bool = knob(False, "dense CRF after the guided filter (needs the 'crf' extra)")
    crf_iters: int = knob(5, "mean-field iterations of the dense CRF", range=">= 1")

    def __post_init__(self) -> None:
        for name in ("guided", "crf"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {name}={value!r}")
        for name, lo, hi in (
            ("radius", 1, None),
            ("subsample", 1, None),
            ("close_size", 0, 3),
            ("hole_area", 0, None),
            ("opening_size", 1, 3),
            ("island_area", 0, None),
            ("crf_iters", 1, None),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < lo
                or (hi is not None and value > hi)
            ):
                rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be an int {rng}, got {name}={value!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite float > 0, got eps={self.eps!r}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be a float in (0, 1), got threshold={self.threshold!r}")
        if self.opening not in OPENINGS:
            raise ValueError(f"opening must be one of {OPENINGS}, got opening={self.opening!r}")


def _morphology(mask: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    # Close first so 1-px gaps in a wire are bridged before area filters judge its pieces; islands last so
    # debris left by the opening is also swept.
    if cfg.close_size:
        mask = close(mask, size=cfg.close_size)
    if cfg.hole_area:
        mask = fill_holes(mask, max_area=cfg.hole_area)
    if cfg.opening == "plain":
        mask = open_plain(mask, size=cfg.opening_size)
    # Opening by reconstruction and island removal both drop whole components: one labelling does both.
    erode = cfg.opening_size if cfg.opening == "reconstruction" else 0
    return drop_components(mask, max_area=cfg.island_area, erode_size=erode)


def postprocess(
    soft: np.ndarray, image: np.ndarray, cfg: PostprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Guided filter -> (dense CRF) -> threshold -> morphology, for one class.

    soft:  (H, W) float32 in [0, 1], e.g. an ensemble's soft map (its >= 0.5 is the ensemble's decision).
    image: (H, W, 3) uint8 RGB, same frame; it is the guided filter's colour guide and the CRF's appearance term.
    Returns ``(prob, mask)``: prob (H, W) float32 in [0, 1] after the guided filter (and CRF), before morphology;
    mask (H, W) bool = morphology(prob >= cfg.threshold). Morphology may make mask differ from
    ``prob >= threshold`` (filled holes, removed islands); the mask is the stage's decision.
    """
    cfg = PostprocessConfig() if cfg is None else cfg
    check_prob(soft, what="soft map")
    check_image(image)
    if soft.shape != image.shape[:2]:
        raise ValueError(
            f"soft map is {soft.shape} but the image is {image.shape[:2]}; map it back to the image frame first"
        )
    if cfg.guided:
        prob = fast_guided_filter(image, soft, radius=cfg.radius, eps=cfg.eps, subsample=cfg.subsample)
        np.clip(prob, 0.0, 1.0, out=prob)
    else:
        prob = soft.copy()
    if cfg.crf:
        prob = dense_crf(image, prob, iters=cfg.crf_iters)
    mask = prob >= np.float32(cfg.threshold)
    return prob, _morphology(mask, cfg)


def one_class_per_pixel(mask: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The multi-class rule: ``mask`` (C, H, W) bool, each class post-processed on its own, keeps at each pixel only
    the class of highest ``prob`` (C, H, W) among those set there (ties -> lower index). In place; returns ``mask``.
    One class: unchanged."""
    if mask.shape[0] > 1:
        winner = np.argmax(np.where(mask, prob, -1.0), axis=0)
        mask &= np.arange(mask.shape[0])[:, None, None] == winner[None]
    return mask
