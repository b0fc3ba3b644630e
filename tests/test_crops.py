"""Tests for finedetail.crops: object windows, zoom, from_crop_image, paste, split."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finedetail.crops import (
    crop_image,
    crop_size,
    from_crop_image,
    object_window,
    paste,
    split_window,
    zoom_for,
)
from finedetail.tiling import Window

FAST = settings(max_examples=50, deadline=None)


def tight_box(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------- object_window


@pytest.mark.parametrize(
    ("box", "hw", "kw", "want"),
    [
        ([10, 20, 30, 40], (100, 100), {}, Window(4, 0, 56, 46)),  # pad = min_pad 16, clipped on the left
        ([0, 0, 100, 80], (100, 120), {}, Window(0, 0, 100, 120)),  # pad = 0.25 * 100 = 25, clipped everywhere
        ([40, 40, 80, 60], (200, 200), {"pad_frac": 0.5, "min_pad": 0}, Window(20, 20, 80, 100)),  # pad = 0.5 * 40
        ([10.5, 10.2, 12.7, 13.1], (50, 50), {"pad_frac": 0.0, "min_pad": 1}, Window(9, 9, 15, 14)),  # floor / ceil
        ([50, 50, 50, 50], (50, 50), {"pad_frac": 0.0, "min_pad": 0}, Window(49, 49, 50, 50)),  # never empty
    ],
)
def test_object_window_literal(box, hw, kw, want):
    assert object_window(np.array(box, float), hw, **kw) == want


@FAST
@given(h=st.integers(1, 200), w=st.integers(1, 200), data=st.data())
def test_object_window_contains_padded_box_inside_image(h, w, data):
    x0 = data.draw(st.floats(0, w, allow_nan=False))
    x1 = data.draw(st.floats(x0, w, allow_nan=False))
    y0 = data.draw(st.floats(0, h, allow_nan=False))
    y1 = data.draw(st.floats(y0, h, allow_nan=False))
    pad_frac, min_pad = data.draw(st.floats(0, 1)), data.draw(st.integers(0, 20))
    win = object_window(np.array([x0, y0, x1, y1]), (h, w), pad_frac=pad_frac, min_pad=min_pad)
    pad = max(min_pad, pad_frac * max(x1 - x0, y1 - y0))
    assert win.x1 <= w and win.y1 <= h
    assert win.x0 <= max(0.0, x0 - pad) and win.y0 <= max(0.0, y0 - pad)
    assert win.x1 >= min(w, x1 + pad) and win.y1 >= min(h, y1 + pad)
    # tight: never more than one pixel of rounding beyond the padded box
    assert win.x0 > x0 - pad - 1 and win.x1 < x1 + pad + 1 or win.w == 1


@pytest.mark.parametrize("box", [[200, 0, 210, 5], [0, -20, 5, -1], [5, 5, 3, 8], [0, 0, np.nan, 3], [1, 2, 3]])
def test_object_window_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        object_window(np.array(box, float), (100, 100))


# ---------------------------------------------------------------------------------------------------- zoom & crops


@pytest.mark.parametrize(
    ("win", "kw", "want"),
    [(Window(0, 0, 512, 256), {}, 2.0), (Window(0, 0, 100, 50), {}, 8.0), (Window(0, 0, 64, 2048), {}, 0.5),
     (Window(0, 0, 100, 50), {"max_zoom": 20.0}, 10.24), (Window(0, 0, 300, 100), {"target_long": 600}, 2.0)],
)
def test_zoom_for(win, kw, want):
    assert zoom_for(win, **kw) == pytest.approx(want)


@pytest.mark.parametrize("kw", [{"target_long": 0}, {"max_zoom": 0.0}, {"max_zoom": math.inf}])
def test_zoom_for_rejects(kw):
    with pytest.raises(ValueError):
        zoom_for(Window(0, 0, 10, 10), **kw)


@pytest.mark.parametrize(("win", "zoom", "want"), [(Window(3, 5, 10, 16), 2.0, (14, 22)),
                                                   (Window(3, 5, 10, 16), 1.5, (10, 16)),  # 10.5 -> 10, 16.5 -> 16
                                                   (Window(0, 0, 3, 1), 0.1, (1, 1))])
def test_crop_size_and_image(win, zoom, want):
    assert crop_size(win, zoom) == want
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    crop = crop_image(img, win, zoom)
    assert crop.shape == want + (3,) and crop.dtype == np.uint8


def test_crop_image_zoom_one_is_slice_and_integer_nearest_is_repeat():
    img = np.arange(20 * 30).reshape(20, 30).astype(np.float32)
    win = Window(3, 5, 10, 16)
    assert np.array_equal(crop_image(img, win, 1.0), img[win.slices])
    assert np.array_equal(crop_image(img, win, 3.0, interp="nearest"), img[win.slices].repeat(3, 0).repeat(3, 1))


def test_crop_image_window_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        crop_image(np.zeros((10, 10, 3), np.uint8), Window(5, 5, 12, 8), 2.0)


def test_from_crop_image_back_to_window_size():
    win = Window(3, 5, 10, 16)
    crop = np.random.default_rng(1).random(crop_size(win, 2.7), dtype=np.float32)
    out = from_crop_image(crop, win)
    assert out.shape == win.hw and out.dtype == np.float32


# ---------------------------------------------------------------------------------------------------- paste


def test_paste_max_in_place():
    g = np.array([[0.1, 0.9, 0.0],
                  [0.5, 0.2, 0.3]], dtype=np.float32)
    ret = paste(g, np.array([[0.4, 0.4],
                             [0.1, 0.6]]), Window(0, 1, 2, 3), mode="max")
    assert ret is None
    assert np.allclose(g, [[0.1, 0.9, 0.4],
                           [0.5, 0.2, 0.6]])
    assert g.dtype == np.float32


def test_paste_replace():
    g = np.zeros((3, 3), np.float32)
    g[1, 1] = 1.0
    paste(g, np.full((2, 2), 0.25), Window(1, 1, 3, 3), mode="replace")
    assert g.tolist() == [[0, 0, 0], [0, 0.25, 0.25], [0, 0.25, 0.25]]


def test_paste_bool_union():
    g = np.array([[True, False], [False, False]])
    paste(g, np.array([[False, True], [False, True]]), Window(0, 0, 2, 2))
    assert g.tolist() == [[True, True], [False, True]]


def test_paste_misuse():
    g = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="from_crop_image"):
        paste(g, np.zeros((3, 3)), Window(0, 0, 2, 2))
    with pytest.raises(ValueError, match="mode"):
        paste(g, np.zeros((2, 2)), Window(0, 0, 2, 2), mode="mean")
    with pytest.raises(TypeError, match="cannot paste float64 into a uint8"):
        paste(np.zeros((4, 4), np.uint8), np.zeros((2, 2)), Window(0, 0, 2, 2))
    with pytest.raises(ValueError, match="does not fit"):
        paste(g, np.zeros((2, 2)), Window(3, 3, 5, 5))


# ---------------------------------------------------------------------------------------------------- split_window


def test_split_window_fits_returns_itself():
    win = Window(5, 7, 105, 57)
    assert split_window(win, max_side=100) == [win]


@pytest.mark.parametrize(("win", "max_side", "overlap"), [(Window(10, 20, 2510, 1120), 1024, None),
                                                          (Window(0, 0, 30, 7), 8, 3), (Window(3, 4, 50, 60), 9, 0)])
def test_split_window_covers_with_small_overlapping_pieces(win, max_side, overlap):
    pieces = split_window(win, max_side=max_side, overlap=overlap)
    ov = max_side // 4 if overlap is None else overlap
    assert len(pieces) > 1
    cover = np.zeros((win.y1, win.x1), np.int32)
    for p in pieces:
        assert p.h <= max_side and p.w <= max_side
        assert win.y0 <= p.y0 and p.y1 <= win.y1 and win.x0 <= p.x0 and p.x1 <= win.x1
        cover[p.slices] += 1
    assert cover[win.slices].min() >= 1 and cover.sum() == sum(p.h * p.w for p in pieces)
    for axis in ("y", "x"):
        spans = sorted({(getattr(p, axis + "0"), getattr(p, axis + "1")) for p in pieces})
        for (a0, a1), (b0, _) in zip(spans, spans[1:]):
            assert a1 - b0 >= ov


@pytest.mark.parametrize("kw", [{"max_side": 0}, {"max_side": 10, "overlap": 10}, {"max_side": 10, "overlap": -1}])
def test_split_window_rejects(kw):
    with pytest.raises(ValueError):
        split_window(Window(0, 0, 50, 50), **kw)
