"""SegGPT (transformers ``SegGptForImageSegmentation``) as a ``CoarseSegmenter``.

The in-context examples are preprocessed once (``set_prompts``) and their tensors cached on the device. Per target
image the model paints the target's mask on an S x S canvas (S = 448 for the real model); ``finedetail.decode`` turns
that painting into per-class probabilities, which are resized bilinearly to the image (never a nearest-neighbour
resize of a hard mask, which is what the reference post-processing does).

Several prompts use SegGPT's feature ensemble: the target is repeated once per prompt and the model averages the
target's features across that batch in every layer (``feature_ensemble=True``), so one forward with P rows gives one
answer. The P target halves come out (near-)identical; their mean is decoded.

Cost accounting: ``encoder_passes`` counts the rows the model runs, one (prompt, target) canvas each: with one prompt,
one per target (up to ``batch`` targets share a forward, still one row each); with P prompts, P per target (the target
is repeated once per prompt and the whole ViT runs on every row; the feature ensemble only averages across them).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from finedetail.decode import DEFAULT_TEMPERATURE, seggpt_probabilities
from finedetail.models.checkpoints import resolve_device, resolve_dtype
from finedetail.types import PromptPair, check_image

__all__ = ["SegGptSegmenter", "prompt_label_map"]


def prompt_label_map(mask: np.ndarray, *, num_classes: int, name: str = "") -> np.ndarray:
    """A ``PromptPair`` mask -> (H, W) uint8 class-index map (0 = background) as the SegGPT processor expects it.

    Binary tasks take bool masks (True -> class 1); ``num_classes > 1`` takes integer maps with values in
    0..num_classes.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"prompt {name!r}: mask must be bool or an integer class map, got {mask.dtype}")
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > num_classes:
        raise ValueError(
            f"prompt {name!r}: class map values must lie in 0..{num_classes} (num_classes={num_classes}), got "
            f"{lo}..{hi}; pass num_classes={hi} to set_prompts or fix the map"
        )
    return mask.astype(np.uint8)


class SegGptSegmenter:
    """``CoarseSegmenter`` backed by ``SegGptForImageSegmentation`` + its ``SegGptImageProcessor``.

    batch: targets per forward when there is a single prompt (with several, each forward holds one target repeated
        per prompt). device: None = cuda if available else cpu. dtype: None = bfloat16 autocast on CUDA, float32 on
        CPU. temperature: softness of the colour -> class decoding (``finedetail.decode``).
    embedding_type: SegGPT's task token, "instance" (transformers' default) or "semantic".
    """

    name = "seggpt"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch: int = 4,
        temperature: float = DEFAULT_TEMPERATURE,
        embedding_type: str = "instance",
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch=}")
        if embedding_type not in ("instance", "semantic"):
            raise ValueError(f"embedding_type must be 'instance' or 'semantic', got {embedding_type=}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.batch = int(batch)
        self.temperature = float(temperature)
        self.embedding_type = embedding_type
        self.input_size = int(model.config.image_size[1] if isinstance(model.config.image_size, (list, tuple))
                              else model.config.image_size)
        self.num_classes = 1
        self.encoder_passes = 0
        self._prompt_pixels: torch.Tensor | None = None
        self._prompt_masks: torch.Tensor | None = None
        self._palette: list[tuple[int, int, int]] | None = None

    @classmethod
    def from_pretrained(
        cls,
        uri_or_dir: str | os.PathLike | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        offline: bool | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> "SegGptSegmenter":
        """Load with ``checkpoints.load_seggpt`` (dir, s3:// prefix or Hub id; default the official weights)."""
        from finedetail.models.checkpoints import load_seggpt
        from finedetail.models.weights import DEFAULT_SEGGPT

        dev = resolve_device(device)
        model, processor = load_seggpt(uri_or_dir or DEFAULT_SEGGPT, device=str(dev), cache_dir=cache_dir,
                                       offline=offline)
        return cls(model, processor, device=dev, **kwargs)

    def set_prompts(self, prompts: Sequence[PromptPair], *, num_classes: int = 1) -> None:
        """Preprocess the in-context examples once and keep their tensors: (P, 3, S, S) images and palette-coloured
        masks (``SegGptImageProcessor`` with ``num_labels=num_classes``; masks resized nearest by the processor)."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("set_prompts needs at least one PromptPair (an example image and its mask)")
        maps = [prompt_label_map(p.mask, num_classes=num_classes, name=p.name) for p in prompts]
        inputs = self.processor.preprocess(
            images=None,
            prompt_images=[np.ascontiguousarray(p.image) for p in prompts],
            prompt_masks=maps,
            num_labels=num_classes,
            return_tensors="pt",
        )
        self._prompt_pixels = inputs["prompt_pixel_values"].to(self.device, torch.float32)
        self._prompt_masks = inputs["prompt_masks"].to(self.device, torch.float32)
        self._palette = [tuple(int(v) for v in c) for c in self.processor.get_palette(num_classes)]
        self.num_classes = num_classes

    def _forward(self, pixels: torch.Tensor, prompt_pixels: torch.Tensor, prompt_masks: torch.Tensor,
                 *, ensemble: bool) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            out = self.model(
                pixel_values=pixels,
                prompt_pixel_values=prompt_pixels,
                prompt_masks=prompt_masks,
                feature_ensemble=ensemble,
                embedding_type=self.embedding_type,
            )
        self.encoder_passes += int(pixels.shape[0])  # every row is a full forward of the ViT
        return out.pred_masks.float().cpu().numpy()

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W, 3) uint8 images -> one (num_classes, H, W) float32 probability map each, in that image's frame."""
        if self._prompt_pixels is None or self._prompt_masks is None or self._palette is None:
            raise RuntimeError("SegGptSegmenter.predict called before set_prompts; call "
                               "segmenter.set_prompts([PromptPair(image, mask)]) once first")
        if len(images) == 0:
            return []
        for image in images:
            check_image(image)
        pixels = self.processor.preprocess(images=[np.ascontiguousarray(im) for im in images],
                                           return_tensors="pt")["pixel_values"].to(self.device, torch.float32)
        n_prompts = self._prompt_pixels.shape[0]
        preds: list[np.ndarray] = []
        if n_prompts == 1:
            for start in range(0, len(images), self.batch):
                chunk = pixels[start : start + self.batch]
                b = chunk.shape[0]
                raw = self._forward(chunk, self._prompt_pixels.expand(b, -1, -1, -1),
                                    self._prompt_masks.expand(b, -1, -1, -1), ensemble=False)
                preds.extend(raw)
        else:
            for i in range(len(images)):
                target = pixels[i : i + 1].expand(n_prompts, -1, -1, -1)
                raw = self._forward(target, self._prompt_pixels, self._prompt_masks, ensemble=True)
                preds.append(raw.mean(axis=0))
        mean, std = self.processor.image_mean, self.processor.image_std
        return [
            seggpt_probabilities(p, palette=self._palette, image_mean=mean, image_std=std,
                                 temperature=self.temperature, out_hw=im.shape[:2])
            for p, im in zip(preds, images)
        ]
