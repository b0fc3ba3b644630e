"""Tests for finedetail.tiling: grid coverage and overlap, blend weights, seam-free stitching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finedetail.tiling import Stitcher, Window, blend_weights, tile_grid
from jobkit import map_tiles, stitch

FAST = settings(max_examples=50, deadline=None)


def check_grid(hw, wins, *, tile, overlap):
    h, w = hw
    th, tw = min(tile, h), min(tile, w)
    cover = np.zeros(hw, np.int32)
    for win in wins:
        assert win.hw == (th, tw)
        assert win.y1 <= h and win.x1 <= w
        cover[win.slices] += 1
    assert cover.min() >= 1, "every pixel covered"
    ys = sorted({win.y0 for win in wins})
    xs = sorted({win.x0 for win in wins})
    assert ys[0] == 0 and xs[0] == 0
    assert ys[-1] + th == h and xs[-1] + tw == w, "last window flush with the border"
    for starts, t in ((ys, th), (xs, tw)):
        for a, b in zip(starts, starts[1:]):
            assert a + t - b >= overlap, "neighbours overlap by at least the requested amount"
    assert len(wins) == len(ys) * len(xs), "a full row-major grid"


@pytest.mark.parametrize(
    ("hw", "tile", "overlap", "offset"),
    [((1, 1), 4, 1, (0, 0)), ((5, 7), 3, 1, (0, 0)), ((100, 37), 16, 4, (0, 0)), ((1024, 1024), 1024, 128, (0, 0)),
     ((1025, 3000), 1024, 128, (0, 0)), ((2500, 1100), 1024, 128, (300, 17)), ((64, 64), 16, 0, (5, 9)),
     ((50, 50), 10, 9, (3, 3))],
)
def test_tile_grid_covers(hw, tile, overlap, offset):
    check_grid(hw, tile_grid(hw, tile=tile, overlap=overlap, offset=offset), tile=tile, overlap=overlap)


@FAST
@given(h=st.integers(1, 300), w=st.integers(1, 300), tile=st.integers(1, 64), data=st.data())
def test_tile_grid_covers_property(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    offset = (data.draw(st.integers(-100, 100)), data.draw(st.integers(-100, 100)))
    check_grid((h, w), tile_grid((h, w), tile=tile, overlap=overlap, offset=offset), tile=tile, overlap=overlap)


def test_tile_grid_literal():
    wins = tile_grid((10, 10), tile=4, overlap=1)
    assert sorted({(w.y0, w.y1) for w in wins}) == [(0, 4), (3, 7), (6, 10)]
    assert wins[:2] == [Window(0, 0, 4, 4), Window(0, 3, 4, 7)]  # row-major


def test_tile_grid_offset_moves_seams():
    assert sorted({w.x0 for w in tile_grid((4, 10), tile=4, overlap=1, offset=(0, 2))}) == [0, 1, 4, 6]


@pytest.mark.parametrize("hw", [(3, 5), (1024, 700), (10, 10)])
def test_image_smaller_than_tile_gives_one_window(hw):
    assert tile_grid(hw, tile=1024, overlap=128, offset=(7, 7)) == [Window(0, 0, *hw)]


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (4, 4), (4, -1), (4, 1.5)])
def test_tile_grid_rejects_bad_knobs(tile, overlap):
    with pytest.raises(ValueError, match="tile|overlap"):
        tile_grid((10, 10), tile=tile, overlap=overlap)


@pytest.mark.parametrize("bounds", [(0, 0, 0, 5), (2, 0, 1, 5), (-1, 0, 3, 3), (0, 0, 2.5, 3)])
def test_window_validation(bounds):
    with pytest.raises(ValueError, match="Window"):
        Window(*bounds)


def test_window_properties():
    win = Window(2, 3, 7, 11)
    assert (win.h, win.w, win.hw) == (5, 8, (5, 8))
    assert np.zeros((10, 12))[win.slices].shape == (5, 8)
    assert win.box.tolist() == [3.0, 2.0, 11.0, 7.0]
    assert win.translate(1, -3) == Window(3, 0, 8, 8)
    with pytest.raises(ValueError, match="does not fit"):
        win.check_inside((6, 12))


# ---------------------------------------------------------------------------------------------------- weights


def test_blend_weights_ramp_literal():
    # middle window of three along x, overlap 2: ramps 0.5 - 0.5 cos(pi (i + 0.5) / 2) on its two inner edges
    wts = blend_weights(Window(0, 3, 1, 9), (1, 12), overlap=2)
    r = 0.5 - 0.5 * np.cos(np.pi * np.array([0.25, 0.75]))
    assert np.allclose(wts[0], [r[0], r[1], 1, 1, r[1], r[0]], atol=1e-7)
    assert wts.dtype == np.float32


def test_blend_weights_one_along_image_border_and_interior():
    hw = (40, 50)
    top_left = blend_weights(Window(0, 0, 20, 20), hw, overlap=6)
    assert np.all(top_left[:14, :14] == 1.0)  # interior and the two border sides
    assert np.all(top_left[0, :14] == 1.0) and np.all(top_left[:14, 0] == 1.0)
    assert np.all(top_left[-1, :] < 1.0) and np.all(top_left[:, -1] < 1.0)
    assert np.all(blend_weights(Window(0, 0, 40, 50), hw, overlap=6) == 1.0)


@FAST
@given(h=st.integers(1, 80), w=st.integers(1, 80), tile=st.integers(2, 30), data=st.data())
def test_blend_weights_positive_and_bounded(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    for win in tile_grid((h, w), tile=tile, overlap=overlap):
        wts = blend_weights(win, (h, w), overlap=overlap)
        assert wts.shape == win.hw and np.all(wts > 0) and np.all(wts <= 1)


def test_blend_weights_complementary_on_exact_overlap():
    # two windows overlapping by exactly `overlap`: the raised cosines sum to 1 there
    hw, ov = (1, 16), 6
    a, b = Window(0, 0, 1, 11), Window(0, 5, 1, 16)
    total = np.zeros(hw)
    total[a.slices] += blend_weights(a, hw, overlap=ov)
    total[b.slices] += blend_weights(b, hw, overlap=ov)
    assert np.allclose(total, 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- stitching

GRIDS = [((37, 53), 16, 5, (0, 0)), ((37, 53), 16, 5, (7, 3)), ((100, 64), 32, 12, (0, 0)), ((9, 9), 16, 4, (0, 0))]


@pytest.mark.parametrize(("hw", "tile", "overlap", "offset"), GRIDS)
@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_constant_prediction_stitches_to_constant(hw, tile, overlap, offset, value):
    wins = tile_grid(hw, tile=tile, overlap=overlap, offset=offset)
    out = stitch(hw, wins, [np.full(w.hw, value, np.float32) for w in wins], overlap=overlap)
    assert out.dtype == np.float32 and out.shape == hw
    assert np.abs(out - value).max() <= 1e-6


def smooth_map(hw):
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return (0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 0.1 * xx / hw[1]).astype(np.float32)


@pytest.mark.parametrize(("hw", "tile", "overlap", "offset"), GRIDS)
def test_identity_model_reproduces_smooth_map(hw, tile, overlap, offset):
    truth = smooth_map(hw)
    out = map_tiles(lambda t: t, truth, tile=tile, overlap=overlap, offset=offset)
    assert np.abs(out - truth).max() <= 1e-6


def perturbed_model(delta):
    """Identity plus a perturbation in [0, delta] that depends on the position INSIDE the tile (like a model
    whose output depends on where in its input an object sits)."""

    def fn(tile):
        yy, xx = np.mgrid[: tile.shape[0], : tile.shape[1]]
        return tile + delta * (0.5 + 0.5 * np.sin(0.9 * xx + 0.4 * yy + 0.01 * xx * yy))

    return fn


@pytest.mark.parametrize(("hw", "tile", "overlap"), [((90, 130), 32, 10), ((64, 200), 48, 16), ((40, 40), 16, 4)])
def test_shifted_grid_changes_map_no_more_than_model(hw, tile, overlap):
    delta = 0.05
    truth = smooth_map(hw)
    model = perturbed_model(delta)
    a = map_tiles(model, truth, tile=tile, overlap=overlap, offset=(0, 0))
    b = map_tiles(model, truth, tile=tile, overlap=overlap, offset=(tile // 3, tile // 2))
    assert np.abs(a - b).max() <= delta + 1e-6
    # a weighted mean never leaves the range of what the model said about a pixel
    assert np.all(a >= truth - 1e-6) and np.all(a <= truth + delta + 1e-6)


def test_no_seams_with_per_tile_bias():
    # each tile's prediction is off by its own constant bias in [0, delta]; a hard cut would show jumps of up to
    # delta between neighbouring pixels, the raised-cosine blend spreads each step over the overlap
    hw, tile, overlap, delta = (96, 96), 32, 16, 0.1
    wins = tile_grid(hw, tile=tile, overlap=overlap)
    rng = np.random.default_rng(0)
    biases = rng.permutation(np.linspace(0, delta, len(wins)))
    out = stitch(hw, wins, [np.full(w.hw, b, np.float32) for w, b in zip(wins, biases)], overlap=overlap).astype(
        np.float64)
    jump = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert jump <= delta * 2.0 / overlap
    hard = np.zeros(hw)
    for w, b in zip(wins, biases):
        hard[w.slices] = b
    assert max(np.abs(np.diff(hard, axis=0)).max(), np.abs(np.diff(hard, axis=1)).max()) > 4 * jump


def test_stitcher_incremental_equals_stitch():
    hw, tile, overlap = (50, 70), 20, 6
    wins = tile_grid(hw, tile=tile, overlap=overlap)
    rng = np.random.default_rng(3)
    probs = [rng.random(w.hw, dtype=np.float32) for w in wins]
    st_ = Stitcher(hw, overlap=overlap)
    for w, p in zip(wins, probs):
        st_.add(w, p)
    assert st_.covered.all()
    assert np.array_equal(st_.result(), stitch(hw, wins, probs, overlap=overlap))


def test_stitcher_custom_weights():
    st_ = Stitcher((1, 4), overlap=0)
    st_.add(Window(0, 0, 1, 3), np.array([[0.0, 0.0, 0.0]]), weights=np.array([[1.0, 1.0, 3.0]]))
    st_.add(Window(0, 2, 1, 4), np.array([[1.0, 1.0]]))
    assert np.allclose(st_.result(), [[0.0, 0.0, 0.25, 1.0]])


def test_stitcher_uncovered_pixels():
    st_ = Stitcher((4, 4), overlap=0)
    st_.add(Window(0, 0, 2, 4), np.ones((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="8 of 16 pixels are covered by no window"):
        st_.result()
    out = st_.result(fill=0.0)
    assert out[:2].tolist() == [[1.0] * 4] * 2 and out[2:].tolist() == [[0.0] * 4] * 2


def test_stitcher_misuse():
    st_ = Stitcher((10, 10), overlap=2)
    with pytest.raises(ValueError, match=r"shape \(win.h, win.w\) = \(4, 4\)"):
        st_.add(Window(0, 0, 4, 4), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="does not fit"):
        st_.add(Window(8, 8, 12, 12), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="> 0"):
        st_.add(Window(0, 0, 4, 4), np.zeros((4, 4)), weights=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="overlap"):
        Stitcher((10, 10), overlap=-1)
