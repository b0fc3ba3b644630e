"""Raster window IO: open rasters, read a scene's windows into rows, store window maps, write GeoTIFF / COG / PNG.

Scene info (``scene_info``, a Ray task per scene): header (size, bands, dtype, CRS, transform, nodata / mask), the
band mapping (``JobConfig.bands``) and, for non-8-bit data, the percentile stretch (``JobConfig.stretch``) computed
from a decimated overview read (long side <= 1024 px; internal overviews are used when the file has them), so every
window of the scene is stretched with the same numbers. Formats other than TIFF (JPEG, PNG, WebP, BMP) can't be read
by window cheaply, and must give exactly the pixels the image path decodes (EXIF orientation, palette, 16-bit and
alpha rules of ``finedetail.codecs``), so they are decoded ONCE with the image path's decoder
(``finedetail.codecs.decode_image_strips``) and written strip by strip (512 rows, upright, RGB) into a tiled GeoTIFF
at ``_windows/<stem>/source.tif`` that the windows are then read from. Memory: the file plus the decoded image in its
stored mode (Pillow decodes these formats whole; 3 bytes per pixel for RGB), once, in that task.

Window rows: one Ray Data row per window, with exactly the columns of an image row (``key`` = ``"<scene>#<y0>_<x0>"``,
``state`` = the window's RGB uint8 image, ...) plus ``scene``, ``y0``, ``x0``, ``y1``, ``x1`` and ``read`` (how to
read the window). ``read_windows`` reads each window with rasterio (no row and no worker ever holds the scene); after
the model stages, ``write_windows`` stores each window's fused probability (uint8, classes stacked vertically in one
PNG) atomically at ``_windows/<stem>/<y0>_<x0>.png`` and writes the windows' manifest rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from finedetail.rasters import Stretch, overview_shape, rgb_bands, stretch_from_sample, to_rgb8, window_key
from finedetail.tiling import Window
from finedetail.types import to_u8
from job.config import JobConfig
from job.io import (ObjectNotFoundError, Storage, StorageError, exists, mask_key, open_storage, read_bytes, redact,
                    safe_key, write_bytes_atomic, write_file)
from job.manifest import STAGES, write_part
from job.raster import require_rasterio
from job.rows import column, new_state, read_state

__all__ = [
    "SceneInfo",
    "decode_window_prob",
    "encode_window_prob",
    "open_raster",
    "read_windows",
    "scene_info",
    "window_item",
    "window_prob_key",
    "write_windows",
]

#: rasters GDAL reads by window cheaply; every other format (PNG, JPEG, WebP, BMP) is decoded once into a tiled copy
TIFF_EXTS = (".tif", ".tiff")
WINDOW_DIR = "_windows"
#: output block = GeoTIFF tile size of the outputs; also the stitch's unit of work
OUTPUT_BLOCK = 512
#: rows per strip when a PNG / JPEG is decoded into its tiled copy
COPY_STRIP_ROWS = 512
#: long side of the decimated read the stretch percentiles come from
OVERVIEW_SIDE = 1024
#: GDAL settings for every raster operation here: a bounded block cache (MB), masks inside the TIFF
GDAL_ENV = {"GDAL_CACHEMAX": 128, "GDAL_TIFF_INTERNAL_MASK": True}
#: and for S3 sources: no listing of the "folder" to look for sidecar files (.ovr, .msk) on every open
GDAL_ENV_REMOTE = {**GDAL_ENV, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def scene_stem(key: str) -> str:
    return posixpath.splitext(safe_key(key))[0]


def window_prob_key(scene_key: str, win: Window) -> str:
    """Output key of a window's probability PNG: ``_windows/<scene stem>/<y0>_<x0>.png``."""
    return safe_key(f"{WINDOW_DIR}/{scene_stem(scene_key)}/{win.y0}_{win.x0}.png")


def _source_copy_key(scene_key: str) -> str:
    return safe_key(f"{WINDOW_DIR}/{scene_stem(scene_key)}/source.tif")


