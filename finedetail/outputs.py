"""What the job writes per image, rendered to bytes (pure: the job only stores them).

Binary task (one class): ``masks/<stem>.png`` (0/255), ``probs/<stem>.png`` (uint8 probability), ``rle/<stem>.json``
(one COCO RLE, readable by pycocotools), ``overlays/<stem>.png`` (mask outline over the image).
Several classes: ``labels/<stem>.png`` (class index per pixel, 0 = background, class i of ``classes`` = i + 1),
``masks/<class>/<stem>.png`` and ``probs/<class>/<stem>.png`` per class, ``rle/<stem>.json`` mapping class name ->
COCO RLE (in class order), ``overlays/<stem>.png`` with each class outlined in its own colour.
With ``coco=True`` also ``instances/<stem>.json``: the image's instances (``finedetail.instances``) as a one-image
COCO dataset.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np

from finedetail.codecs import encode_png, overlay
from finedetail.instances import coco_image_record, instances_from_mask
from finedetail.rle import rle_encode
from finedetail.types import to_u8

__all__ = ["CLASS_COLORS", "check_class_names", "render_outputs"]

#: outline colours (RGB) of classes 1, 2, ... in multi-class overlays (cycled beyond 8 classes)
CLASS_COLORS = ((255, 0, 0), (0, 128, 255), (255, 208, 0), (0, 220, 90), (255, 0, 255), (0, 255, 255),
                (255, 128, 0), (160, 80, 255))


def check_class_names(classes: Sequence[str]) -> tuple[str, ...]:
    """Class names as a tuple, or ValueError: 1..255 names (labels are uint8), unique, each usable as one folder name
    (``masks/<class>/``): non-empty, no '/' or '\\\\', not '.' or '..', no control characters, no surrounding spaces."""
    if isinstance(classes, str):
        raise TypeError(f"classes must be a sequence of names like ('road', 'water'), got the string {classes!r}")
    names = tuple(classes)
    if not 1 <= len(names) <= 255:
        raise ValueError(f"need 1..255 class names (label maps are uint8), got {len(names)}: {list(names)[:8]}")
    for name in names:
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
                or name != name.strip() or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name)):
            raise ValueError(f"class name {name!r} cannot name a folder (masks/<class>/); use a plain name like "
                             f"'road' (no '/', '\\\\', control characters or surrounding spaces), got {list(names)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"class names must be unique, got {list(names)} ({dup[0]!r} repeats)")
    return names


def render_outputs(image: np.ndarray, prob: np.ndarray, mask: np.ndarray, *, classes: Sequence[str],
                   overlays: bool = True, coco: bool = False, file_name: str = "",
                   info: Mapping[str, Any] | None = None) -> dict[tuple[str, str], bytes]:
    """image (H, W, 3) uint8; prob (C, H, W) float32 in [0, 1]; mask (C, H, W) bool, at most one class per pixel
    (what ``finedetail.pipeline.fuse`` returns) -> {(folder, suffix): bytes}.

    The file of an input with stem S is ``<folder>/S<suffix>`` (suffix includes the extension).
    coco: also ``("instances", ".json")``, the one-image COCO record (``coco_image_record``) with ``file_name``
    (the input's key) and ``info`` (e.g. the job's config hash) in it.
    """
    classes = check_class_names(classes)
    if prob.shape != mask.shape or prob.ndim != 3 or prob.shape[0] != len(classes):
        raise ValueError(f"prob {prob.shape} and mask {mask.shape} must both be (C={len(classes)}, H, W)")
    if mask.dtype != bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}; threshold first (prob >= 0.5)")
    if image.shape[:2] != mask.shape[1:]:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must share (H, W)")
    out: dict[tuple[str, str], bytes] = {}
    if len(classes) == 1:
        out[("masks", ".png")] = encode_png(mask[0].astype(np.uint8) * 255)
        out[("probs", ".png")] = encode_png(to_u8(prob[0]))
        out[("rle", ".json")] = json.dumps(rle_encode(mask[0])).encode()
        if overlays:
            out[("overlays", ".png")] = encode_png(overlay(image, mask[0]))
    else:
        count = mask.sum(axis=0, dtype=np.uint16)
        if (count > 1).any():
            n = int((count > 1).sum())
            raise ValueError(f"{n} pixels belong to several classes; a label map needs one class per pixel: resolve "
                             "overlaps first (finedetail.pipeline.fuse keeps the class of highest probability)")
        labels = np.zeros(mask.shape[1:], np.uint8)
        for c in range(len(classes)):
            labels[mask[c]] = c + 1
        out[("labels", ".png")] = encode_png(labels)
        rles = {}
        for c, name in enumerate(classes):
            out[(f"masks/{name}", ".png")] = encode_png(mask[c].astype(np.uint8) * 255)
            out[(f"probs/{name}", ".png")] = encode_png(to_u8(prob[c]))
            rles[name] = rle_encode(np.ascontiguousarray(mask[c]))
        out[("rle", ".json")] = json.dumps(rles).encode()
        if overlays:
            shown = image
            for c in range(len(classes)):
                shown = overlay(shown, np.ascontiguousarray(mask[c]), color=CLASS_COLORS[c % len(CLASS_COLORS)])
            out[("overlays", ".png")] = encode_png(shown)
    if coco:
        record = coco_image_record(instances_from_mask(mask, prob, classes=classes), classes=classes,
                                   file_name=file_name, hw=mask.shape[1:], info=info)
        out[("instances", ".json")] = json.dumps(record, separators=(",", ":")).encode()
    return out
