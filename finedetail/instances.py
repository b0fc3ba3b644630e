"""Per-object instances of a segmentation, as COCO annotations (pure: numpy + OpenCV).

An instance is one 8-connected component of one class's final mask (the connectivity ``finedetail.prompts``
uses to split a coarse mask). Each instance carries its own COCO RLE (``finedetail.rle``, readable by
``pycocotools.mask.decode``), its box ``[x, y, w, h]`` in pixels (pixel (r, c) covers [c, c+1) x [r, r+1), so
``x = cmin, y = rmin, w = cmax + 1 - cmin, h = rmax + 1 - rmin``), its area in pixels and a score: the mean fused
probability of its class over its pixels.

Ids are stable: the same masks always give the same ids, 1..N per image, in reading order of the instances'
boxes: top row, then left column, then class index, then the column of the instance's first pixel in its top row
(two components of one class can share a box corner; they never share that pixel).

COCO layout (what annotation tools import): ``coco_image_record`` makes one image's file, itself a complete COCO
dataset with one image (id 1) so ``pycocotools.coco.COCO`` loads it; ``coco_dataset`` merges such records into the
dataset-level file, renumbering image ids (1.. in the given order) and annotation ids (1.. image by image, in each
image's instance order). Categories are the classes: id = class index (1..C, as in the label maps), name = class name.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from finedetail.rle import counts_to_string

__all__ = ["coco_categories", "coco_dataset", "coco_image_record", "instances_from_mask", "rle_of_pixels"]


def rle_of_pixels(rows: np.ndarray, cols: np.ndarray, hw: tuple[int, int]) -> dict[str, Any]:
    """Compressed COCO RLE of the (H, W) mask whose foreground is exactly the pixels (rows[i], cols[i]).

    Equals ``finedetail.rle.rle_encode`` of that mask, but costs O(foreground) instead of O(H * W), so an image
    with many small instances does not pay a full-image pass per instance. rows, cols: int arrays of equal length,
    no duplicates.
    """
    h, w = int(hw[0]), int(hw[1])
    flat = np.sort(np.asarray(cols, np.int64) * h + np.asarray(rows, np.int64))  # column-major order
    total = h * w
    if flat.size == 0:
        counts = [total]
    else:
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        starts = flat[np.r_[0, breaks]]
        ends = flat[np.r_[breaks - 1, flat.size - 1]] + 1
        runs = np.empty(2 * starts.size + 1, np.int64)
        runs[0] = starts[0]
        runs[1::2] = ends - starts
        runs[2:-1:2] = starts[1:] - ends[:-1]
        runs[-1] = total - ends[-1]
        counts = runs.tolist()
        if counts[-1] == 0:  # pycocotools writes no trailing empty background run
            counts.pop()
    return {"size": [h, w], "counts": counts_to_string(counts)}


def instances_from_mask(mask: np.ndarray, prob: np.ndarray, *, classes: Sequence[str],
                        min_area: int = 1) -> list[dict[str, Any]]:
    """Every 8-connected component of every class's mask as one instance.

    mask: (C, H, W) bool, the final masks (classes need not be exclusive here, but the fuse stage's are).
    prob: (C, H, W) float in [0, 1], the fused probabilities, original image frame.
    classes: C names; instance ``category_id`` is the class index + 1. Components with ``area < min_area`` px are
    dropped (``min_area <= 1`` keeps every component, so the instances of a class tile its mask exactly).

    Returns the instances in id order (module docstring), each a dict ``{"id": 1.., "category_id": 1..C,
    "segmentation": COCO RLE (str counts), "bbox": [x, y, w, h] (ints, px), "area": int, "score": float,
    "iscrowd": 0}``.
    """
    mask = np.asarray(mask)
    prob = np.asarray(prob)
    if mask.dtype != bool or mask.ndim != 3:
        raise TypeError(f"mask must be (C, H, W) bool, got {mask.dtype} {mask.shape}; threshold first (prob >= 0.5)")
    if prob.shape != mask.shape or not np.issubdtype(prob.dtype, np.floating):
        raise TypeError(f"prob must be (C, H, W) float of the mask's shape {mask.shape}, got {prob.dtype} {prob.shape}")
    if len(classes) != mask.shape[0]:
        raise ValueError(f"classes names {len(classes)} classes ({list(classes)}) but the mask has {mask.shape[0]}; "
                         "pass one name per mask channel")
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ValueError(f"min_area must be an int >= 0 pixels, got {min_area=}")
    hw = mask.shape[1:]
    found: list[tuple[tuple[int, int, int, int], dict[str, Any]]] = []
    for c in range(mask.shape[0]):
        if not mask[c].any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask[c]).view(np.uint8),
                                                                connectivity=8, ltype=cv2.CV_32S)
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i, :5])
            if area < min_area:
                continue
            inside = labels[y : y + bh, x : x + bw] == i
            rr, cc = np.nonzero(inside)
            score = float(prob[c, y : y + bh, x : x + bw][inside].mean(dtype=np.float64))
            first_col = x + int(np.argmax(inside[0]))
            found.append(((y, x, c, first_col), {
                "category_id": c + 1,
                "segmentation": rle_of_pixels(rr + y, cc + x, hw),
                "bbox": [x, y, bw, bh],
                "area": area,
                "score": round(score, 6),
                "iscrowd": 0,
            }))
    found.sort(key=lambda item: item[0])
    return [{"id": k + 1, **inst} for k, (_, inst) in enumerate(found)]


def coco_categories(classes: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories of the classes: ``[{"id": 1, "name": classes[0], "supercategory": ""}, ...]``."""
    return [{"id": c + 1, "name": str(name), "supercategory": ""} for c, name in enumerate(classes)]


def coco_image_record(instances: Sequence[Mapping[str, Any]], *, classes: Sequence[str], file_name: str,
                      hw: tuple[int, int], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One image's COCO file: a complete COCO dataset holding that image (id 1) and its instances.

    instances: from ``instances_from_mask``. file_name: the input's key (relative path under the input root).
    hw: the image's (h, w). info: optional COCO ``info`` section (the job records its config hash there).
    """
    h, w = int(hw[0]), int(hw[1])
    out: dict[str, Any] = {}
    if info is not None:
        out["info"] = dict(info)
    out["images"] = [{"id": 1, "file_name": str(file_name), "height": h, "width": w}]
    out["categories"] = coco_categories(classes)
    out["annotations"] = [{**dict(inst), "image_id": 1} for inst in instances]
    return out


def coco_dataset(records: Iterable[Mapping[str, Any]], *, classes: Sequence[str],
                 info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge per-image COCO records (``coco_image_record``, one image each) into one COCO dataset.

    Image ids are 1.. in the order of ``records``; annotation ids 1.. in that order too, each image's annotations
    kept in their own order. Refuses a record whose categories are not ``classes`` (outputs of another class set).
    """
    cats = coco_categories(classes)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for rec in records:
        recs_images = rec.get("images") or []
        if len(recs_images) != 1:
            raise ValueError(f"a per-image COCO record holds exactly one image, got {len(recs_images)}")
        got = [(c.get("id"), c.get("name")) for c in rec.get("categories", [])]
        want = [(c["id"], c["name"]) for c in cats]
        if got != want:
            raise ValueError(f"image {recs_images[0].get('file_name')!r} was written with categories {got} but the "
                             f"job's classes are {want}; re-run that image with these classes")
        image_id = len(images) + 1
        images.append({**recs_images[0], "id": image_id})
        for ann in rec.get("annotations", []):
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id})
    out: dict[str, Any] = {}
    if info is not None:
        out["info"] = dict(info)
    out.update(images=images, categories=cats, annotations=annotations)
    return out
