"""The streaming stitcher: a scene's window maps blended block by block into its mask and probability rasters.

A Ray task per scene (``stitch_scene_and_extras``, started by ``job.raster.driver.run_windowed`` as soon as the
scene's last window is written): output blocks of 512 x 512 are visited row-major; for each, only the windows
overlapping it are decoded (``finedetail.rasters.BlockStitcher``) and blended with the core library's tiling weights
(``tiling.blend_weights`` with the window overlap) and written into tiled GeoTIFFs; then the image path's
post-processing runs on the stitched map: ``post.threshold``, and the morphology of ``post`` (closing, hole filling,
opening, island removal) per class, block by block with ``finedetail.blockmorph`` (exactly the whole-image result:
halos for the local operations, a two-pass union-find across block seams for the component ones; its intermediate
masks are scratch GeoTIFFs), then one class per pixel. Memory is a few windows and blocks, never the scene, so a
structure crossing a window edge comes out as one piece without the scene ever being assembled. What differs from
the image path on the same pixels is upstream of this: the models and the guided filter see each window with its
context only (blended across the overlaps), and window maps are stored as uint8, so the threshold sees the blend of
1/255 steps. The tiled files are then copied with GDAL's COG driver (overviews: nearest for the mask, average for
probabilities) to ``masks/<stem>.tif`` and ``probs/<stem>.tif`` with the input's CRS and transform. Input nodata
(nodata value, alpha band or mask band) is carried as the outputs' GDAL mask band (an internal per-dataset mask,
valid = 255), because a nodata *value* would collide with the masks' own values (0 = background) or not fit uint8;
such pixels are 0 in both rasters. With ``JobConfig.vector`` the polygons are traced as the blocks are written
(``job.raster.vectors``). A scene without georeferencing gets the image path's PNG files and, from
``write_plain_extras``, its other files (``job.raster`` docstring, outputs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np

from finedetail.rasters import BlockStitcher, block_grid, to_rgb8
from finedetail.tiling import Window
from finedetail.types import to_u8
from job.config import JobConfig
from job.io import open_storage, output_key, read_bytes, write_bytes_atomic
from job.raster import require_rasterio
from job.raster.vectors import Polygons, require_shapely, to_crs, write_geojson, write_gpkg
from job.raster.windows import (GDAL_ENV, OUTPUT_BLOCK, SceneInfo, cog_copy, decode_window_prob, open_raster,
                                png_copy, publish_file, quiet, scratch_folder, window_prob_key)

log = logging.getLogger("finedetail.job")

__all__ = ["stitch_scene", "stitch_scene_and_extras", "write_plain_extras"]

#: rows per strip when the plain extras are made from the published mask (``write_plain_extras``)
STRIP_ROWS = 512


def _final_outputs(info: SceneInfo, paths: dict[str, str], classes: Sequence[str]) -> list[tuple[str, str, str]]:
    """(GDAL source, output folder, overview resampling) of each published file (``job.raster`` docstring, outputs)."""
    if info.georeferenced or len(classes) == 1:
        return [(paths["mask"], "masks", "nearest"), (paths["prob"], "probs", "average")]
    # several classes, plain raster: the image path's layout (labels/ + probs/<class>/), one band per PNG
    return [(paths["mask"], "labels", "nearest")] + [
        (f"vrt://{paths['prob']}?bands={c + 1}", f"probs/{name}", "average") for c, name in enumerate(classes)]


class _TiffMaskStore:
    """``finedetail.blockmorph.MaskStore`` on a tiled GeoTIFF (one band, uint8 0/1) in the stitch's scratch folder:
    the intermediate masks of the block-wise post-processing stay on disk, never in memory."""

    def __init__(self, path: str, profile: dict[str, Any], stack: contextlib.ExitStack) -> None:
        self.path, self.profile, self.stack = path, profile, stack
        self._ds: Any = None

    def write(self, block: Window, mask: np.ndarray) -> None:
        rio = require_rasterio()
        if self._ds is None:
            self._ds = rio.open(self.path, "w", count=1, **self.profile)
        self._ds.write(mask.astype(np.uint8), 1, window=_rwin(block))

    def finish(self):
        self._ds.close()
        ds = self.stack.enter_context(require_rasterio().open(self.path))
        return lambda win: ds.read(1, window=_rwin(win)) > 0


def _rwin(win: Window) -> Any:
    return require_rasterio().windows.Window(win.x0, win.y0, win.w, win.h)


def stitch_scene(cfg: JobConfig, info: SceneInfo, windows: Sequence[Window]) -> dict[str, Any]:
    """Blend a scene's window maps block by block into ``masks/<stem>.tif`` and ``probs/<stem>.tif`` (COG; PNG for
    a scene without georeferencing), and the optional vector file (module docstring). The mask gets the
    image path's post-processing: ``post.threshold`` on the blended probability, then the morphology of
    ``cfg.pipeline.post`` (closing, hole filling, opening, island removal) per class, block by block
    (``finedetail.blockmorph``, exact, with its intermediate masks in scratch GeoTIFFs), then one class per pixel.
    Returns ``{"mask_area", "objects", "seconds", "window_loads", "max_windows_held", "pieces"}``."""
    from finedetail.blockmorph import morphology_blocks
    from finedetail.postprocess import one_class_per_pixel

    rio = require_rasterio()
    if cfg.vector:
        require_shapely()
    t0 = time.perf_counter()
    out = open_storage(cfg.output)[0]
    n_cls = len(cfg.classes)
    post = cfg.pipeline.post
    h, w = info.hw
    blocks = block_grid(info.hw, block=OUTPUT_BLOCK)

    def load(win: Window) -> np.ndarray:
        return decode_window_prob(read_bytes(out, window_prob_key(info.key, win)), n_cls, win)

    stitcher = BlockStitcher(info.hw, windows, load, overlap=cfg.window_overlap)
    polygons = Polygons(info.hw) if cfg.vector else None
    area, pieces = 0, 0
    src_storage = out if info.source_in_output else open_storage(cfg.input)[0]
    with scratch_folder(out) as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(rio.Env(**GDAL_ENV))
        stack.enter_context(quiet())
        crs = rio.crs.CRS.from_wkt(info.crs_wkt) if info.crs_wkt else None
        transform = rio.Affine.from_gdal(*info.transform)
        profile = dict(driver="GTiff", width=w, height=h, dtype="uint8", crs=crs, transform=transform, tiled=True,
                       blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK, compress="deflate", BIGTIFF="IF_SAFER")
        paths = {name: os.path.join(tmp, f"{name}.tif") for name in ("mask", "prob", "raw", "post")}
        src = stack.enter_context(open_raster(src_storage, info.source)) if info.masked else None

        def valid_of(rwin: Any) -> np.ndarray | None:
            return None if src is None else src.dataset_mask(window=rwin) > 0

        # 1. blend: probabilities (published) and each class's thresholded mask (scratch), nodata = background
        with rio.open(paths["prob"], "w", count=n_cls, **profile) as dp, \
                rio.open(paths["raw"], "w", count=n_cls, **profile) as dr:
            for block in blocks:
                rwin = _rwin(block)
                prob = stitcher.block(block)
                raw = prob >= np.float32(post.threshold)
                valid = valid_of(rwin)
                if valid is not None:
                    raw &= valid[None]
                    prob = prob * valid[None]
                    dp.write_mask(valid.astype(np.uint8) * 255, window=rwin)
                dp.write(to_u8(prob), window=rwin)
                dr.write(raw.astype(np.uint8), window=rwin)
        # 2. the morphology, per class, block by block
        raw_ds = stack.enter_context(rio.open(paths["raw"]))
        with rio.open(paths["post"], "w", count=n_cls, **profile) as dq:
            for c in range(n_cls):
                store_profile = {k: v for k, v in profile.items() if k not in ("crs", "transform")}
                pieces += morphology_blocks(
                    info.hw, post, block=OUTPUT_BLOCK,
                    read=lambda win, band=c + 1: raw_ds.read(band, window=_rwin(win)) > 0,
                    write=lambda b, m, band=c + 1: dq.write(m.astype(np.uint8), band, window=_rwin(b)),
                    scratch=lambda c=c: _TiffMaskStore(os.path.join(tmp, f"holes{c}.tif"), store_profile, stack),
                )["pieces"]
        # 3. one class per pixel, nodata, labels, polygons
        post_ds = stack.enter_context(rio.open(paths["post"]))
        again = BlockStitcher(info.hw, windows, load, overlap=cfg.window_overlap) if n_cls > 1 else None
        with rio.open(paths["mask"], "w", count=1, **profile) as dm:
            for block in blocks:
                rwin = _rwin(block)
                masks = post_ds.read(window=rwin) > 0
                if again is not None:  # the rule needs the blended probabilities: blend once more
                    one_class_per_pixel(masks, again.block(block))
                valid = valid_of(rwin)
                if valid is not None:
                    masks &= valid[None]
                    dm.write_mask(valid.astype(np.uint8) * 255, window=rwin)
                if n_cls == 1:
                    labels = masks[0].astype(np.uint8)
                    dm.write(labels[None] * np.uint8(255), window=rwin)
                else:
                    labels = np.zeros(masks.shape[1:], np.uint8)
                    for c in range(n_cls):
                        labels[masks[c]] = c + 1
                    dm.write(labels[None], window=rwin)
                area += int(masks.sum())
                if polygons is not None:
                    polygons.add_block(labels, block)
        stack.close()  # closes every GeoTIFF (flushes) before the COG copies read them
        t_blocks = time.perf_counter() - t0
        for i, (source, folder, resampling) in enumerate(_final_outputs(info, paths, cfg.classes)):
            final = os.path.join(tmp, f"out{i}{info.output_suffix}")
            if info.georeferenced:
                cog_copy(source, final, resampling=resampling)
            else:
                png_copy(source, final)
            publish_file(out, output_key(folder, info.key, suffix=info.output_suffix), final)
        objects = None
        if polygons is not None:
            feats = to_crs(polygons.result(tolerance=cfg.vector_tolerance), info.transform)
            objects = len(feats)
            ext = ".geojson" if cfg.vector == "geojson" else ".gpkg"
            vpath = os.path.join(tmp, "vector" + ext)
            writer = write_geojson if cfg.vector == "geojson" else write_gpkg
            writer(vpath, feats, classes=cfg.classes, crs_wkt=info.crs_wkt)
            publish_file(out, output_key("vectors", info.key, suffix=ext), vpath)
    log.info("stitched %s: %d windows, %d blocks in %.1f s (+ COG %.1f s)", info.key, len(windows), len(blocks),
             t_blocks, time.perf_counter() - t0 - t_blocks)
    held = max(stitcher.max_cached, again.max_cached if again is not None else 0)
    return {"mask_area": area, "objects": objects, "seconds": time.perf_counter() - t0,
            "window_loads": stitcher.loads + (again.loads if again is not None else 0), "max_windows_held": held,
            "pieces": pieces}


# --------------------------------------------------------------------------------------------- plain scenes


def _strips_with_halo(ds: Any, rows: int, halo: int = 1
                      ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Band 1 of ``ds`` in strips of ``rows`` rows, read top to bottom once (sequential: cheap for PNG):
    ``(y0, strip, up to `halo` rows above or None, up to `halo` rows below or None)``; ``halo <= rows``."""
    rio = require_rasterio()
    if not 1 <= halo <= rows:
        raise ValueError(f"halo must be in 1..rows={rows}, got {halo=}")

    def read(y0: int) -> np.ndarray:
        return ds.read(1, window=rio.windows.Window(0, y0, ds.width, min(rows, ds.height - y0)))

    cur, above = read(0), None
    for y0 in range(0, ds.height, rows):
        nxt = read(y0 + rows) if y0 + rows < ds.height else None
        yield y0, cur, above, None if nxt is None else nxt[:halo]
        above, cur = cur[-halo:], nxt


