"""Satellite-scale scenes: GeoTIFF in, georeferenced masks out, seam-free tiling of rasters far larger than memory.

Needs the ``geo`` extra (``pip install 'finedetail[geo]'``: rasterio, which bundles GDAL, shapely, and pyogrio for
GeoPackage output); they are imported lazily, and a job that meets a raster needing it without the extra fails with that install line.

Which inputs come here: any image with more than ``JobConfig.window_pixels`` pixels, and any GeoTIFF that a plain
image decode would lose something of: georeferenced (CRS or geotransform), not 8-bit, or with a band layout other
than grey / grey+alpha / RGB / RGBA. TIFFs are sorted by ``split_windowed`` (called by ``job.run.run_job``, from
their headers); every other format (a large JPEG / PNG / WebP photo) by the image path's decode step, which reads
its header before decoding and hands it over (``job.stages.WINDOWED``) instead of decoding it, so no driver reads a
header per photo. Small plain TIFFs stay on the image path. A raster at or under ``window_pixels`` still comes here
when georeferenced, as ONE window.

How a scene flows (``run_windowed``):

1. **Scene info** (a Ray task per scene): header (size, bands, dtype, CRS, transform, nodata / mask), the band
   mapping (``JobConfig.bands``) and, for non-8-bit data, the percentile stretch (``JobConfig.stretch``) computed from
   a decimated overview read (long side <= 1024 px; internal overviews are used when the file has them), so every
   window of the scene is stretched with the same numbers. Formats other than TIFF (JPEG, PNG, WebP, BMP) can't
   be read by window cheaply, and must give exactly the pixels the image path decodes (EXIF orientation, palette,
   16-bit and alpha rules of ``finedetail.codecs``), so they are decoded ONCE with the image path's decoder
   (``finedetail.codecs.decode_image_strips``) and written strip by strip (512 rows, upright, RGB) into a tiled
   GeoTIFF at ``_windows/<stem>/source.tif`` that the windows are then read from. Memory: the file plus the decoded
   image in its stored mode (Pillow decodes these formats whole; 3 bytes per pixel for RGB), once, in that task.
2. **Window plan** (driver): ``finedetail.geo.plan_windows`` = ``tiling.tile_grid`` with ``JobConfig.window`` and
   ``window_overlap``; the grid offset comes from ``grid_offset`` / ``$FINEDETAIL_GRID_OFFSET`` ("dy,dx", default
   0,0), which exists to audit seams: moving the grid must not change the stitched mask (tests/test_geo.py).
   Sizing tip: a window of ``k * (1024 - tile_overlap) + tile_overlap`` px is exactly k x k refiner tiles at 1x
   (1920 = 2 x 2 with the default overlap of 128; 2048 needs 3 x 3, 2.25x the refiner work for 7 % more pixels).
   Resume is per window: a window whose latest manifest row (key ``"<scene>#<y0>_<x0>"``) is ``ok`` with this
   configuration's ``geo_hash`` and the same window size, and whose probability file exists, is not recomputed.
3. **Windows through the model stages**: one Ray Data row per window, with exactly the columns of an image row
   (``key`` = ``"<scene>#<y0>_<x0>"``, ``image`` = the window's RGB uint8, ...) plus ``scene``, ``y0``, ``x0``, ``y1``,
   ``x1`` and ``read`` (how to read the window). ``read_windows`` reads each window with rasterio (no row and no
   worker ever holds the scene), then the SAME stage classes as images run (``job.stages``: coarse, one stage per
   variant, crops, fuse, each stage post-processing per window), then ``write_windows`` stores each window's fused
   probability (uint8, classes stacked vertically in one PNG) atomically at ``_windows/<stem>/<y0>_<x0>.png`` and
   writes the windows' manifest rows.
4. **Streaming stitch** (a Ray task per scene, started as soon as its last window is written): output blocks of
   512 x 512 are visited row-major; for each, only the windows overlapping it are decoded
   (``finedetail.geo.BlockStitcher``) and blended with the core library's tiling weights
   (``tiling.blend_weights`` with the window overlap) and written into tiled GeoTIFFs; then the image path's
   post-processing runs on the stitched map: ``post.threshold``, and the morphology of ``post`` (closing, hole
   filling, opening, island removal) per class, block by block with ``finedetail.blockmorph`` (exactly the
   whole-image result: halos for the local operations, a two-pass union-find across block seams for the
   component ones; its intermediate masks are scratch GeoTIFFs), then one class per pixel. Memory is a few windows
   and blocks, never the scene, so a structure crossing a window edge comes out as one piece without the scene
   ever being assembled. What differs from the image path on the same pixels is upstream of this: the models and
   the guided filter see each window with its context only (blended across the overlaps), and window maps are
   stored as uint8, so the threshold sees the blend of 1/255 steps. The tiled files are then copied with GDAL's COG driver (overviews: nearest for the
   mask, average for probabilities) to ``masks/<stem>.tif`` and ``probs/<stem>.tif`` with the input's CRS and
   transform. Input nodata (nodata value, alpha band or mask band) is carried as the outputs' GDAL mask band (an
   internal per-dataset mask, valid = 255), because a nodata *value* would collide with the masks' own values
   (0 = background) or not fit uint8; such pixels are 0 in both rasters.
   With ``JobConfig.vector`` the mask's polygons are traced block by block (``rasterio.features.shapes``, in scene
   pixel coordinates so pieces of one object meet exactly), pieces touching a block edge are merged with shapely,
   simplified by ``vector_tolerance`` pixels (= ``vector_tolerance`` x pixel size in CRS units) and written in the
   raster's CRS to ``vectors/<stem>.geojson`` (GeoJSON with a ``crs`` member, as GDAL writes non-WGS84 GeoJSON) or
   ``vectors/<stem>.gpkg`` (GeoPackage written by GDAL via pyogrio, one ``Polygon`` feature per object part, table ``mask``). Polygons are
   held in memory until written: memory there grows with the number of objects, not with the pixel count.
5. **Manifest**: one row per window (above) and one per scene (key = the input key, ``config_hash`` = the job's,
   so ``run_job`` skips a finished scene next time; sums of the windows' passes and stage seconds;
   ``seconds_write`` = the stitch). ``run_windowed`` returns the scene rows only (one per input, like images).

Outputs per scene, georeferenced (CRS or geotransform): ``masks/<stem>.tif`` (uint8; one class: 0 / 255 like the
PNG masks; several: class index 1..C), ``probs/<stem>.tif`` (uint8 0..255, one band per class). A scene without
georeferencing (a big PNG / JPEG / plain TIFF) gets the image path's files instead, in its displayed orientation,
written by GDAL's PNG driver scanline by scanline from the stitched raster: ``masks/<stem>.png`` and
``probs/<stem>.png`` (one class), or ``labels/<stem>.png`` and ``probs/<class>/<stem>.png``; then, by
``write_plain_extras`` in the same task, strip by strip from the published mask: ``rle/<stem>.json`` (column-major
COCO RLE built from row strips, ``finedetail.rle.StripRle``), ``overlays/<stem>.png`` and, with several classes,
``masks/<class>/<stem>.png``. Not for windowed scenes: ``instances/`` (``coco``; connected components need the whole
mask). Optionally ``vectors/<stem>.<geojson|gpkg>``. Window maps stay under ``_windows/<stem>/`` (resume,
re-stitching).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import traceback
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from finedetail import geo as fg
from finedetail.tiling import Window
from finedetail.types import to_u8
from job import io as jio
from job import manifest as jm
from job.config import JobConfig
from job.rows import column, new_state

log = logging.getLogger("finedetail.job")

__all__ = [
    "GRID_OFFSET_ENV",
    "Probe",
    "SceneInfo",
    "build_window_dataset",
    "current_grid_offset",
    "decode_window_prob",
    "encode_window_prob",
    "geo_hash",
    "open_raster",
    "probe",
    "read_windows",
    "require_rasterio",
    "run_windowed",
    "scene_info",
    "split_windowed",
    "stitch_scene",
    "stitch_scene_and_extras",
    "window_prob_key",
    "write_geojson",
    "write_gpkg",
    "write_plain_extras",
    "write_windows",
]

GEO_EXTRA = "pip install 'finedetail[geo]'"
#: rasters GDAL reads by window cheaply; every other format (PNG, JPEG, WebP, BMP) is decoded once into a tiled copy
TIFF_EXTS = (".tif", ".tiff")
WINDOW_DIR = "_windows"
#: output block = GeoTIFF tile size of the outputs; also the stitch's unit of work
OUTPUT_BLOCK = 512
#: rows per strip when a PNG / JPEG is decoded into its tiled copy
STRIP_ROWS = 512
#: long side of the decimated read the stretch percentiles come from
OVERVIEW_SIDE = 1024
GRID_OFFSET_ENV = "FINEDETAIL_GRID_OFFSET"
#: grid offset (dy, dx) of the window plan; None: $FINEDETAIL_GRID_OFFSET ("dy,dx"), else (0, 0). Read on the driver.
grid_offset: tuple[int, int] | None = None
#: GDAL settings for every raster operation here: a bounded block cache (MB), masks inside the TIFF
GDAL_ENV = {"GDAL_CACHEMAX": 128, "GDAL_TIFF_INTERNAL_MASK": True}
#: and for S3 sources: no listing of the "folder" to look for sidecar files (.ovr, .msk) on every open
GDAL_ENV_REMOTE = {**GDAL_ENV, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def require_rasterio():
    """The rasterio module, or ImportError naming the extra to install."""
    try:
        import rasterio
        import rasterio.features  # noqa: F401 - submodules used below
        import rasterio.shutil  # noqa: F401
        import rasterio.windows  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"large rasters and GeoTIFF input/output need the 'geo' extra (rasterio, shapely): "
                          f"{GEO_EXTRA}") from exc
    return rasterio


def _require_shapely():
    try:
        import shapely
    except ImportError as exc:
        raise ImportError(f"vector output needs the 'geo' extra (shapely): {GEO_EXTRA}") from exc
    return shapely


def current_grid_offset() -> tuple[int, int]:
    """The window grid offset (dy, dx): ``grid_offset`` if set, else ``$FINEDETAIL_GRID_OFFSET`` ("dy,dx"), else
    (0, 0)."""
    if grid_offset is not None:
        return int(grid_offset[0]), int(grid_offset[1])
    raw = os.environ.get(GRID_OFFSET_ENV, "").strip()
    if not raw:
        return (0, 0)
    try:
        dy, dx = (int(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"{GRID_OFFSET_ENV} must be 'dy,dx' (two ints), got {raw!r}") from None
    return dy, dx


def geo_hash(cfg: JobConfig) -> str:
    """What decides a window's pixels besides its position and size: the job's config hash, the band mapping and the
    stretch percentiles. Window manifest rows carry it; a window is reused only under the same one."""
    blob = json.dumps(["geo-1", cfg.config_hash, list(cfg.bands or ()), list(cfg.stretch)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stem(key: str) -> str:
    return posixpath.splitext(jio.safe_key(key))[0]


def window_prob_key(scene_key: str, win: Window) -> str:
    """Output key of a window's probability PNG: ``_windows/<scene stem>/<y0>_<x0>.png``."""
    return jio.safe_key(f"{WINDOW_DIR}/{_stem(scene_key)}/{win.y0}_{win.x0}.png")


