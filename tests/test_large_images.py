"""Large ordinary photos (JPEG, PNG, WebP, ...: not TIFF) with more than ``window_pixels`` pixels: the image path's
decode step hands them to the raster-window path (``job.stages.WINDOWED``), which decodes them once as the image path
does (EXIF orientation, modes) into a tiled copy, runs them window by window and writes the same files a small photo
gets (``job.raster.stitch.write_plain_extras`` for rle/ and overlays/).

The pipeline is the geo tests' (``tests/test_geo.py`` docstring: proxy models, union and mask input off, so each
window's result is the proxy SAM's and does not depend on where the window starts), with the morphology off
(closing, hole filling, island removal, opening), so the image path's mask is its filtered probability >= 0.5, what
the window path's stitch computes; the comparison then measures routing, decoding and window cutting.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

rasterio = pytest.importorskip("rasterio", reason="the geo extra is not installed: pip install 'finedetail[geo]'")

POST_OFF = {"close_size": 0, "hole_area": 0, "opening": "none", "island_area": 0}
SMALL_WINDOWS = dict(window=256, window_overlap=32, window_pixels=256 * 256)


def _cfg(**values):
    from job.config import job_config_from_dict

    base = dict(backend="proxy", scales=[1], tta=["identity"], crop={"enabled": False},
                refine={"union": False, "use_mask_input": False}, post=POST_OFF)
    return job_config_from_dict({**base, **values})


def _rotated_jpeg(displayed: np.ndarray) -> bytes:
    """JPEG whose pixels are stored rotated, with EXIF orientation 6 (a phone held upright): shows ``displayed``."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(displayed, k=1))).save(buf, format="JPEG", quality=95,
                                                                          exif=exif.tobytes())
    return buf.getvalue()


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_large_rotated_jpeg_goes_through_windows_and_matches_the_image_path(ray_local, tmp_path):
    from finedetail import synthetic
    from finedetail.codecs import decode_image, encode_png
    from finedetail.rle import rle_decode
    from jobkit import read_manifest_rows, write_prompts
    from job.run import run_job

    scene = synthetic.make_scene("fur", seed=3, size=(520, 430))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.jpg").write_bytes(_rotated_jpeg(scene.image))
    (tmp_path / "in" / "small.png").write_bytes(encode_png(synthetic.make_scene("wires", seed=4, size=(96, 128)).image))
    assert decode_image((tmp_path / "in" / "photo.jpg").read_bytes()).shape == (520, 430, 3)
    write_prompts(tmp_path / "prompts")
    outs = {}
    for name, knobs in (("image", {}), ("windows", SMALL_WINDOWS)):
        out = tmp_path / name
        log = io.StringIO()
        summary = run_job(_cfg(input=str(tmp_path / "in"), prompts=str(tmp_path / "prompts"), output=str(out),
                               **knobs), out=log)
        assert summary["ok"] == 2 and summary["errors"] == 0, log.getvalue()
        outs[name] = out
    rows = read_manifest_rows(outs["windows"])
    windows = [r for r in rows if r["key"].startswith("photo.jpg#")]
    assert [r["key"] for r in rows if "#" not in r["key"]].count("photo.jpg") == 1  # one row for the input
    assert len(windows) == 6 and all(r["status"] == "ok" for r in rows)  # 2 x 3 windows of 256 px
    assert not [r for r in read_manifest_rows(outs["image"]) if "#" in r["key"]]  # the image path: no windows

    # the same files as the image path, in the displayed orientation
    for folder, suffix in (("masks", ".png"), ("probs", ".png"), ("rle", ".json"), ("overlays", ".png")):
        for out in outs.values():
            assert (out / folder / f"photo{suffix}").exists(), (out, folder)
    img_mask, win_mask = (_png(o / "masks" / "photo.png") > 0 for o in outs.values())
    assert img_mask.shape == win_mask.shape == (520, 430)
    assert img_mask.sum() > 5000
    differ = int((img_mask != win_mask).sum())
    assert differ <= 0.002 * img_mask.size, f"{differ} pixels differ"
    prob_img, prob_win = (_png(o / "probs" / "photo.png").astype(int) for o in outs.values())
    assert np.abs(prob_img - prob_win).mean() < 1.0
    rle = json.loads((outs["windows"] / "rle" / "photo.json").read_text())
    np.testing.assert_array_equal(rle_decode(rle), win_mask)
    assert _png(outs["windows"] / "overlays" / "photo.png").shape == (520, 430, 3)


