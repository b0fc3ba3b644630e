"""What the job writes per image, rendered to bytes (pure: the job only stores them).

Binary task (one class): ``masks/<stem>.png`` (0/255), ``probs/<stem>.png`` (uint8 probability), ``rle/<stem>.json``
(one COCO RLE, readable by pycocotools), ``overlays/<stem>.png`` (the mask over the image, `draw_overlay`).
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

import cv2
import numpy as np

from finedetail.codecs import encode_png
from finedetail.instances import coco_image_record, instances_from_mask
from finedetail.rle import rle_encode
from finedetail.types import to_u8

__all__ = ["CLASS_COLORS", "check_class_names", "draw_overlay", "overlay_width", "render_outputs"]

#: outline colours (RGB) of classes 1, 2, ... in multi-class overlays (cycled beyond 8 classes)
CLASS_COLORS = ((255, 0, 0), (0, 128, 255), (255, 208, 0), (0, 220, 90), (255, 0, 255), (0, 255, 255),
                (255, 128, 0), (160, 80, 255))
#: the dark halo drawn on both sides of every outline, so that a bright outline shows on content of its own colour
HALO_COLOR = (0, 0, 0)
#: opacity of the class colour laid over the mask's pixels
FILL_ALPHA = 0.3
#: an overlay's outline is one pixel wide per this many pixels of the image's long side (at least one)
PIXELS_PER_LINE = 640


def overlay_width(hw: tuple[int, int]) -> int:
    """Outline width (px) of an overlay of an (H, W) image: ``max(1, round(max(H, W) / PIXELS_PER_LINE))``, so an
    overlay viewed scaled to fit a screen (a 6000 px photo shown 1000 px wide) still shows a line about 1.5 screen
    pixels wide, and a small image keeps its 1 px outline."""
    return max(1, round(max(int(hw[0]), int(hw[1])) / PIXELS_PER_LINE))


def draw_overlay(image: np.ndarray, masks: np.ndarray, *, colors: Sequence[Sequence[int]] = CLASS_COLORS,
                 width: int | None = None, alpha: float = FILL_ALPHA) -> np.ndarray:
    """The masks drawn over a copy of the image, readable on any content and at any viewing size.

    image (H, W, 3) uint8 RGB; masks (C, H, W) bool, class c drawn in ``colors[c % len(colors)]``. Each class gets
    a translucent fill (``alpha`` of its colour), an outline ``width`` px wide centred on the mask's edge
    (``ceil(width / 2)`` px inside, the rest outside; outside the image counts as background, so a mask touching
    the frame is outlined along it) and a dark halo (`HALO_COLOR`, ``width`` px) on both sides of the
    outline, so a red outline still shows on red content. ``width`` None: `overlay_width` of the image. Fills are
    drawn first, then every halo, then every outline (no class's halo covers another's outline). Returns
    (H, W, 3) uint8; pixels away from every mask are unchanged.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"image must be (H, W, 3) uint8 RGB, got {got}")
    if (not isinstance(masks, np.ndarray) or masks.dtype != bool or masks.ndim != 3
            or masks.shape[1:] != image.shape[:2]):
        got = f"{masks.dtype} {masks.shape}" if isinstance(masks, np.ndarray) else type(masks).__name__
        raise TypeError(f"masks must be (C, H, W) bool of the image's size {image.shape[:2]}, got {got}")
    width = overlay_width(image.shape[:2]) if width is None else width
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an int >= 1, got {width=}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha=}")
    cols = [tuple(int(v) for v in c) for c in colors]
    if not cols or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in cols):
        raise ValueError(f"colors must be RGB triples of ints in 0..255, got {colors=}")
    inner, outer, halo = -(-int(width) // 2), int(width) // 2, int(width)
    reach = outer + halo + 1  # how far outside a mask it can change pixels
    h, w = image.shape[:2]
    out = image.copy()
    drawn = []  # (region, halo, line, colour) per class: every halo goes on before any outline
    for c in range(masks.shape[0]):
        m8 = np.ascontiguousarray(masks[c]).view(np.uint8)
        x, y, bw, bh = cv2.boundingRect(m8)
        if bw == 0:
            continue
        # the class's own region: its bounding box and what its halo reaches (nothing beyond it changes)
        region = (slice(max(0, y - reach), min(h, y + bh + reach)), slice(max(0, x - reach), min(w, x + bw + reach)))
        m = m8[region]
        col = cols[c % len(cols)]
        if alpha > 0:
            tint = np.empty_like(out[region])
            tint[:] = col
            cv2.copyTo(cv2.addWeighted(out[region], 1 - alpha, tint, alpha, 0), m, out[region])
        d_in, d_out = _edge_distances(m)
        eps = 1e-3  # distances are > 0 exactly on the side they measure (d_in on the mask, d_out off it)
        band = lambda d, lo, hi: cv2.inRange(d, lo + eps, hi) if hi >= lo + eps else np.zeros_like(m)  # noqa: E731
        drawn.append((region, cv2.bitwise_or(band(d_in, inner, inner + halo), band(d_out, outer, outer + halo)),
                      cv2.bitwise_or(band(d_in, 0, inner), band(d_out, 0, outer)), col))
    for region, ring, _, _ in drawn:
        out[region][ring > 0] = HALO_COLOR
    for region, _, line, col in drawn:
        out[region][line > 0] = col
    return out


def _edge_distances(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mask (H, W) uint8 0/1 -> (d_in, d_out), each (H, W) float32: a mask pixel's distance to the nearest
    background pixel (outside the image counts as background) and a background pixel's to the nearest mask pixel;
    0 elsewhere. OpenCV's 5x5 chamfer approximation of Euclidean distance (steps 1, 1.4 and 2.1969: a pixel 4-next
    to the edge is at 1, a diagonal one at 1.4), half the time of its exact transform on a 12 MP mask."""
    d_in = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
    d_out = cv2.distanceTransform(np.uint8(1) - mask, cv2.DIST_L2, cv2.DIST_MASK_5)
    return d_in, d_out


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
            out[("overlays", ".png")] = encode_png(draw_overlay(image, mask))
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
            out[("overlays", ".png")] = encode_png(draw_overlay(image, mask))
    if coco:
        record = coco_image_record(instances_from_mask(mask, prob, classes=classes), classes=classes,
                                   file_name=file_name, hw=mask.shape[1:], info=info)
        out[("instances", ".json")] = json.dumps(record, separators=(",", ":")).encode()
    return out