def _source_copy_key(scene_key: str) -> str:
    return jio.safe_key(f"{WINDOW_DIR}/{_stem(scene_key)}/source.tif")


def _error_text(exc: BaseException) -> str:
    return jio.redact(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------- raster access


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Plain images (PNG, JPEG, TIFF without georeferencing) are expected here: no warning per open."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@contextlib.contextmanager
def open_raster(storage: jio.Storage, key: str) -> Iterator[Any]:
    """A rasterio dataset for ``key`` of ``storage`` (local path, or S3 through the storage's pyarrow filesystem, so
    credentials and endpoints resolve like every other read of the job), inside ``GDAL_ENV``."""
    rio = require_rasterio()
    path = storage.path(key)
    with rio.Env(**(GDAL_ENV if storage.kind == "local" else GDAL_ENV_REMOTE)), _quiet():
        if storage.kind == "local":
            if not os.path.isfile(path):
                raise jio.ObjectNotFoundError(f"cannot read {storage.uri_for(key)}: not found", uri=storage.uri,
                                              key=key, op="read")
            ds = rio.open(path)
        else:
            fs = storage.filesystem
            ds = rio.open(path, opener=lambda p, mode="rb": fs.open_input_file(p))
        try:
            yield ds
        finally:
            ds.close()


def _is_georeferenced(ds: Any) -> bool:
    return ds.crs is not None or not ds.transform.is_identity or bool(ds.gcps[0])


def _has_mask(ds: Any) -> bool:
    """Whether any band has nodata, alpha or a mask band (GDAL mask flags other than 'all valid')."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.all_valid not in flags for flags in ds.mask_flag_enums)


@dataclass(frozen=True)
class Probe:
    hw: tuple[int, int]
    count: int
    dtype: str
    georeferenced: bool


def probe(storage: jio.Storage, key: str) -> Probe:
    """Header facts of one raster (no pixels read)."""
    with open_raster(storage, key) as ds:
        return Probe((ds.height, ds.width), ds.count, ds.dtypes[0], _is_georeferenced(ds))


def _needs_geo_path(p: Probe, cfg: JobConfig) -> bool:
    if fg.needs_windows(p.hw, window_pixels=cfg.window_pixels):
        return True
    plain = p.dtype == "uint8" and p.count in (1, 2, 3, 4)
    return p.georeferenced or not plain


def split_windowed(cfg: JobConfig, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split input keys into (image-path keys, geo-path keys); order kept. See the module docstring for the rule.
    Only TIFFs are looked at here: any other image larger than ``window_pixels`` is sent here by the image path's
    decode step, which reads its header anyway (``job.stages.read_decode``), so a large archive of photos costs the
    driver no header read per file.

    Headers are read in a small thread pool (IO bound). A key whose header can't be read stays on the image path,
    where decoding turns it into an error row. Without rasterio, TIFFs are sized with Pillow's header reader: all
    stay on the image path when none exceeds ``window_pixels`` (georeferencing is then not kept; a warning says
    so), and ImportError naming the extra is raised otherwise.
    """
    keys = list(keys)
    cands = [k for k in keys if k.lower().endswith(TIFF_EXTS)]
    if not cands:
        return keys, []
    storage = jio.open_storage(cfg.input)[0]
    try:
        require_rasterio()
    except ImportError:
        big = [k for k in cands if _pil_pixels(storage, k) > cfg.window_pixels]
        if big:
            raise ImportError(f"{len(big)} input raster(s), e.g. {big[0]!r}, exceed window_pixels="
                              f"{cfg.window_pixels} and must be read by window, which needs the 'geo' extra "
                              f"(rasterio, shapely): {GEO_EXTRA}") from None
        log.warning("rasterio is not installed: TIFF inputs are decoded as plain images (no georeferenced "
                    "output); install it with %s", GEO_EXTRA)
        return keys, []

    def check(k: str) -> bool:
        try:
            return _needs_geo_path(probe(storage, k), cfg)
        except Exception as exc:  # unreadable: the image path reports it as an error row
            log.info("raster header of %s unreadable (%s); leaving it to the image decoder", k, _error_text(exc))
            return False

    with ThreadPoolExecutor(max_workers=min(16, len(cands))) as pool:
        geo = {k for k, flag in zip(cands, pool.map(check, cands)) if flag}
    return [k for k in keys if k not in geo], [k for k in keys if k in geo]


def _pil_pixels(storage: jio.Storage, key: str) -> int:
    from PIL import Image

    try:
        with storage.filesystem.open_input_file(storage.path(key)) as f, Image.open(f) as im:
            return im.width * im.height
    except Exception:
        return 0


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
    stretch: fg.Stretch
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
    rio = require_rasterio()
    from rasterio.enums import Resampling

    storage = jio.open_storage(cfg.input)[0]
    source, in_output = key, False
    if not key.lower().endswith(TIFF_EXTS):
        source, in_output = _tiled_copy(cfg, key), True
    src_storage = jio.open_storage(cfg.output)[0] if in_output else storage
    with open_raster(src_storage, source) as ds:
        bands = fg.rgb_bands(ds.count, cfg.bands)
        hw = (ds.height, ds.width)
        dtype = ds.dtypes[0]
        if len(set(ds.dtypes)) != 1:
            raise ValueError(f"{key}: bands of different data types {ds.dtypes} are not supported; "
                             "convert the raster to one data type (gdal_translate -ot)")
        stretch = fg.Stretch()
        if dtype != "uint8":
            oh, ow = fg.overview_shape(hw, max_side=OVERVIEW_SIDE)
            sample = ds.read(list(bands), out_shape=(3, oh, ow), resampling=Resampling.nearest, masked=True)
            valid = ~np.ma.getmaskarray(sample).any(axis=0)
            stretch = fg.stretch_from_sample(np.ma.getdata(sample), percentiles=cfg.stretch, valid=valid)
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
    out = jio.open_storage(cfg.output)[0]
    dest = _source_copy_key(key)
    if jio.exists(out, dest):
        return dest
    (h, w), strips = decode_image_strips(jio.read_bytes(jio.open_storage(cfg.input)[0], key), rows=STRIP_ROWS,
                                         max_pixels=cfg.max_pixels)
    with _scratch(out) as tmp, rio.Env(**GDAL_ENV), _quiet():
        path = os.path.join(tmp, "source.tif")
        profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", tiled=True,
                       blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK, compress="deflate", zlevel=1,
                       BIGTIFF="IF_SAFER")
        with rio.open(path, "w", **profile) as dst:
            for y0, strip in strips:
                dst.write(np.moveaxis(strip, -1, 0), window=rio.windows.Window(0, y0, w, strip.shape[0]))
        _publish(out, dest, path)
    return dest


