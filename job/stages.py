"""Ray Data stages: thin callables whose ``__call__`` only moves arrays in and out of rows and delegates to
``finedetail``. Model stages load their models once per actor in ``__init__``. Resources are declared where
``map_batches`` is called (``job.run``).

Row columns (every batch has all of them; absent arrays are empty bytes, see ``job.rows``):
  key (str), status ("ok" | "error"), error (str), attempts (int)
  image        packed (H, W, 3) uint8, original (displayed) orientation
  coarse       packed (V, C, H, W) uint8: the coarse map of each TTA view, original frame (V = views in order)
  map_<name>   packed (C, H, W) uint8 per variant, and map_crop
  prob, mask   packed (C, H, W) uint8 after fusion (mask is 0/1)
  passes_coarse, passes_refiner, components (int), seconds_<stage> (float)
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from typing import Any

import numpy as np

from finedetail import pipeline as fp
from finedetail.codecs import decode_image
from finedetail.types import from_u8, to_u8
from job import io as jio
from job.config import JobConfig
from job.manifest import STAGES
from job.rows import column, pack, unpack

log = logging.getLogger("finedetail.job")

__all__ = ["CoarseStage", "CropStage", "FuseStage", "VariantStage", "read_decode", "write_outputs"]


def _error_text(exc: BaseException) -> str:
    return jio.redact(f"{type(exc).__name__}: {exc}")


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["key"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> columns. Every row gets every column: an array column a row lacks (an error row skipped by a stage)
    is empty bytes, so all batches of a stage share one schema."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: column([r.get(k, b"") for r in rows]) for k in keys}


def read_decode(batch: dict[str, np.ndarray], *, cfg: JobConfig, views: int) -> dict[str, np.ndarray]:
    """CPU task: read each key (retries inside job.io), decode to RGB uint8 (EXIF applied), and read the coarse
    mask made elsewhere when ``--coarse`` is given. Any failure becomes an error row; the batch goes on."""
    from job.models import coarse_from_mask_bytes

    storage = jio.open_storage(cfg.input)[0]
    coarse_storage = jio.open_storage(cfg.coarse)[0] if cfg.coarse else None
    out = []
    for key in batch["key"]:
        t0 = time.perf_counter()
        row = _empty_row(str(key))
        try:
            image = decode_image(jio.read_bytes(storage, str(key)), max_pixels=cfg.max_pixels)
            row["image"] = pack(image)
            if coarse_storage is not None:
                data = jio.read_bytes(coarse_storage, jio.mask_key(str(key)))
                maps = coarse_from_mask_bytes(data, image.shape[:2], len(cfg.classes))
                row["coarse"] = pack(np.repeat(to_u8(maps)[None], views, axis=0))
        except Exception as exc:  # a bad input is an error row, never a crashed job
            row["status"], row["error"] = "error", _error_text(exc)
        row["seconds_decode"] = time.perf_counter() - t0
        out.append(row)
    return _batch(out)


def _empty_row(key: str) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "status": "ok", "error": "", "attempts": 1, "image": b"", "coarse": b"",
                           "passes_coarse": 0, "passes_refiner": 0, "components": 0}
    for s in STAGES:
        row[f"seconds_{s}"] = 0.0
    return row


def _set_threads(cfg: JobConfig) -> None:
    import os

    n = os.environ.get("FINEDETAIL_TORCH_THREADS")
    if n:
        try:
            import torch

            torch.set_num_threads(int(n))
        except ImportError:
            pass


class _ModelStage:
    """Shared row handling: decode arrays of ok rows, call ``self._work(rows)``, turn exceptions into error rows."""

    stage = ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        live = [r for r in rows if r["status"] == "ok"]
        if live:
            t0 = time.perf_counter()
            try:
                self._work(live)
            except Exception:  # the batch failed as a whole: retry image by image to isolate the culprit
                log.warning("stage %s: batch failed, retrying image by image:\n%s", self.stage, traceback.format_exc())
                for r in live:
                    try:
                        self._work([r])
                    except Exception as exc:
                        r["status"], r["error"] = "error", f"{self.stage}: {_error_text(exc)}"
            share = (time.perf_counter() - t0) / len(live)
            for r in live:
                r[f"seconds_{self.stage}"] = r.get(f"seconds_{self.stage}", 0.0) + share
        return _batch(rows)

    def _work(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class CoarseStage(_ModelStage):
    """GPU actor: the in-context segmenter on every TTA view of each image (one batched predict call)."""

    stage = "coarse"

    def __init__(self, cfg: JobConfig):
        from job.models import build_coarse, load_prompts

        _set_threads(cfg)
        self.cfg = cfg
        self.model = build_coarse(cfg, load_prompts(cfg.prompts, num_classes=len(cfg.classes)))

    def _work(self, rows):
        images = [unpack(r["image"]) for r in rows]
        views, stats = fp.coarse_variants(images, self.model, self.cfg.pipeline)
        names = fp.tta_views(self.cfg.pipeline)
        for r, v, s in zip(rows, views, stats):
            r["coarse"] = pack(np.stack([to_u8(v[n]) for n in names]))
            r["passes_coarse"] += s.coarse_passes


def _coarse_views(row: dict[str, Any], cfg: JobConfig) -> dict[str, np.ndarray]:
    packed = unpack(row["coarse"])
    return {n: from_u8(packed[i]) for i, n in enumerate(fp.tta_views(cfg.pipeline))}


class VariantStage(_ModelStage):
    """GPU actor: the refiner half of the hybrid for ONE variant (a scale or a TTA view) of each image."""

    stage = "refine"

    def __init__(self, cfg: JobConfig, variant: str):
        from job.models import build_refiner

        _set_threads(cfg)
        self.cfg, self.variant = cfg, variant
        self.refiner = build_refiner(cfg) if cfg.pipeline.refine.enabled else None

    def _work(self, rows):
        variant = next(v for v in fp.variants(self.cfg.pipeline) if v.name == self.variant)
        if self.refiner is None:  # refinement off: the variant's map is its view's coarse map
            for r in rows:
                views = _coarse_views(r, self.cfg)
                r[f"map_{self.variant}"] = pack(to_u8(views.get(variant.tta, views["identity"])))
            return
        todo, refs = [], []
        for r in rows:
            done = _done_variant_maps(r, self.cfg)
            if fp.skip_variant(variant, done, self.cfg.pipeline):
                r[f"map_{self.variant}"] = b""  # selective compute: the views already run agree
                continue
            todo.append(r)
            refs.append(fp.reference_for(variant, done, self.cfg.pipeline))
        if not todo:
            return
        images = [unpack(r["image"]) for r in todo]
        coarse = [_coarse_views(r, self.cfg) for r in todo]
        maps, stats = fp.refine_variants_batch(images, coarse, self.refiner, self.cfg.pipeline,
                                               only=[self.variant], reference=refs)
        for r, m, s in zip(todo, maps, stats):
            r[f"map_{self.variant}"] = pack(to_u8(m[self.variant]))
            r["passes_refiner"] += s.refiner_passes
            r["components"] += s.components


def _done_variant_maps(row: dict[str, Any], cfg: JobConfig) -> dict[str, np.ndarray]:
    """Variant maps already in the row (earlier stages), by variant name; skipped variants are absent."""
    out = {}
    for v in fp.variants(cfg.pipeline):
        packed = row.get(f"map_{v.name}", b"")
        if packed is not None and len(packed):
            out[v.name] = from_u8(unpack(packed))
    return out


def _variant_maps(row: dict[str, Any], cfg: JobConfig) -> list[np.ndarray]:
    return list(_done_variant_maps(row, cfg).values())


class CropStage(_ModelStage):
    """GPU actor: high-resolution crop refinement on the objects of the variants' provisional ensemble."""

    stage = "crop"

    def __init__(self, cfg: JobConfig):
        from job.models import build_refiner

        _set_threads(cfg)
        self.cfg = cfg
        self.refiner = build_refiner(cfg)

    def _work(self, rows):
        for r in rows:
            image = unpack(r["image"])
            prov = fp.provisional(_variant_maps(r, self.cfg), self.cfg.pipeline)
            crop_map, s = fp.refine_crops(image, prov, self.refiner, self.cfg.pipeline)
            r["map_crop"] = pack(to_u8(crop_map))
            r["passes_refiner"] += s.refiner_passes


