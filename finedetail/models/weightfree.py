"""The shell the weight-free models share: their working frame, prompt labels, the in-context per-pixel segmenter
and the prompted-refiner scaffolding (pure numpy + OpenCV, no weights).

The working frame of an image is a ``finedetail.frames.LongestSide``: long side ``input_size`` (rounded half up),
or the image's own size when a model never enlarges (``allow_upscale=False``) and the image is already small
enough. Images go in with ``frame.apply_image`` (area averaging when shrinking, bilinear when growing), results come
back with ``frame.invert_image`` and prompt coordinates move with ``frame.apply_coords`` / ``apply_boxes``.
``finedetail.models.classical`` (colour + texture), ``finedetail.models.grabcut`` and ``finedetail.models.thin``
build on it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from finedetail.frames import LongestSide
from finedetail.transforms import check_hw
from finedetail.types import ComponentPrompt, PromptPair, check_image

__all__ = ["PixelClassifierSegmenter", "WorkingFrameRefiner", "prompt_labels", "working_frame"]


def working_frame(hw: Sequence[int], long_side: int, *, allow_upscale: bool) -> LongestSide:
    """The working frame of an image of size ``hw``: long side ``long_side`` (``frames.long_side_size``), or
    ``hw`` itself when its long side is already at most ``long_side`` and ``allow_upscale`` is False."""
    h, w = check_hw(hw)
    return LongestSide((h, w), long_side if allow_upscale else min(long_side, max(h, w)))


def prompt_labels(mask: np.ndarray, cls: int | None, frame: LongestSide) -> np.ndarray:
    """Prompt mask (image frame) -> ``frame.size`` int8 training labels in the working frame: 1 fg, 0 bg, -1 mixed
    (resized value in (0.25, 0.75)). ``cls`` None: any nonzero is fg; else the pixels equal to ``cls``."""
    fg = (mask != 0) if cls is None else (mask == cls)
    m = frame.apply_image(fg.astype(np.float32))
    lab = np.full(frame.size, -1, np.int8)
    lab[m >= 0.75] = 1
    lab[m <= 0.25] = 0
    return lab


class PixelClassifierSegmenter:
    """Shared shell of the in-context per-pixel segmenters (CoarseSegmenter): one model per class fitted on the
    prompts' working-frame features and labels, probabilities mapped back to each image's frame.

    Subclasses set ``name``, ``allow_upscale`` and ``config`` (with ``input_size``) and implement
    ``_features(working image) -> features``, ``_fit(features list, labels list) -> model`` (ValueError when a
    class lacks samples) and ``_prob(model, features) -> (h', w') float32``. ``predict`` counts one encoder pass per
    image.
    """

    name = "classical-pixel-classifier"
    allow_upscale = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.input_size = config.input_size
        self.num_classes = 1
        self.encoder_passes = 0
        self._models: list[Any] | None = None

    def _features(self, image: np.ndarray) -> Any:
        raise NotImplementedError

    def _fit(self, feats: list[Any], labels: list[np.ndarray]) -> Any:
        raise NotImplementedError

    def _prob(self, model: Any, feats: Any) -> np.ndarray:
        raise NotImplementedError

    def _framed(self, image: np.ndarray) -> tuple[Any, LongestSide]:
        """(features of ``image`` in its working frame, that frame)."""
        frame = working_frame(image.shape[:2], self.config.input_size, allow_upscale=self.allow_upscale)
        return self._features(frame.apply_image(image)), frame

    def set_prompts(self, prompts: Sequence[PromptPair], *, num_classes: int = 1) -> None:
        """Fit the classifier(s) on the prompt pairs. Binary (``num_classes=1``): mask bool or any nonzero = fg.
        ``num_classes > 1``: masks are (H, W) integer class maps, 0 = background, 1..num_classes."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
        if len(prompts) == 0:
            raise ValueError("set_prompts needs at least one PromptPair (image + mask) saying what to segment, got 0")
        feats = [self._framed(p.image) for p in prompts]
        classes: list[int | None] = [None] if num_classes == 1 else list(range(1, num_classes + 1))
        models = []
        for cls in classes:
            labels = [prompt_labels(p.mask, cls, frame) for p, (_, frame) in zip(prompts, feats)]
            try:
                models.append(self._fit([f for f, _ in feats], labels))
            except ValueError as e:
                raise ValueError(f"class {cls or 1}: {e}") from None
        self._models = models
        self.num_classes = int(num_classes)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: (H, W, 3) uint8 each -> (num_classes, H, W) float32 in [0, 1], that image's frame."""
        if self._models is None:
            raise RuntimeError(f"{type(self).__name__}.predict called before set_prompts; "
                               "call set_prompts(prompts) with at least one PromptPair first")
        out = []
        for image in images:
            check_image(image)
            feats, frame = self._framed(image)
            self.encoder_passes += 1
            maps = [np.clip(frame.invert_image(self._prob(m, feats)), 0.0, 1.0) for m in self._models]
            out.append(np.stack(maps).astype(np.float32))
        return out


class WorkingFrameRefiner:
    """Shared shell of the weight-free prompted refiners (PromptedRefiner): ``encode`` puts each image in its
    working frame (long side at most ``config.input_size``, never enlarged) and hands it to ``_embed(working image,
    frame) -> embedding`` (an object with a ``frame`` attribute); ``refine`` implementations call ``_frame_of`` to
    check their inputs and ``to_image`` to bring a working-frame mask back. ``encode`` counts one encoder pass per
    image.
    """

    name = "classical-refiner"
    embedding_type: type = object

    def __init__(self, config: Any) -> None:
        self.config = config
        self.input_size = config.input_size
        self.encoder_passes = 0

    def _embed(self, image: np.ndarray, frame: LongestSide) -> Any:
        raise NotImplementedError

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        """images: (H, W, 3) uint8 each -> one embedding each (working frame: long side <= input_size)."""
        out = []
        for image in images:
            check_image(image)
            frame = working_frame(image.shape[:2], self.config.input_size, allow_upscale=False)
            out.append(self._embed(frame.apply_image(image), frame))
            self.encoder_passes += 1
        return out

    def _frame_of(self, embedding: Any, prompts: Sequence[ComponentPrompt]) -> LongestSide:
        """The embedding's working frame, after checking it is one of ours and every prompt is in its image frame."""
        if not isinstance(embedding, self.embedding_type):
            raise TypeError(f"embedding must come from {type(self).__name__}.encode, got {type(embedding).__name__}; "
                            f"call refiner.encode([image]) first")
        hw = embedding.frame.src
        for i, p in enumerate(prompts):
            if p.mask.shape != hw:
                raise ValueError(f"prompt {i}: mask is {p.mask.shape} but the encoded image is {hw}; "
                                 f"prompts must be in the frame of the image passed to encode")
        return embedding.frame

    @staticmethod
    def to_image(frame: LongestSide, mask: np.ndarray) -> np.ndarray:
        """(h', w') bool working-frame result -> (H, W) float32 in [0, 1], image frame (bilinear when enlarging)."""
        return np.clip(frame.invert_image(mask.astype(np.float32)), 0.0, 1.0)