# --------------------------------------------------------------------------------------------- window rows


def _window_item(info: SceneInfo, win: Window) -> dict[str, Any]:
    return {"key": fg.window_key(info.key, win), "scene": info.key, "y0": win.y0, "x0": win.x0, "y1": win.y1,
            "x1": win.x1, "read": info.read_spec()}


def read_windows(batch: dict[str, np.ndarray], *, cfg: JobConfig, attempts: Any = None) -> dict[str, np.ndarray]:
    """CPU task: read each row's window (bands -> RGB, stretch) into its state; with ``cfg.coarse``, also the window
    of the scene's coarse mask raster. A failure becomes an error row; the batch goes on. The rows get every column
    ``job.stages.read_decode`` gives an image row, plus the window columns. ``attempts`` (the run's
    ``job.stages.AttemptLog``) bounds the tries of a window that kills its worker (a crash in GDAL), as for images."""
    from job import stages

    rio = require_rasterio()
    storages = {False: jio.open_storage(cfg.input)[0], True: jio.open_storage(cfg.output)[0]}
    coarse_storage = jio.open_storage(cfg.coarse)[0] if cfg.coarse else None

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
                row["state"] = new_state(fg.to_rgb8(data, fg.Stretch.from_dict(spec["stretch"])), maps)
            except Exception as exc:  # a bad window is an error row, never a crashed job
                row["status"], row["error"], row["state"] = "error", _error_text(exc), b""
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