def error_text(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------- raster access


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Plain images (PNG, JPEG, TIFF without georeferencing) are expected here: no warning per open."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@contextlib.contextmanager
def open_raster(storage: Storage, key: str) -> Iterator[Any]:
    """A rasterio dataset for ``key`` of ``storage`` (local path, or S3 through the storage's pyarrow filesystem, so
    credentials and endpoints resolve like every other read of the job), inside ``GDAL_ENV``."""
    rio = require_rasterio()
    path = storage.path(key)
    with rio.Env(**(GDAL_ENV if storage.kind == "local" else GDAL_ENV_REMOTE)), quiet():
        if storage.kind == "local":
            if not os.path.isfile(path):
                raise ObjectNotFoundError(f"cannot read {storage.uri_for(key)}: not found", uri=storage.uri,
                                          key=key, op="read")
            ds = rio.open(path)
        else:
            fs = storage.filesystem
            ds = rio.open(path, opener=lambda p, mode="rb": fs.open_input_file(p))
        try:
            yield ds
        finally:
            ds.close()


def is_georeferenced(ds: Any) -> bool:
    return ds.crs is not None or not ds.transform.is_identity or bool(ds.gcps[0])


def _has_mask(ds: Any) -> bool:
    """Whether any band has nodata, alpha or a mask band (GDAL mask flags other than 'all valid')."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.all_valid not in flags for flags in ds.mask_flag_enums)


# --------------------------------------------------------------------------------------------- scene info


@dataclass(frozen=True)
class SceneInfo:
    """What the window reader and the stitcher need to know about one scene (small; travels in rows and tasks).

    ``source`` / ``source_in_output``: the key windows are read from, in the input storage or (PNG / JPEG decoded
    into a tiled copy) in the output storage. ``transform``: GDAL order (c, a, b, f, d, e) of the affine transform.
    ``masked``: the input has nodata / alpha / a mask band (carried to the outputs)."""

    key: str
    hw: tuple[int, int]
    count: int
    dtype: str
    bands: tuple[int, int, int]
    stretch: Stretch
    crs_wkt: str | None
    transform: tuple[float, ...]
    masked: bool
    source: str
    source_in_output: bool = False

    @property
    def georeferenced(self) -> bool:
        return self.crs_wkt is not None or tuple(self.transform) != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def output_suffix(self) -> str:
        """``.tif`` (Cloud-Optimized GeoTIFF) for georeferenced scenes; ``.png`` otherwise, the image path's format."""
        return ".tif" if self.georeferenced else ".png"

    def read_spec(self) -> str:
        """JSON carried by each window row: how to read its pixels."""
        return json.dumps({"source": self.source, "in_output": self.source_in_output, "bands": list(self.bands),
                           "stretch": self.stretch.to_dict()})


def scene_info(cfg: JobConfig, key: str) -> SceneInfo:
    """Header, band mapping and stretch of one scene (a Ray task in ``run_windowed``; see the module docstring)."""
    require_rasterio()
    from rasterio.enums import Resampling

    storage = open_storage(cfg.input)[0]
    source, in_output = key, False
    if not key.lower().endswith(TIFF_EXTS):
        source, in_output = _tiled_copy(cfg, key), True
    src_storage = open_storage(cfg.output)[0] if in_output else storage
    with open_raster(src_storage, source) as ds:
        bands = rgb_bands(ds.count, cfg.bands)
        hw = (ds.height, ds.width)
        dtype = ds.dtypes[0]
        if len(set(ds.dtypes)) != 1:
            raise ValueError(f"{key}: bands of different data types {ds.dtypes} are not supported; "
                             "convert the raster to one data type (gdal_translate -ot)")
        stretch = Stretch()
        if dtype != "uint8":
            oh, ow = overview_shape(hw, max_side=OVERVIEW_SIDE)
            sample = ds.read(list(bands), out_shape=(3, oh, ow), resampling=Resampling.nearest, masked=True)
            valid = ~np.ma.getmaskarray(sample).any(axis=0)
            stretch = stretch_from_sample(np.ma.getdata(sample), percentiles=cfg.stretch, valid=valid)
        crs = ds.crs.to_wkt() if ds.crs is not None else None
        return SceneInfo(key=key, hw=hw, count=ds.count, dtype=dtype, bands=bands, stretch=stretch, crs_wkt=crs,
                         transform=tuple(ds.transform.to_gdal()), masked=_has_mask(ds), source=source,
                         source_in_output=in_output)


def _tiled_copy(cfg: JobConfig, key: str) -> str:
    """Decode a non-TIFF image (PNG, JPEG, WebP, BMP, ...) once, exactly as the image path decodes it
    (``finedetail.codecs.decode_image_strips``: Pillow, EXIF orientation applied, the same mode conversions), and
    write it strip by strip into a tiled RGB GeoTIFF in the output storage; returns its key. Peak memory: the file's
    bytes plus the decoded image in its stored mode (Pillow decodes these formats whole) plus one strip.

    Reused when it already exists (written atomically, so it is whole)."""
    from finedetail.codecs import decode_image_strips

    rio = require_rasterio()
    out = open_storage(cfg.output)[0]
    dest = _source_copy_key(key)
    if exists(out, dest):
        return dest
    (h, w), strips = decode_image_strips(read_bytes(open_storage(cfg.input)[0], key), rows=COPY_STRIP_ROWS,
                                         max_pixels=cfg.max_pixels)
    with scratch_folder(out) as tmp, rio.Env(**GDAL_ENV), quiet():
        path = os.path.join(tmp, "source.tif")
        profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True,
                       blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK, compress="deflate", zlevel=1,
                       BIGTIFF="IF_SAFER")
        with rio.open(path, "w", **profile) as dst:
            for y0, strip in strips:
                dst.write(np.moveaxis(strip, -1, 0), window=rio.windows.Window(0, y0, w, strip.shape[0]))
        publish_file(out, dest, path)
    return dest