class FuseStage(_ModelStage):
    """CPU actor: ensemble of every map + guided filter + morphology (+ CRF)."""

    stage = "fuse"

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def _work(self, rows):
        pc = self.cfg.pipeline
        for r in rows:
            image = unpack(r["image"])
            maps = _variant_maps(r, self.cfg)
            weights = [1.0] * len(maps)
            if pc.crop.enabled:
                maps.append(from_u8(unpack(r["map_crop"])))
                weights.append(pc.crop.weight)
            prob, mask = fp.fuse(image, maps, pc, weights=weights)
            r["prob"], r["mask"] = pack(to_u8(prob)), pack(mask.astype(np.uint8))


def write_outputs(batch: dict[str, np.ndarray], *, cfg: JobConfig, config_hash: str) -> dict[str, np.ndarray]:
    """CPU task: write each row's files atomically, then one manifest part for the batch (last), and return the
    manifest rows only (the big columns stop here)."""
    from finedetail.outputs import render_outputs
    from job.manifest import write_part

    storage = jio.open_storage(cfg.output)[0]
    manifest = []
    for r in _rows(batch):
        t0 = time.perf_counter()
        m = {k: r.get(k) for k in ("key", "status", "error", "attempts")}
        m.update(height=None, width=None, mask_area=None, components=int(r.get("components", 0)))
        if r["status"] == "ok":
            try:
                image = unpack(r["image"])
                prob, mask = unpack(r["prob"]), unpack(r["mask"]).astype(bool)
                files = render_outputs(image, from_u8(prob), mask, classes=cfg.classes, overlays=cfg.overlays)
                for (folder, suffix), data in files.items():
                    jio.write_bytes_atomic(storage, jio.output_key(folder, str(r["key"]), suffix=suffix), data)
                m.update(height=int(image.shape[0]), width=int(image.shape[1]), mask_area=int(mask.sum()))
            except jio.StorageError:
                raise  # a write that keeps failing fails the job: never a manifest row claiming success
            except Exception as exc:
                m["status"], m["error"] = "error", f"write: {_error_text(exc)}"
        passes_c, passes_r = int(r.get("passes_coarse", 0)), int(r.get("passes_refiner", 0))
        m.update(coarse_passes=passes_c, refiner_passes=passes_r, encoder_passes=passes_c + passes_r,
                 config_hash=config_hash, finished_at=time.time())
        for s in STAGES:
            m[f"seconds_{s}"] = float(r.get(f"seconds_{s}", 0.0))
        m["seconds_write"] = time.perf_counter() - t0
        manifest.append(m)
    if manifest:
        write_part(storage, manifest)
    return _batch(manifest)