def _coarse_window(storage: jio.Storage, scene: str, rwin: Any, win: Window, num_classes: int) -> np.ndarray:
    """(C, h, w) float32 window of the coarse mask made elsewhere for ``scene`` (``<stem>.tif`` or ``<stem>.png``
    under the coarse URI; nonzero = object, or class indices with several classes)."""
    for suffix in (".tif", ".png"):
        key = jio.mask_key(scene, suffix=suffix)
        if jio.exists(storage, key):
            with open_raster(storage, key) as ds:
                if ds.height < win.y1 or ds.width < win.x1:
                    raise ValueError(f"coarse mask {key} is {ds.width}x{ds.height}, smaller than its scene; "
                                     "coarse masks must have their image's size")
                labels = ds.read(1, window=rwin)
            if num_classes > 1:
                return np.stack([(labels == c + 1) for c in range(num_classes)]).astype(np.float32)
            return (labels != 0)[None].astype(np.float32)
    raise jio.ObjectNotFoundError(f"no coarse mask for {scene}: expected {jio.mask_key(scene, suffix='.tif')} or "
                                  f"{jio.mask_key(scene)} under {storage.uri}", uri=storage.uri, key=scene, op="read")


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
    from job.manifest import STAGES
    from job.rows import read_state
    from job.stages import _rows

    storage = jio.open_storage(cfg.output)[0]
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
                jio.write_bytes_atomic(storage, window_prob_key(str(r["scene"]), win),
                                       encode_window_prob(to_u8(st.fused_prob())))
                m["mask_area"] = int(st.mask.sum())
            except jio.StorageError:
                raise  # a write that keeps failing fails the job: never a manifest row claiming success
            except Exception as exc:
                m["status"], m["error"] = "error", f"write: {_error_text(exc)}"
        passes_c, passes_r = int(r.get("passes_coarse", 0)), int(r.get("passes_refiner", 0))
        m.update(coarse_passes=passes_c, refiner_passes=passes_r, encoder_passes=passes_c + passes_r,
                 config_hash=geo_hash, finished_at=time.time())
        for s in STAGES:
            m[f"seconds_{s}"] = float(r.get(f"seconds_{s}", 0.0))
        m["seconds_write"] = time.perf_counter() - t0
        manifest.append(m)
    if manifest:
        jm.write_part(storage, manifest)
    keys = list(dict.fromkeys(k for r in manifest for k in r))
    return {k: column([r.get(k) for r in manifest]) for k in keys}


