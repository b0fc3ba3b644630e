"""The dataset-level COCO file (``coco.json`` at the output root), assembled on the driver at the end of a job.

Which images: every key whose latest manifest row is ``ok`` with this job's config hash (the outputs of this
configuration; keys last written by another configuration are left out and counted). Image ids follow the keys'
sorted order, so the same outputs always give the same file.

Where the instances come from: ``instances/<stem>.json`` (written by the write stage when ``coco`` is on). When that
file is missing or was written under another config hash (a resumed job whose earlier run had ``coco`` off, or a
later run with another config that skipped this key), the instances are rebuilt from the image's stored masks and
probabilities (``masks/``, ``probs/``), which is exactly what the write stage would have computed (it, too, works
from the uint8 probabilities), and the per-image file is written too. Outputs written in windows (``job.raster``:
rasters and photos with more than ``window_pixels`` pixels) have no instances file and are not rebuilt (this driver
would hold their whole mask; a GeoTIFF's vector output is the GIS-side equivalent): they are left out and counted.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from finedetail.codecs import decode_label_map, decode_mask
from finedetail.instances import coco_dataset, coco_image_record, instances_from_mask
from finedetail.types import from_u8
from job import io as jio
from job import manifest as jm
from job.config import JobConfig

log = logging.getLogger("finedetail.job")

__all__ = ["COCO_FILE", "image_record", "write_dataset_coco"]

COCO_FILE = "coco.json"


def _read_maps(storage: Any, key: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The stored (C, H, W) bool masks and (C, H, W) float32 probabilities of one output."""
    if len(classes) == 1:
        folders = [("masks", "probs")]
    else:
        folders = [(f"masks/{c}", f"probs/{c}") for c in classes]
    masks, probs = [], []
    for mask_dir, prob_dir in folders:
        masks.append(decode_mask(jio.read_bytes(storage, jio.output_key(mask_dir, key, suffix=".png"))))
        probs.append(from_u8(decode_label_map(jio.read_bytes(storage, jio.output_key(prob_dir, key, suffix=".png")))))
    return np.stack(masks), np.stack(probs)


def image_record(storage: Any, row: dict[str, Any], cfg: JobConfig) -> tuple[dict[str, Any] | None, bool]:
    """One ok manifest row -> (its one-image COCO record, whether it had to be rebuilt from masks/probs).
    The record is None when the output has neither an instances file nor PNG masks/probs to rebuild it from."""
    key = str(row["key"])
    inst_key = jio.output_key("instances", key, suffix=".json")
    record = None
    try:
        record = json.loads(jio.read_bytes(storage, inst_key))
    except jio.ObjectNotFoundError:
        pass
    rebuilt = record is None or (record.get("info") or {}).get("config_hash") != row["config_hash"]
    if rebuilt and (row.get("height") or 0) * (row.get("width") or 0) > cfg.window_pixels:
        return None, False  # written in windows: rebuilding would hold its whole mask here
    if rebuilt:
        try:
            mask, prob = _read_maps(storage, key, tuple(cfg.classes))
        except jio.ObjectNotFoundError:
            return None, False
        record = coco_image_record(instances_from_mask(mask, prob, classes=cfg.classes), classes=cfg.classes,
                                   file_name=key, hw=mask.shape[1:], info={"config_hash": row["config_hash"]})
        jio.write_bytes_atomic(storage, inst_key, json.dumps(record, separators=(",", ":")).encode())
    image = record["images"][0]
    image["file_name"] = key  # the input's key, whatever the write stage was told
    if row.get("height") is not None and (image["height"], image["width"]) != (row["height"], row["width"]):
        raise ValueError(f"{inst_key} says {image['width']}x{image['height']} but the manifest says "
                         f"{row['width']}x{row['height']}; the output of {key!r} is inconsistent: re-run it")
    return record, rebuilt


def write_dataset_coco(cfg: JobConfig, *, threads: int = 16) -> dict[str, Any]:
    """Write ``coco.json`` at ``cfg.output`` (module docstring); returns counts and where it went: ``images``,
    ``annotations``, ``rebuilt`` (instances rebuilt from masks/probs), ``left_out`` (ok under another config),
    ``missing`` (no instances file nor PNG maps), ``uri``.

    COCO layout: images (id, file_name = input key, width, height), categories (id = class index 1..C, name),
    annotations (id, image_id, category_id, segmentation = compressed RLE, bbox [x, y, w, h], area, score,
    iscrowd 0). Per-image reads run on ``threads`` threads (S3 latency, not CPU, bounds this step).
    """
    storage = jio.open_storage(cfg.output)[0]
    latest = jm.latest_rows(jm.read_manifest(storage))
    ok = [r for r in latest.values() if r["status"] == "ok"]
    rows = sorted((r for r in ok if r["config_hash"] == cfg.config_hash), key=lambda r: r["key"])
    left_out = len(ok) - len(rows)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(rows)))) as pool:
        results = list(pool.map(lambda r: image_record(storage, r, cfg), rows))
    missing = [r["key"] for r, (rec, _) in zip(rows, results) if rec is None]
    dataset = coco_dataset([rec for rec, _ in results if rec is not None], classes=cfg.classes,
                           info={"description": "finedetail instance masks", "config_hash": cfg.config_hash})
    jio.write_bytes_atomic(storage, COCO_FILE, json.dumps(dataset, separators=(",", ":")).encode())
    summary = {"images": len(dataset["images"]), "annotations": len(dataset["annotations"]),
               "rebuilt": sum(rebuilt for _, rebuilt in results), "left_out": left_out, "missing": len(missing),
               "uri": f"{cfg.output.rstrip('/')}/{COCO_FILE}"}
    if left_out:
        log.warning("coco: %d ok outputs were written under another configuration and are not in %s",
                    left_out, COCO_FILE)
    if missing:
        log.warning("coco: %d ok outputs have no instances/ file and no PNG masks to build one from (e.g. %r, a "
                    "raster or photo written in windows); they are not in %s", len(missing), missing[0], COCO_FILE)
    log.info("coco: %(images)d images, %(annotations)d annotations (%(rebuilt)d rebuilt) -> %(uri)s", summary)
    return summary