def write_plain_extras(cfg: JobConfig, info: SceneInfo) -> None:
    """For a scene without georeferencing (a large photo): the files the image path writes besides the mask and
    probabilities that ``stitch_scene`` publishes (``finedetail.outputs.render_outputs``), so a large photo gets the
    same files as a small one: ``rle/<stem>.json`` (one COCO RLE, or class name -> RLE), ``overlays/<stem>.png``
    (unless ``cfg.overlays`` is off) and, with several classes, ``masks/<class>/<stem>.png``. Everything is made
    from the published ``masks/<stem>.png`` (``labels/<stem>.png``) read back strip by strip, and the scene's
    pixels read as its windows are: memory is a strip, plus the RLE's counts. (``instances/`` for ``coco`` is not
    written: connected components need the whole mask.)"""
    from finedetail.outputs import draw_overlay, overlay_width
    from finedetail.rle import StripRle, counts_to_string

    rio = require_rasterio()
    out = open_storage(cfg.output)[0]
    src_storage = out if info.source_in_output else open_storage(cfg.input)[0]
    classes, (h, w) = list(cfg.classes), info.hw
    single = len(classes) == 1
    labels_key = output_key("masks" if single else "labels", info.key, suffix=".png")
    rles = [StripRle(info.hw) for _ in classes]

    def per_class(lab: np.ndarray) -> list[np.ndarray]:  # the published mask is 0 / 255 with one class
        return [lab > 0] if single else [lab == c + 1 for c in range(len(classes))]

    with scratch_folder(out) as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(rio.Env(**GDAL_ENV))
        stack.enter_context(quiet())
        labels = stack.enter_context(open_raster(out, labels_key))
        src = stack.enter_context(open_raster(src_storage, info.source)) if cfg.overlays else None
        profile = dict(driver="GTiff", width=w, height=h, dtype="uint8", compress="deflate", zlevel=1,
                       BIGTIFF="IF_SAFER")
        files: dict[str, tuple[str, Any]] = {}  # output folder -> (scratch path, open GeoTIFF)
        if not single:
            for c, name in enumerate(classes):
                path = os.path.join(tmp, f"mask{c}.tif")
                files[f"masks/{name}"] = (path, stack.enter_context(rio.open(path, "w", count=1, **profile)))
        if src is not None:
            path = os.path.join(tmp, "overlay.tif")
            files["overlays"] = (path, stack.enter_context(rio.open(path, "w", count=3, **profile)))
        width = overlay_width(info.hw)  # the whole scene's, as render_outputs draws a small image's
        for y0, lab, above, below in _strips_with_halo(labels, STRIP_ROWS, halo=min(STRIP_ROWS, 3 * width + 1)):
            rwin = rio.windows.Window(0, y0, w, lab.shape[0])
            for c, m in enumerate(per_class(lab)):
                rles[c].add(m)
                if not single:
                    files[f"masks/{classes[c]}"][1].write((m * np.uint8(255))[None], window=rwin)
            if src is None:
                continue
            # the outline of a row depends on the rows near it: draw the strip with the mask's rows above and
            # below it (farther than outline + halo reach; the image rows there are placeholders), keep its own rows
            halo = [a for a in (above, lab, below) if a is not None]
            image = to_rgb8(src.read(list(info.bands), window=rwin), info.stretch)
            top, bottom = (0 if a is None else len(a) for a in (above, below))
            shown = np.concatenate([np.repeat(image[:1], top, 0), image, np.repeat(image[-1:], bottom, 0)])
            shown = draw_overlay(shown, np.stack(per_class(np.concatenate(halo))), width=width)
            files["overlays"][1].write(np.moveaxis(shown[top:top + lab.shape[0]], -1, 0), window=rwin)
        stack.close()
        for i, (folder, (path, _)) in enumerate(files.items()):
            final = os.path.join(tmp, f"extra{i}.png")
            # deflate level 1, the image path's (finedetail.codecs.encode_png); 6 took 4x as long on a 108 MP overlay
            png_copy(path, final, zlevel=1)
            publish_file(out, output_key(folder, info.key, suffix=".png"), final)
        docs = [{"size": [h, w], "counts": counts_to_string(r.counts())} for r in rles]
        rle_doc = docs[0] if single else dict(zip(classes, docs))
        write_bytes_atomic(out, output_key("rle", info.key, suffix=".json"), json.dumps(rle_doc).encode())


def stitch_scene_and_extras(cfg: JobConfig, info: SceneInfo, windows: Sequence[Window]) -> dict[str, Any]:
    """The stitch task of ``run_windowed``: ``stitch_scene``, then for a scene without georeferencing the rest of
    the image path's files (``write_plain_extras``), timed into ``seconds``."""
    result = stitch_scene(cfg, info, windows)
    if not info.georeferenced:
        t0 = time.perf_counter()
        write_plain_extras(cfg, info)
        result["seconds"] += time.perf_counter() - t0
    return result