# --------------------------------------------------------------------------------------------- output files


@contextlib.contextmanager
def _scratch(storage: jio.Storage) -> Iterator[str]:
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


def _publish(storage: jio.Storage, key: str, local_path: str) -> str:
    """Move a finished local file to ``key``: an atomic rename for local output, a streamed upload (``jio.write_file``,
    retried like every write of the job) for S3. Readers see the old object or the whole new one."""
    key = jio.safe_key(key)
    if storage.kind == "local":
        dest = storage.path(key)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(local_path, dest)
        return storage.uri_for(key)
    return jio.write_file(storage, key, local_path)


def _png_copy(src_path: str, dst_path: str, *, zlevel: int = 6) -> None:
    """GDAL's PNG driver writes from a source dataset scanline by scanline: no full-scene array."""
    rio = require_rasterio()
    with rio.Env(**GDAL_ENV), _quiet():
        rio.shutil.copy(src_path, dst_path, driver="PNG", ZLEVEL=zlevel)
    aux = dst_path + ".aux.xml"  # GDAL's sidecar for what PNG can't hold (e.g. a mask band): not an output
    if os.path.exists(aux):
        os.unlink(aux)


def _cog_copy(src_path: str, dst_path: str, *, resampling: str) -> None:
    rio = require_rasterio()
    with rio.Env(**GDAL_ENV), _quiet():
        rio.shutil.copy(src_path, dst_path, driver="COG", compress="DEFLATE", blocksize=OUTPUT_BLOCK,
                        overview_resampling=resampling, resampling=resampling, BIGTIFF="IF_SAFER",
                        num_threads=1)


class _Polygons:
    """Polygons of a mask traced block by block in scene pixel coordinates; pieces that touch an inner block edge
    are kept apart and merged once at the end (two pieces of one object share their edge exactly: integer pixel
    corners)."""

    def __init__(self, hw: tuple[int, int]) -> None:
        self.hw = hw
        self.done: list[tuple[int, Any]] = []  # (class value, shapely polygon)
        self.edge: dict[int, list[Any]] = {}

    def add_block(self, labels: np.ndarray, block: Window) -> None:
        from affine import Affine
        from rasterio.features import shapes
        from shapely.geometry import shape

        if not labels.any():
            return
        h, w = self.hw
        for geom, value in shapes(labels, mask=labels > 0, connectivity=4,
                                  transform=Affine.translation(block.x0, block.y0)):
            poly = shape(geom)
            x0, y0, x1, y1 = poly.bounds
            touches = ((x0 <= block.x0 and block.x0 > 0) or (y0 <= block.y0 and block.y0 > 0)
                       or (x1 >= block.x1 and block.x1 < w) or (y1 >= block.y1 and block.y1 < h))
            if touches:
                self.edge.setdefault(int(value), []).append(poly)
            else:
                self.done.append((int(value), poly))

    def result(self, *, tolerance: float) -> list[tuple[int, Any]]:
        """(class value, Polygon) in pixel coordinates, merged and simplified (``tolerance`` px, topology kept)."""
        import shapely

        out = list(self.done)
        for value, polys in self.edge.items():
            merged = shapely.unary_union(polys)
            out.extend((value, p) for p in getattr(merged, "geoms", [merged]) if not p.is_empty)
        if tolerance > 0:
            out = [(v, p.simplify(tolerance, preserve_topology=True)) for v, p in out]
        return [(v, p) for v, p in out if not p.is_empty]


def _to_crs(polys: list[tuple[int, Any]], gdal_transform: Sequence[float]) -> list[tuple[int, Any]]:
    from shapely.affinity import affine_transform

    c, a, b, f, d, e = gdal_transform
    return [(v, affine_transform(p, [a, b, d, e, c, f])) for v, p in polys]


def _crs_name(crs_wkt: str | None) -> tuple[str | None, int | None]:
    if crs_wkt is None:
        return None, None
    from rasterio.crs import CRS

    crs = CRS.from_wkt(crs_wkt)
    epsg = crs.to_epsg()
    return (f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else None), epsg


def write_geojson(path: str, features: list[tuple[int, Any]], *, classes: Sequence[str],
                  crs_wkt: str | None) -> None:
    """GeoJSON FeatureCollection of polygons in the raster's CRS (legacy ``crs`` member when it has an EPSG code,
    as GDAL writes non-WGS84 GeoJSON). Properties: ``class`` (name), ``value`` (mask value)."""
    from shapely.geometry import mapping

    name, _ = _crs_name(crs_wkt)
    with open(path, "w") as f:
        f.write('{"type": "FeatureCollection", ')
        if name:
            f.write(json.dumps({"crs": {"type": "name", "properties": {"name": name}}})[1:-1] + ", ")
        f.write('"features": [')
        for i, (value, poly) in enumerate(features):
            feat = {"type": "Feature", "properties": {"class": _class_name(value, classes), "value": value},
                    "geometry": mapping(poly)}
            f.write(("," if i else "") + "\n" + json.dumps(feat))
        f.write("\n]}\n")


