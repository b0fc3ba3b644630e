"""Large rasters: scenes too large for one row (or georeferenced) run window by window and are stitched back.

Needs the ``geo`` extra (``pip install 'finedetail[geo]'``: rasterio, which bundles GDAL, shapely, and pyogrio for
GeoPackage output); it is imported lazily, and a job that meets a raster needing it without the extra fails with that
install line. A scene flows through the modules of this package in this order:

1. ``job.raster.route``: which inputs come here, decided from their headers (``split_windowed``).
2. ``job.raster.windows``: per scene, its header, band mapping and stretch (``scene_info``); the window rows read
   from the raster (``read_windows``), run through the same model stages as images, and their fused maps stored
   (``write_windows``); the GeoTIFF / COG / PNG file helpers.
3. ``job.raster.stitch``: the window maps blended block by block into the scene's mask and probabilities, with the
   image path's post-processing (``stitch_scene``), and a large photo's other files (``write_plain_extras``).
4. ``job.raster.vectors``: the mask's polygons, written as GeoJSON or GeoPackage.
5. ``job.raster.driver``: the window plan, resume per window, the Ray dataset of windows and the stitch tasks
   (``run_windowed``, called by ``job.run.run_job``).

Outputs per scene, georeferenced (CRS or geotransform): ``masks/<stem>.tif`` (uint8; one class: 0 / 255 like the
PNG masks; several: class index 1..C), ``probs/<stem>.tif`` (uint8 0..255, one band per class). A scene without
georeferencing (a big PNG / JPEG / plain TIFF) gets the image path's files instead, in its displayed orientation,
written by GDAL's PNG driver scanline by scanline from the stitched raster: ``masks/<stem>.png`` and
``probs/<stem>.png`` (one class), or ``labels/<stem>.png`` and ``probs/<class>/<stem>.png``; then, by
``write_plain_extras``, strip by strip from the published mask: ``rle/<stem>.json`` (column-major COCO RLE built from
row strips, ``finedetail.rle.StripRle``), ``overlays/<stem>.png`` and, with several classes,
``masks/<class>/<stem>.png``. Not for windowed scenes: ``instances/`` (``coco``; connected components need the whole
mask). Optionally ``vectors/<stem>.<geojson|gpkg>``. Window maps stay under ``_windows/<stem>/`` (resume,
re-stitching).

This package module itself holds only what the image path needs to hand a photo over (``GEO_EXTRA``,
``require_rasterio``), so that ``job.stages`` imports it without importing the window path, which imports
``job.stages``.
"""

__all__ = ["GEO_EXTRA", "require_rasterio"]

GEO_EXTRA = "pip install 'finedetail[geo]'"


def require_rasterio():
    """The rasterio module, or ImportError naming the extra to install."""
    try:
        import rasterio
        import rasterio.features  # noqa: F401 - submodules the package uses
        import rasterio.shutil  # noqa: F401
        import rasterio.windows  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"large rasters and GeoTIFF input/output need the 'geo' extra (rasterio, shapely): "
                          f"{GEO_EXTRA}") from exc
    return rasterio
