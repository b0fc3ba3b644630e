"""Vector output: a stitched mask's polygons, traced block by block, written as GeoJSON or GeoPackage (pyogrio).

With ``JobConfig.vector`` the stitch (``job.raster.stitch``) traces the mask's polygons block by block
(``rasterio.features.shapes``, in scene pixel coordinates so pieces of one object meet exactly); pieces touching a
block edge are merged with shapely, simplified by ``vector_tolerance`` pixels (= ``vector_tolerance`` x pixel size in
CRS units) and written in the raster's CRS to ``vectors/<stem>.geojson`` (GeoJSON with a ``crs`` member, as GDAL
writes non-WGS84 GeoJSON) or ``vectors/<stem>.gpkg`` (GeoPackage written by GDAL via pyogrio, one ``Polygon`` feature
per object part, table ``mask``). Polygons are held in memory until written: memory there grows with the number of
objects, not with the pixel count.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Sequence

import numpy as np

from finedetail.tiling import Window
from job.raster import GEO_EXTRA

__all__ = ["Polygons", "require_shapely", "to_crs", "write_geojson", "write_gpkg"]


def require_shapely():
    """The shapely module, or ImportError naming the extra to install."""
    try:
        import shapely
    except ImportError as exc:
        raise ImportError(f"vector output needs the 'geo' extra (shapely): {GEO_EXTRA}") from exc
    return shapely


class Polygons:
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


def to_crs(polys: list[tuple[int, Any]], gdal_transform: Sequence[float]) -> list[tuple[int, Any]]:
    """Polygons from scene pixel coordinates to the raster's CRS (``gdal_transform``: GDAL order c, a, b, f, d, e)."""
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