def _class_name(value: int, classes: Sequence[str]) -> str:
    return classes[0] if len(classes) == 1 else classes[value - 1]


def write_gpkg(path: str, features: list[tuple[int, Any]], *, classes: Sequence[str], crs_wkt: str | None,
               table: str = "mask") -> None:
    """A GeoPackage with one feature table ``table`` (``fid``, ``geom`` POLYGON, ``class``, ``value``) in the
    raster's CRS (none when ``crs_wkt`` is None), written by GDAL through pyogrio (the ``geo`` extra)."""
    import pyogrio.raw
    import shapely

    if os.path.exists(path):
        os.unlink(path)
    geometry = shapely.to_wkb(np.array([p for _, p in features], dtype=object))
    names = np.array([_class_name(v, classes) for v, _ in features], dtype=object)
    values = np.array([v for v, _ in features], dtype=np.int64)
    with warnings.catch_warnings():  # no CRS is deliberate for a raster without one
        warnings.filterwarnings("ignore", message=".*'crs' was not provided", category=UserWarning)
        pyogrio.raw.write(path, geometry, [names, values], ["class", "value"], layer=table, driver="GPKG",
                          geometry_type="Polygon", crs=crs_wkt)


# --------------------------------------------------------------------------------------------- stitch


def _final_outputs(info: SceneInfo, paths: dict[str, str], classes: Sequence[str]) -> list[tuple[str, str, str]]:
    """(GDAL source, output folder, overview resampling) of each published file (module docstring, outputs)."""
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
    a scene without georeferencing), and the optional vector file (module docstring, step 4). The mask gets the
    image path's post-processing: ``post.threshold`` on the blended probability, then the morphology of
    ``cfg.pipeline.post`` (closing, hole filling, opening, island removal) per class, block by block
    (``finedetail.blockmorph``, exact, with its intermediate masks in scratch GeoTIFFs), then one class per pixel.
    Returns ``{"mask_area", "objects", "seconds", "window_loads", "max_windows_held", "pieces"}``."""
    from finedetail.blockmorph import morphology_blocks
    from finedetail.postprocess import one_class_per_pixel

    rio = require_rasterio()
    if cfg.vector:
        _require_shapely()
    t0 = time.perf_counter()
    out = jio.open_storage(cfg.output)[0]
    n_cls = len(cfg.classes)
    post = cfg.pipeline.post
    h, w = info.hw
    blocks = fg.block_grid(info.hw, block=OUTPUT_BLOCK)

    def load(win: Window) -> np.ndarray:
        return decode_window_prob(jio.read_bytes(out, window_prob_key(info.key, win)), n_cls, win)

    stitcher = fg.BlockStitcher(info.hw, windows, load, overlap=cfg.window_overlap)
    polygons = _Polygons(info.hw) if cfg.vector else None
    area, pieces = 0, 0
    src_storage = out if info.source_in_output else jio.open_storage(cfg.input)[0]
    with _scratch(out) as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(rio.Env(**GDAL_ENV))
        stack.enter_context(_quiet())
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
        again = fg.BlockStitcher(info.hw, windows, load, overlap=cfg.window_overlap) if n_cls > 1 else None
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
                _cog_copy(source, final, resampling=resampling)
            else:
                _png_copy(source, final)
            _publish(out, jio.output_key(folder, info.key, suffix=info.output_suffix), final)
        objects = None
        if polygons is not None:
            feats = _to_crs(polygons.result(tolerance=cfg.vector_tolerance), info.transform)
            objects = len(feats)
            ext = ".geojson" if cfg.vector == "geojson" else ".gpkg"
            vpath = os.path.join(tmp, "vector" + ext)
            writer = write_geojson if cfg.vector == "geojson" else write_gpkg
            writer(vpath, feats, classes=cfg.classes, crs_wkt=info.crs_wkt)
            _publish(out, jio.output_key("vectors", info.key, suffix=ext), vpath)
    log.info("stitched %s: %d windows, %d blocks in %.1f s (+ COG %.1f s)", info.key, len(windows), len(blocks),
             t_blocks, time.perf_counter() - t0 - t_blocks)
    held = max(stitcher.max_cached, again.max_cached if again is not None else 0)
    return {"mask_area": area, "objects": objects, "seconds": time.perf_counter() - t0,
            "window_loads": stitcher.loads + (again.loads if again is not None else 0), "max_windows_held": held,
            "pieces": pieces}


# --------------------------------------------------------------------------------------------- plain scenes


def _strips_with_halo(ds: Any, rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Band 1 of ``ds`` in strips of ``rows`` rows, read top to bottom once (sequential: cheap for PNG):
    ``(y0, strip, row above or None, row below or None)``."""
    rio = require_rasterio()

    def read(y0: int) -> np.ndarray:
        return ds.read(1, window=rio.windows.Window(0, y0, ds.width, min(rows, ds.height - y0)))

    cur, above = read(0), None
    for y0 in range(0, ds.height, rows):
        nxt = read(y0 + rows) if y0 + rows < ds.height else None
        yield y0, cur, above, None if nxt is None else nxt[:1]
        above, cur = cur[-1:], nxt


