"""Thin-only classes in multi-class runs (pure: numpy + OpenCV; models only through their protocol).

Why a class made only of thin parts (wires as a class of their own beside the poles, vessels beside an organ) was
never found, stage by stage (``python -m job.bench quality_classes``, before this module: its thin recall 0.0, 80.7 %
of its centre lines labelled as the other class):

1. **Coarse stage: no proposal.** SegGPT sees the image on a 448-px canvas through 16-px patches. A 1-3 px part of
   a 1024-px image is under 1.5 canvas px wide, a tenth of a patch: its class probability stays far below 0.5, and
   the refinement can only sharpen what the coarse stage proposes, so the class gets no component and no prompt.
   A blob class does not suffer: its parts fill patches.
2. **Refine stage: the refiner is class-agnostic.** SAM, prompted by the blob class's components (box, points, mask
   input), returns every object its prompt selects: a pole's mask grows along the wires attached to it, an organ's
   along its vessels. That growth was credited to the class whose prompt caused it, and with no competing proposal
   the fuse step's one-class-per-pixel argmax had nothing to weigh against it: the thin class's pixels ended up in
   the blob class.

Neither is a thresholding or argmax detail of the proxies: both follow from the real models' roles (a 448-px
in-context segmenter that knows the classes, a 1024-px promptable refiner that does not).

The fix, one rule per cause:

- ``ThinClassCoarse`` (coarse stage): a class is *thin-only* when its prompt masks show no part wide enough for the
  coarse model's canvas (``thin_only_classes``: the 95th percentile of the local width along the class's centre
  lines, shrunk to the canvas, below ``MultiClassConfig.thin_width`` = half a patch). The coarse map of such a class is
  complemented (pixel-wise max) by a pixel-resolution model fitted on the same prompts, the class against everything
  else, background and the other classes alike (``finedetail.models.thin.PixelSegmenter``: colour, contrast and
  multi-scale ridge features, at the image's own resolution up to 1024 px). It learns the class's appearance where
  SegGPT cannot see it, from the same examples; SegGPT still decides the blob classes. ``thin_threshold`` optionally
  lowers the coarse threshold of thin-only classes (for a coarse model whose weak response on thin parts is still
  above the background's; the proxy's is exactly 0, so it cannot help there).
- ``handoff`` (refine and crop steps): what the refiner adds to class c beyond c's coarse map is dropped wherever
  another class claims the pixel (its coarse or refined map >= 0.5) with a higher coarse probability than c's: the
  class-aware coarse stage arbitrates between classes, the class-agnostic refiner only sharpens. Without it, a
  thin-only class's refinement (boxes spanning the scene, points on wires touching poles) takes the blob class's
  narrow parts just as the blob class's took the wires, and the fuse step's argmax breaks the tie by class order.
  A binary task is untouched (no other class).

``python -m job.bench quality_classes --ablation`` measures the candidates against each other (README, Quality,
"Thin-only classes"), and ``python -m job.bench real --data data/drive-od`` runs a real two-class set.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import cv2
import numpy as np

from finedetail.config import MultiClassConfig
from finedetail.types import PromptPair

__all__ = ["ThinClassCoarse", "class_widths", "handoff", "lift_threshold", "thin_only_classes"]


def class_widths(mask: np.ndarray, *, q: float = 95.0) -> float:
    """Local width of the parts of ``mask`` (H, W) bool, in px: the ``q``-th percentile of ``2 * d - 1`` over its
    centre-line pixels (``cv2.ximgproc.thinning``), d = Euclidean distance to the background (a 1-px line is 1 px
    wide, a 3-px one 3 px). 0.0 for an empty mask."""
    m = np.asarray(mask, bool)
    if not m.any():
        return 0.0
    u8 = np.ascontiguousarray(m, np.uint8)
    framed = cv2.copyMakeBorder(u8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(framed, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    skel = cv2.ximgproc.thinning(u8 * 255) > 0
    widths = 2.0 * dist[skel if skel.any() else m] - 1.0
    return float(np.percentile(widths, q))


def thin_only_classes(prompts: Sequence[PromptPair], num_classes: int, *, canvas: int, thin_width: float
                      ) -> tuple[int, ...]:
    """Indices (0-based) of the classes the prompts show as thin-only: each prompt's class mask width
    (``class_widths``) shrunk by ``canvas / long side of the prompt image`` (the coarse model's view), the widest
    over the prompts, below ``thin_width`` canvas px. A class no prompt shows is not thin-only. Binary tasks: ()."""
    if num_classes < 2:
        return ()
    out = []
    for c in range(num_classes):
        seen = [class_widths(np.asarray(p.mask) == c + 1) * canvas / max(p.image.shape[:2])
                for p in prompts if np.any(np.asarray(p.mask) == c + 1)]
        if seen and max(seen) < thin_width:
            out.append(c)
    return tuple(out)


def lift_threshold(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Piecewise-linear map of probabilities (any shape, float) taking ``threshold`` to 0.5, 0 to 0 and 1 to 1, so
    ``lift_threshold(p, t) >= 0.5`` exactly where ``p >= t``. float32."""
    p = np.asarray(prob, np.float32)
    t = np.float32(threshold)
    return np.where(p < t, p * (0.5 / t), 0.5 + (p - t) * (0.5 / (1.0 - t))).astype(np.float32)


def handoff(refined: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The class hand-off rule (module docstring). refined, coarse: (C, h, w) float32 in [0, 1], one frame; refined
    is each class's refiner map already united with (or at least) its coarse map. Class c falls back to its coarse
    value wherever another class k claims the pixel, after refinement (``refined[k] >= 0.5``) or already in the
    coarse map (``coarse[k] >= 0.5``), with a higher coarse probability (``coarse[k] > coarse[c]``): a pixel two
    classes' refinements both take goes to the class the class-aware coarse map prefers, even where both coarse
    values are low (a narrow part neither class's coarse mask resolved). Every class is judged on the maps as given
    (simultaneous, order-free). In place; returns ``refined``. C == 1: unchanged."""
    n = coarse.shape[0]
    if n < 2:
        return refined
    claims = (refined >= 0.5) | (coarse >= 0.5)
    lose = np.zeros(refined.shape, bool)
    for c in range(n):
        for k in range(n):
            if k != c:
                lose[c] |= claims[k] & (coarse[k] > coarse[c])
    refined[lose] = coarse[lose]
    return refined


def _pixel_model(config: Any = None) -> Any:
    from finedetail.models.thin import PixelConfig, PixelSegmenter

    return PixelSegmenter(config=config or PixelConfig())


class ThinClassCoarse:
    """A CoarseSegmenter: ``base`` (SegGPT, or any coarse model) with thin-only classes complemented (module
    docstring). ``detail_factory() -> CoarseSegmenter`` builds one binary pixel-resolution model per thin-only class
    (default ``PixelSegmenter``); it is used only when ``config.thin_model == "pixel"``.

    ``encoder_passes`` is the base model's (the pixel model runs no network). ``thin`` lists the thin-only classes
    found by the last ``set_prompts``.
    """

    def __init__(self, base: Any, config: MultiClassConfig | None = None, *,
                 detail_factory: Callable[[], Any] | None = None) -> None:
        self.base = base
        self.config = config or MultiClassConfig()
        self.name = f"{base.name}+thin-classes"
        self.input_size = base.input_size
        self.thin: tuple[int, ...] = ()
        self._detail: dict[int, Any] = {}
        self._factory = detail_factory or _pixel_model

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def encoder_passes(self) -> int:
        return self.base.encoder_passes

    def set_prompts(self, prompts: Sequence[PromptPair], *, num_classes: int = 1) -> None:
        """The base model's prompts; then the thin-only classes and, with ``thin_model="pixel"``, their models."""
        self.base.set_prompts(prompts, num_classes=num_classes)
        self.thin = thin_only_classes(prompts, num_classes, canvas=self.base.input_size,
                                      thin_width=self.config.thin_width)
        self._detail = {}
        if self.config.thin_model == "pixel":
            for c in self.thin:
                model = self._factory()
                model.set_prompts([PromptPair(image=p.image, mask=np.asarray(p.mask) == c + 1, name=p.name)
                                   for p in prompts], num_classes=1)
                self._detail[c] = model

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: (H, W, 3) uint8 each -> (num_classes, H, W) float32 in [0, 1], that image's frame."""
        maps = self.base.predict(images)
        if not self.thin:
            return maps
        extra = {c: m.predict(images) for c, m in self._detail.items()}
        for i, m in enumerate(maps):
            for c in self.thin:
                if self.config.thin_threshold != 0.5:
                    m[c] = lift_threshold(m[c], self.config.thin_threshold)
                if c in extra:
                    m[c] = np.maximum(m[c], extra[c][i][0])
        return maps
