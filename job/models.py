"""Prompt sets and model construction for the job's stages (each actor builds its models once, in ``__init__``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from finedetail.codecs import decode_image, decode_label_map, decode_mask
from finedetail.types import PromptPair
from job import io as jio
from job.config import JobConfig

__all__ = ["build_coarse", "build_refiner", "load_prompts"]

PROMPT_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_prompts(uri: str, *, num_classes: int = 1) -> list[PromptPair]:
    """Prompt pairs laid out as ``images/NAME.<ext>`` + ``masks/NAME.png`` under ``uri``.

    Refuses, naming the file: an image without a mask, a mask of another size, an empty mask, no pairs at all.
    ``num_classes`` > 1 reads masks as class-index maps (0 = background); otherwise any nonzero pixel is foreground.
    """
    storage = jio.open_storage(uri)[0]
    images = jio.list_files(storage, "images", extensions=PROMPT_IMAGE_EXTS)
    if not images:
        raise ValueError(f"no prompt images under {uri}/images/; expected images/NAME.jpg + masks/NAME.png pairs")
    masks = set(jio.list_files(storage, "masks", extensions=(".png",)))
    pairs = []
    for rel in images:
        stem = os.path.splitext(rel)[0]
        mask_rel = stem + ".png"
        if mask_rel not in masks:
            raise ValueError(f"prompt image images/{rel} has no mask: expected masks/{mask_rel} under {uri}")
        image = decode_image(jio.read_bytes(storage, f"images/{rel}"))
        raw = jio.read_bytes(storage, f"masks/{mask_rel}")
        mask = decode_label_map(raw) if num_classes > 1 else decode_mask(raw)
        if num_classes > 1 and int(mask.max()) > num_classes:
            raise ValueError(f"prompt mask masks/{mask_rel} holds class {int(mask.max())} but only "
                             f"{num_classes} classes are configured")
        pairs.append(PromptPair(image=image, mask=mask, name=stem))
    return pairs


def _device(cfg: JobConfig) -> str | None:
    return cfg.device


def build_coarse(cfg: JobConfig, prompts: list[PromptPair]) -> Any:
    """The in-context coarse segmenter of ``cfg.backend`` with its prompts set."""
    n = len(cfg.classes)
    if cfg.backend == "seggpt-sam":
        from finedetail.models.checkpoints import SEGGPT_DEFAULT, load_seggpt
        from finedetail.models.seggpt import SegGptSegmenter

        model, processor = load_seggpt(cfg.seggpt_checkpoint or SEGGPT_DEFAULT, device=_device(cfg) or "auto")
        seg = SegGptSegmenter(model, processor, device=_device(cfg), batch=cfg.resources.batch_size)
    elif cfg.backend == "classical":
        from finedetail.models.classical import ColourTextureSegmenter

        seg = ColourTextureSegmenter()
    elif cfg.backend == "proxy":
        from finedetail.models.proxy import ProxySegGPT

        seg = ProxySegGPT()
    else:  # JobConfig validated it already
        raise ValueError(f"unknown backend {cfg.backend!r}")
    seg.set_prompts(prompts, num_classes=n)
    return seg


def build_refiner(cfg: JobConfig) -> Any:
    """The prompted refiner of ``cfg.backend``."""
    r = cfg.pipeline.refine
    if cfg.backend == "seggpt-sam":
        from finedetail.models.checkpoints import SAM_URLS
        from finedetail.models.sam import SamRefiner

        uri = cfg.sam_checkpoint or SAM_URLS[cfg.sam_model_type or "vit_h"]
        return SamRefiner.from_checkpoint(
            uri, model_type=cfg.sam_model_type, sha256=cfg.sam_sha256, device=_device(cfg),
            multimask=r.multimask, encode_batch=cfg.resources.encode_batch,
            use_box=r.use_box, use_points=r.use_points, use_mask_input=r.use_mask_input,
        )
    if cfg.backend == "classical":
        from finedetail.models.classical import GrabCutRefiner

        return GrabCutRefiner()
    from finedetail.models.proxy import ProxySAM

    return ProxySAM()


def coarse_from_mask_bytes(data: bytes, hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """A coarse mask made elsewhere (``--coarse``) -> (C, H, W) float32; refuses a size mismatch."""
    if num_classes > 1:
        labels = decode_label_map(data)
        maps = np.stack([(labels == c + 1) for c in range(num_classes)]).astype(np.float32)
    else:
        maps = decode_mask(data)[None].astype(np.float32)
    if maps.shape[1:] != tuple(hw):
        raise ValueError(f"coarse mask is {maps.shape[2]}x{maps.shape[1]} but its image is {hw[1]}x{hw[0]}; "
                         "coarse masks must have their image's size")
    return maps