def write_plain_extras(cfg: JobConfig, info: SceneInfo) -> None:
    """For a scene without georeferencing (a large photo): the files the image path writes besides the mask and
    probabilities that ``stitch_scene`` publishes (``finedetail.outputs.render_outputs``), so a large photo gets the
    same files as a small one: ``rle/<stem>.json`` (one COCO RLE, or class name -> RLE), ``overlays/<stem>.png``
    (unless ``cfg.overlays`` is off) and, with several classes, ``masks/<class>/<stem>.png``. Everything is made
    from the published ``masks/<stem>.png`` (``labels/<stem>.png``) read back strip by strip, and the scene's
    pixels read as its windows are: memory is a strip, plus the RLE's counts. (``instances/`` for ``coco`` is not
    written: connected components need the whole mask.)"""
    from finedetail.codecs import overlay
    from finedetail.outputs import CLASS_COLORS
    from finedetail.rle import StripRle, counts_to_string

    rio = require_rasterio()
    out = jio.open_storage(cfg.output)[0]
    src_storage = out if info.source_in_output else jio.open_storage(cfg.input)[0]
    classes, (h, w) = list(cfg.classes), info.hw
    single = len(classes) == 1
    labels_key = jio.output_key("masks" if single else "labels", info.key, suffix=".png")
    rles = [StripRle(info.hw) for _ in classes]

    def per_class(lab: np.ndarray) -> list[np.ndarray]:  # the published mask is 0 / 255 with one class
        return [lab > 0] if single else [lab == c + 1 for c in range(len(classes))]

    with _scratch(out) as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(rio.Env(**GDAL_ENV))
        stack.enter_context(_quiet())
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
        for y0, lab, above, below in _strips_with_halo(labels, STRIP_ROWS):
            rwin = rio.windows.Window(0, y0, w, lab.shape[0])
            for c, m in enumerate(per_class(lab)):
                rles[c].add(m)
                if not single:
                    files[f"masks/{classes[c]}"][1].write((m * np.uint8(255))[None], window=rwin)
            if src is None:
                continue
            # the outline of a row depends on the rows next to it: outline the strip with one row of the mask
            # above and below it (the image rows there are placeholders), then keep the strip's own rows
            halo = [a for a in (above, lab, below) if a is not None]
            image = fg.to_rgb8(src.read(list(info.bands), window=rwin), info.stretch)
            shown = np.concatenate([image[:1]] * (above is not None) + [image] + [image[-1:]] * (below is not None))
            for c, m in enumerate(per_class(np.concatenate(halo))):  # render_outputs' colours (class 1: red)
                shown = overlay(shown, m, color=CLASS_COLORS[c % len(CLASS_COLORS)])
            top = int(above is not None)
            files["overlays"][1].write(np.moveaxis(shown[top:top + lab.shape[0]], -1, 0), window=rwin)
        stack.close()
        for i, (folder, (path, _)) in enumerate(files.items()):
            final = os.path.join(tmp, f"extra{i}.png")
            # deflate level 1, the image path's (finedetail.codecs.encode_png); 6 took 4x as long on a 108 MP overlay
            _png_copy(path, final, zlevel=1)
            _publish(out, jio.output_key(folder, info.key, suffix=".png"), final)
        docs = [{"size": [h, w], "counts": counts_to_string(r.counts())} for r in rles]
        rle_doc = docs[0] if single else dict(zip(classes, docs))
        jio.write_bytes_atomic(out, jio.output_key("rle", info.key, suffix=".json"), json.dumps(rle_doc).encode())


def stitch_scene_and_extras(cfg: JobConfig, info: SceneInfo, windows: Sequence[Window]) -> dict[str, Any]:
    """The stitch task of ``run_windowed``: ``stitch_scene``, then for a scene without georeferencing the rest of
    the image path's files (``write_plain_extras``), timed into ``seconds``."""
    result = stitch_scene(cfg, info, windows)
    if not info.georeferenced:
        t0 = time.perf_counter()
        write_plain_extras(cfg, info)
        result["seconds"] += time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------- the driver


def build_window_dataset(cfg: JobConfig, items: list[dict[str, Any]], plan: Any, *, ghash: str,
                         attempts: Any = None) -> Any:
    """The lazy Ray dataset of window manifest rows: read windows -> the model stages -> write window maps."""
    import ray

    from job.operators import model_stages, worker_env as _test_env

    track = {"attempts": attempts}
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # one window per read task: a window is already megabytes, and reads stay as small as one row
    ds = ds.map_batches(read_windows, batch_size=1, num_cpus=plan.io_cpus, batch_format="numpy",
                        fn_kwargs={"cfg": cfg, **track}, **_test_env())
    # one window per model call: a window is already as large as a photo (2048 x 2048 px; its refiner tiles are
    # batched through the encoder within it), and a batch of them multiplies the per-pixel float maps an actor
    # holds (measured with python -m job.bench largeimage: see README, large images)
    ds = model_stages(ds, cfg, plan, attempts=attempts, batch_size=1)
    return ds.map_batches(write_windows, batch_size=cfg.resources.batch_size, num_cpus=plan.io_cpus,
                          batch_format="numpy", fn_kwargs={"cfg": cfg, "geo_hash": ghash, **track}, **_test_env())