# --------------------------------------------------------------------------------------------- window rows


def window_item(info: SceneInfo, win: Window) -> dict[str, Any]:
    """The first row of one window (the driver's items): its key, scene, bounds and how to read it."""
    return {"key": window_key(info.key, win), "scene": info.key, "y0": win.y0, "x0": win.x0, "y1": win.y1,
            "x1": win.x1, "read": info.read_spec()}


def read_windows(batch: dict[str, np.ndarray], *, cfg: JobConfig, attempts: Any = None) -> dict[str, np.ndarray]:
    """CPU task: read each row's window (bands -> RGB, stretch) into its state; with ``cfg.coarse``, also the window
    of the scene's coarse mask raster. A failure becomes an error row; the batch goes on. The rows get every column
    ``job.stages.read_decode`` gives an image row, plus the window columns. ``attempts`` (the run's
    ``job.stages.AttemptLog``) bounds the tries of a window that kills its worker (a crash in GDAL), as for images."""
    from job import stages

    rio = require_rasterio()
    storages = {False: open_storage(cfg.input)[0], True: open_storage(cfg.output)[0]}
    coarse_storage = open_storage(cfg.coarse)[0] if cfg.coarse else None

    def run(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            t0 = time.perf_counter()
            try:
                spec = json.loads(row["read"])
                win = Window(int(row["y0"]), int(row["x0"]), int(row["y1"]), int(row["x1"]))
                rwin = rio.windows.Window(win.x0, win.y0, win.w, win.h)
                with open_raster(storages[bool(spec["in_output"])], spec["source"]) as ds:
                    data = ds.read(spec["bands"], window=rwin)
                maps = None
                if coarse_storage is not None:
                    maps = _coarse_window(coarse_storage, str(row["scene"]), rwin, win, len(cfg.classes))
                row["state"] = new_state(to_rgb8(data, Stretch.from_dict(spec["stretch"])), maps)
            except Exception as exc:  # a bad window is an error row, never a crashed job
                row["status"], row["error"], row["state"] = "error", error_text(exc), b""
            row["seconds_decode"] = time.perf_counter() - t0

    out = []
    for i, key in enumerate(batch["key"]):
        row = stages._empty_row(str(key))
        for col in ("scene", "y0", "x0", "y1", "x1", "read"):
            v = batch[col][i]
            row[col] = v.item() if hasattr(v, "item") else v
        out.append(row)
    stages._guarded(out, attempts, "decode", run)
    return stages._batch(out)


def _coarse_window(storage: Storage, scene: str, rwin: Any, win: Window, num_classes: int) -> np.ndarray:
    """(C, h, w) float32 window of the coarse mask made elsewhere for ``scene`` (``<stem>.tif`` or ``<stem>.png``
    under the coarse URI; nonzero = object, or class indices with several classes)."""
    for suffix in (".tif", ".png"):
        key = mask_key(scene, suffix=suffix)
        if exists(storage, key):
            with open_raster(storage, key) as ds:
                if ds.height < win.y1 or ds.width < win.x1:
                    raise ValueError(f"coarse mask {key} is {ds.width}x{ds.height}, smaller than its scene; "
                                     "coarse masks must have their image's size")
                labels = ds.read(1, window=rwin)
            if num_classes > 1:
                return np.stack([(labels == c + 1) for c in range(num_classes)]).astype(np.float32)
            return (labels != 0)[None].astype(np.float32)
    raise ObjectNotFoundError(f"no coarse mask for {scene}: expected {mask_key(scene, suffix='.tif')} or "
                              f"{mask_key(scene)} under {storage.uri}", uri=storage.uri, key=scene, op="read")


def encode_window_prob(prob: np.ndarray) -> bytes:
    """(C, h, w) uint8 -> PNG bytes of the classes stacked vertically ((C * h, w) grey)."""
    from finedetail.codecs import encode_png

    c, h, w = prob.shape
    return encode_png(np.ascontiguousarray(prob.reshape(c * h, w)))


def decode_window_prob(data: bytes, num_classes: int, win: Window) -> np.ndarray:
    """Inverse of ``encode_window_prob``: (C, win.h, win.w) uint8."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint8 or arr.shape != (num_classes * win.h, win.w):
        got = None if arr is None else (arr.dtype, arr.shape)
        raise ValueError(f"window map for {win!r} must decode to uint8 ({num_classes * win.h}, {win.w}), got {got}; "
                         "delete it so the window is computed again")
    return arr.reshape(num_classes, win.h, win.w)


def write_windows(batch: dict[str, np.ndarray], *, cfg: JobConfig, geo_hash: str,
                  attempts: Any = None) -> dict[str, np.ndarray]:
    """CPU task: store each ok window's fused probability map (atomically), then one manifest part for the batch;
    returns the manifest rows (plus ``scene``) only. (``attempts`` is accepted for symmetry with the other stages;
    writing a PNG has no input-dependent crash to bound.)"""
    from job.stages import _rows

    storage = open_storage(cfg.output)[0]
    manifest = []
    for r in _rows(batch):
        t0 = time.perf_counter()
        m = {k: r.get(k) for k in ("key", "status", "error", "attempts")}
        win = Window(int(r["y0"]), int(r["x0"]), int(r["y1"]), int(r["x1"]))
        m.update(scene=str(r["scene"]), height=win.h, width=win.w, mask_area=None,
                 components=int(r.get("components", 0)))
        if r["status"] == "ok":
            try:
                st = read_state(r)
                write_bytes_atomic(storage, window_prob_key(str(r["scene"]), win),
                                   encode_window_prob(to_u8(st.fused_prob())))
                m["mask_area"] = int(st.mask.sum())
            except StorageError:
                raise  # a write that keeps failing fails the job: never a manifest row claiming success
            except Exception as exc:
                m["status"], m["error"] = "error", f"write: {error_text(exc)}"
        passes_c, passes_r = int(r.get("passes_coarse", 0)), int(r.get("passes_refiner", 0))
        m.update(coarse_passes=passes_c, refiner_passes=passes_r, encoder_passes=passes_c + passes_r,
                 config_hash=geo_hash, finished_at=time.time())
        for s in STAGES:
            m[f"seconds_{s}"] = float(r.get(f"seconds_{s}", 0.0))
        m["seconds_write"] = time.perf_counter() - t0
        manifest.append(m)
    if manifest:
        write_part(storage, manifest)
    keys = list(dict.fromkeys(k for r in manifest for k in r))
    return {k: column([r.get(k) for r in manifest]) for k in keys}


# --------------------------------------------------------------------------------------------- output files


@contextlib.contextmanager
def scratch_folder(storage: Storage) -> Iterator[str]:
    """A private scratch folder: hidden, under the output root for local output (so finished files move into place
    with an atomic rename on the same filesystem), in the system temp folder for S3."""
    if storage.kind == "local":
        base = os.path.join(storage.root, ".tmp-geo")
        os.makedirs(base, exist_ok=True)
        path = tempfile.mkdtemp(prefix=f"{uuid.uuid4().hex[:8]}-", dir=base)
    else:
        path = tempfile.mkdtemp(prefix="finedetail-geo-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if storage.kind == "local":
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))  # only when no other stitch is using it


def publish_file(storage: Storage, key: str, local_path: str) -> str:
    """Move a finished local file to ``key``: an atomic rename for local output, a streamed upload (``write_file``,
    retried like every write of the job) for S3. Readers see the old object or the whole new one."""
    key = safe_key(key)
    if storage.kind == "local":
        dest = storage.path(key)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(local_path, dest)
        return storage.uri_for(key)
    return write_file(storage, key, local_path)


def png_copy(src_path: str, dst_path: str, *, zlevel: int = 6) -> None:
    """GDAL's PNG driver writes from a source dataset scanline by scanline: no full-scene array."""
    rio = require_rasterio()
    with rio.Env(**GDAL_ENV), quiet():
        rio.shutil.copy(src_path, dst_path, driver="PNG", ZLEVEL=zlevel)
    aux = dst_path + ".aux.xml"  # GDAL's sidecar for what PNG can't hold (e.g. a mask band): not an output
    if os.path.exists(aux):
        os.unlink(aux)


def cog_copy(src_path: str, dst_path: str, *, resampling: str) -> None:
    rio = require_rasterio()
    with rio.Env(**GDAL_ENV), quiet():
        rio.shutil.copy(src_path, dst_path, driver="COG", compress="DEFLATE", blocksize=OUTPUT_BLOCK,
                        overview_resampling=resampling, resampling=resampling, BIGTIFF="IF_SAFER",
                        num_threads=1)