@pytest.mark.parametrize("classes,line_px", [(("object",), 640), (("road", "field"), 640), (("road", "field"), 40)])
def test_plain_extras_equal_what_the_image_path_renders(tmp_path, monkeypatch, classes, line_px):
    """write_plain_extras, strip by strip from the published mask, writes byte-identical RLE and pixel-identical
    overlays / per-class masks to ``render_outputs`` on the whole arrays (strips of 64 rows: the outline crosses
    strip edges; line_px 40: an 8 px outline with its halos, wider than one row of context)."""
    import finedetail.outputs as fo
    from finedetail.codecs import encode_png
    from finedetail.outputs import render_outputs
    from job.raster import stitch
    from job.raster.stitch import write_plain_extras
    from job.raster.windows import scene_info

    monkeypatch.setattr(stitch, "STRIP_ROWS", 64)
    monkeypatch.setattr(fo, "PIXELS_PER_LINE", line_px)
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (301, 210, 3), dtype=np.uint8)
    import cv2

    noise = cv2.GaussianBlur(rng.random((301, 210)).astype(np.float32), (0, 0), 6)
    labels = np.digitize(noise, np.quantile(noise, [0.5, 0.75])[: len(classes)]).astype(np.uint8)
    masks = np.stack([labels == c + 1 for c in range(len(classes))])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.webp").write_bytes(_webp(image))
    cfg = _cfg(input=str(tmp_path / "in"), output=str(tmp_path / "out"), prompts="p", classes=list(classes),
               **SMALL_WINDOWS)
    info = scene_info(cfg, "p.webp")
    out = tmp_path / "out"
    if len(classes) == 1:
        (out / "masks").mkdir(parents=True)
        (out / "masks" / "p.png").write_bytes(encode_png(masks[0]))
    else:
        (out / "labels").mkdir(parents=True)
        (out / "labels" / "p.png").write_bytes(encode_png(labels))
    write_plain_extras(cfg, info)
    want = render_outputs(image, np.zeros(masks.shape, np.float32), masks, classes=classes)
    assert (out / "rle" / "p.json").read_bytes() == want[("rle", ".json")]
    np.testing.assert_array_equal(_png(out / "overlays" / "p.png"), _decoded(want[("overlays", ".png")]))
    if len(classes) > 1:
        for name in classes:
            np.testing.assert_array_equal(_png(out / "masks" / name / "p.png"),
                                          _decoded(want[(f"masks/{name}", ".png")]))


def _webp(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_decode_hands_a_large_photo_to_the_window_path_without_decoding_it(tmp_path, monkeypatch):
    import sys

    from finedetail.codecs import encode_png
    from job.rows import column
    from job.stages import WINDOWED, read_decode

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.png").write_bytes(encode_png(np.zeros((300, 257, 3), np.uint8)))  # 77100 px
    (tmp_path / "in" / "edge.png").write_bytes(encode_png(np.zeros((256, 256, 3), np.uint8)))  # = window_pixels
    cfg = _cfg(input=str(tmp_path / "in"), output=str(tmp_path / "out"), prompts="p", **SMALL_WINDOWS)
    batch = {"key": column(["big.png", "edge.png"])}
    got = read_decode(batch, cfg=cfg)
    assert list(got["status"]) == [WINDOWED, "ok"]
    assert got["state"][0] == b"" and len(got["state"][1]) > 0

    # without the geo extra the large photo is an error row saying what to install; the rest of the batch runs
    monkeypatch.setitem(sys.modules, "rasterio", None)
    got = read_decode(batch, cfg=cfg)
    assert list(got["status"]) == ["error", "ok"]
    assert "77100 pixels, more than window_pixels=65536" in got["error"][0]
    assert "pip install 'finedetail[geo]'" in got["error"][0]


def test_coco_leaves_out_an_output_written_in_windows_instead_of_loading_its_mask(tmp_path):
    """--coco: a large photo has masks/ and probs/ PNGs but no instances file; the driver must not rebuild it (that
    holds the whole mask in the driver): left out and counted, while a small image is rebuilt."""
    from finedetail.codecs import encode_png
    from job.coco import image_record

    out = tmp_path / "out"
    for folder in ("masks", "probs"):
        (out / folder).mkdir(parents=True)
        for stem, hw in (("big", (300, 257)), ("small", (40, 50))):
            (out / folder / f"{stem}.png").write_bytes(encode_png(np.full(hw, 255, np.uint8)))
    cfg = _cfg(input=str(tmp_path / "in"), output=str(out), prompts="p", coco=True, **SMALL_WINDOWS)
    from job.io import open_storage

    storage = open_storage(str(out))[0]
    row = {"key": "big.jpg", "height": 300, "width": 257, "config_hash": cfg.config_hash}
    assert image_record(storage, row, cfg) == (None, False)
    record, rebuilt = image_record(storage, {**row, "key": "small.jpg", "height": 40, "width": 50}, cfg)
    assert rebuilt and record["images"][0]["width"] == 50