def _scene_row(cfg: JobConfig, key: str, *, status: str, error: str = "", hw: tuple[int, int] | None = None,
               windows: Sequence[dict[str, Any]] = (), stitched: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "status": status, "error": error, "attempts": 1,
                           "height": hw[0] if hw else None, "width": hw[1] if hw else None,
                           "mask_area": stitched["mask_area"] if stitched else None,
                           "components": sum(int(r.get("components") or 0) for r in windows)}
    for name in ("coarse_passes", "refiner_passes", "encoder_passes"):
        row[name] = sum(int(r.get(name) or 0) for r in windows)
    for s in jm.STAGES:
        row[f"seconds_{s}"] = sum(float(r.get(f"seconds_{s}") or 0.0) for r in windows)
    row["seconds_write"] += stitched["seconds"] if stitched else 0.0
    row.update(config_hash=cfg.config_hash, finished_at=time.time())
    return row


def run_windowed(cfg: JobConfig, keys: Sequence[str], plan: Any) -> list[dict[str, Any]]:
    """Run the geo path for ``keys`` (from ``split_windowed``) on the connected Ray cluster; one manifest row per
    scene, in the order of ``keys`` (also written to the manifest). See the module docstring."""
    import ray

    require_rasterio()
    out = jio.open_storage(cfg.output)[0]
    ghash = geo_hash(cfg)
    offset = current_grid_offset()
    if out.kind == "local":  # scratch folders of stitches a killed run left behind (one job per output at a time)
        shutil.rmtree(os.path.join(out.root, ".tmp-geo"), ignore_errors=True)
    info_task = ray.remote(scene_info).options(num_cpus=plan.io_cpus)
    stitch_task = ray.remote(stitch_scene_and_extras).options(num_cpus=plan.io_cpus)
    refs = {k: info_task.remote(cfg, k) for k in keys}
    latest = jm.latest_rows(jm.read_manifest(out))

    results: dict[str, dict[str, Any]] = {}
    scenes: dict[str, tuple[SceneInfo, list[Window]]] = {}
    window_rows: dict[str, dict[str, dict[str, Any]]] = {}
    pending: dict[str, set[str]] = {}
    items: list[dict[str, Any]] = []
    for key in keys:
        try:
            info = ray.get(refs[key])
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            results[key] = _scene_row(cfg, key, status="error", error=f"read: {_error_text(cause)}")
            continue
        wins = fg.plan_windows(info.hw, window=cfg.window, overlap=cfg.window_overlap,
                               window_pixels=cfg.window_pixels, offset=offset)
        scenes[key] = (info, wins)
        have = set(jio.list_files(out, f"{WINDOW_DIR}/{_stem(key)}", extensions=(".png",)))
        window_rows[key], pending[key] = {}, set()
        for win in wins:
            wkey, prev = fg.window_key(key, win), latest.get(fg.window_key(key, win))
            if (prev is not None and prev["status"] == "ok" and prev["config_hash"] == ghash
                    and (prev["height"], prev["width"]) == win.hw and f"{win.y0}_{win.x0}.png" in have):
                window_rows[key][wkey] = prev
            else:
                pending[key].add(wkey)
                items.append(_window_item(info, win))
        log.info("scene %s: %dx%d, %d windows (%d to compute)", key, info.hw[1], info.hw[0], len(wins),
                 len(pending[key]))

    stitching: dict[Any, str] = {}

    def maybe_stitch(key: str) -> None:
        if pending[key]:
            return
        bad = [r for r in window_rows[key].values() if r["status"] != "ok"]
        info, wins = scenes[key]
        if bad:
            results[key] = _scene_row(cfg, key, status="error", hw=info.hw, windows=list(window_rows[key].values()),
                                      error=f"{len(bad)} of {len(wins)} windows failed, e.g. {bad[0]['key']}: "
                                            f"{bad[0]['error']}")
            return
        stitching[stitch_task.remote(cfg, info, wins)] = key

    for key in scenes:
        maybe_stitch(key)  # every window reused: straight to the stitch
    attempts = None
    if items:
        from job.stages import AttemptLog

        attempts = AttemptLog(output=cfg.output, run_id=f"geo-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
                              max_tries=cfg.max_tries)
        ds = build_window_dataset(cfg, items, plan, ghash=ghash, attempts=attempts)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["key"])):
                r = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
                scene = r["scene"]
                window_rows[scene][r["key"]] = r
                pending[scene].discard(r["key"])
                if not pending[scene]:
                    maybe_stitch(scene)
    if attempts is not None:
        attempts.clear()
    waiting = list(stitching)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        key = stitching[ready[0]]
        info, _ = scenes[key]
        wrows = list(window_rows[key].values())
        try:
            stitched = ray.get(ready[0])
            results[key] = _scene_row(cfg, key, status="ok", hw=info.hw, windows=wrows, stitched=stitched)
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            log.warning("stitching %s failed:\n%s", key, jio.redact(traceback.format_exc()))
            results[key] = _scene_row(cfg, key, status="error", hw=info.hw, windows=wrows,
                                      error=f"stitch: {_error_text(cause)}")
        jm.write_part(out, [results[key]])
    for key in keys:  # scenes that failed before stitching
        if key in results and key not in stitching.values():
            jm.write_part(out, [results[key]])
    return [results[k] for k in keys]

