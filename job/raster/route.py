"""Routing by header: which inputs take the raster-window path instead of the image path.

Which inputs come here: any image with more than ``JobConfig.window_pixels`` pixels, and any GeoTIFF that a plain
image decode would lose something of: georeferenced (CRS or geotransform), not 8-bit, or with a band layout other
than grey / grey+alpha / RGB / RGBA. TIFFs are sorted by ``split_windowed`` (called by ``job.run.run_job``, from
their headers); every other format (a large JPEG / PNG / WebP photo) by the image path's decode step, which reads
its header before decoding and hands it over (``job.stages.WINDOWED``) instead of decoding it, so no driver reads a
header per photo. Small plain TIFFs stay on the image path. A raster at or under ``window_pixels`` still comes here
when georeferenced, as ONE window.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from finedetail.rasters import needs_windows
from job.config import JobConfig
from job.io import Storage, open_storage
from job.raster import GEO_EXTRA, require_rasterio
from job.raster.windows import TIFF_EXTS, error_text, is_georeferenced, open_raster

log = logging.getLogger("finedetail.job")

__all__ = ["Probe", "probe", "split_windowed"]


@dataclass(frozen=True)
class Probe:
    hw: tuple[int, int]
    count: int
    dtype: str
    georeferenced: bool


def probe(storage: Storage, key: str) -> Probe:
    """Header facts of one raster (no pixels read)."""
    with open_raster(storage, key) as ds:
        return Probe((ds.height, ds.width), ds.count, ds.dtypes[0], is_georeferenced(ds))


def _needs_geo_path(p: Probe, cfg: JobConfig) -> bool:
    if needs_windows(p.hw, window_pixels=cfg.window_pixels):
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
    storage = open_storage(cfg.input)[0]
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
            log.info("raster header of %s unreadable (%s); leaving it to the image decoder", k, error_text(exc))
            return False

    with ThreadPoolExecutor(max_workers=min(16, len(cands))) as pool:
        geo = {k for k, flag in zip(cands, pool.map(check, cands)) if flag}
    return [k for k in keys if k not in geo], [k for k in keys if k in geo]


def _pil_pixels(storage: Storage, key: str) -> int:
    from PIL import Image

    try:
        with storage.filesystem.open_input_file(storage.path(key)) as f, Image.open(f) as im:
            return im.width * im.height
    except Exception:
        return 0
