"""What the job writes per image, rendered to bytes (pure: the job only stores them).

Binary task (one class): ``masks/<stem>.png`` (0/255), ``probs/<stem>.png`` (uint8 probability), ``rle/<stem>.json``
(one COCO RLE, readable by pycocotools), ``overlays/<stem>.png`` (mask outline over the image).
Several classes: ``labels/<stem>.png`` (class index per pixel, 0 = background), ``masks/<class>/<stem>.png`` and
``probs/<class>/<stem>.png`` per class, ``rle/<stem>.json`` mapping class name -> COCO RLE.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from finedetail.codecs import encode_png, overlay
from finedetail.rle import rle_encode
from finedetail.types import to_u8

__all__ = ["render_outputs"]


def render_outputs(image: np.ndarray, prob: np.ndarray, mask: np.ndarray, *, classes: Sequence[str],
                   overlays: bool = True) -> dict[tuple[str, str], bytes]:
    """image (H, W, 3) uint8; prob (C, H, W) float32; mask (C, H, W) bool -> {(folder, suffix): bytes}.

    The file of an input with stem S is ``<folder>/S<suffix>`` (suffix includes the extension)."""
    if prob.shape != mask.shape or prob.shape[0] != len(classes):
        raise ValueError(f"prob {prob.shape} and mask {mask.shape} must both be (C={len(classes)}, H, W)")
    out: dict[tuple[str, str], bytes] = {}
    if len(classes) == 1:
        out[("masks", ".png")] = encode_png(mask[0].astype(np.uint8) * 255)
        out[("probs", ".png")] = encode_png(to_u8(prob[0]))
        out[("rle", ".json")] = json.dumps(rle_encode(mask[0])).encode()
        if overlays:
            out[("overlays", ".png")] = encode_png(overlay(image, mask[0]))
        return out
    labels = np.zeros(mask.shape[1:], np.uint8)
    for c in range(len(classes)):
        labels[mask[c]] = c + 1
    out[("labels", ".png")] = encode_png(labels)
    rles = {}
    for c, name in enumerate(classes):
        out[(f"masks/{name}", ".png")] = encode_png(mask[c].astype(np.uint8) * 255)
        out[(f"probs/{name}", ".png")] = encode_png(to_u8(prob[c]))
        rles[name] = rle_encode(mask[c])
    out[("rle", ".json")] = json.dumps(rles).encode()
    if overlays:
        out[("overlays", ".png")] = encode_png(overlay(image, mask.any(axis=0)))
    return out
