"""Tests for finedetail.transforms (TTA views) and finedetail.frames (Scale, LongestSide, resize): exact inverses, agreement of coordinates with where pixels go, Scale sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finedetail.frames import LongestSide, Scale, long_side_size, resize
from finedetail.transforms import (
    TTA_NAMES,
    Compose,
    HFlip,
    Identity,
    Rot90,
    Shift,
    Transform,
    VFlip,
    parse_tta,
)

FAST = settings(max_examples=50, deadline=None)

EXACT = [Identity(), HFlip(), VFlip(), Rot90(1), Rot90(2), Rot90(3), Shift(2, -3), Shift(-11, 17),
         Compose((HFlip(), Rot90(1))), Compose((Rot90(3), Shift(1, 4), VFlip()))]
EXACT_IDS = [t.name for t in EXACT]


def tight_box(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------- strategies

simple_transforms = st.one_of(
    st.just(Identity()),
    st.just(HFlip()),
    st.just(VFlip()),
    st.sampled_from([1, 2, 3]).map(Rot90),
    st.builds(Shift, st.integers(-20, 20), st.integers(-20, 20)),
)
any_exact = st.one_of(simple_transforms, st.lists(simple_transforms, max_size=4).map(lambda ts: Compose(tuple(ts))))
no_shift = st.one_of(
    st.just(HFlip()), st.just(VFlip()), st.sampled_from([1, 2, 3]).map(Rot90),
)


@st.composite
def arrays(draw):
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.bool_]))
    shape = (h, w) if draw(st.booleans()) else (h, w, draw(st.integers(1, 4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype is np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dtype is np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.random(shape) < 0.5


# ---------------------------------------------------------------------------------------------------- exact inverses


@FAST
@given(a=arrays(), t=any_exact)
def test_invert_apply_is_bit_exact(a, t):
    fwd = t.apply_image(a)
    assert fwd.dtype == a.dtype and fwd.shape[:2] == t.out_size(a.shape[:2]) and fwd.shape[2:] == a.shape[2:]
    assert fwd.flags.c_contiguous
    back = t.invert_image(fwd)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.tobytes() == a.tobytes()


@pytest.mark.parametrize("shape", [(5, 7), (7, 3, 3), (3, 9, 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.bool_])
@pytest.mark.parametrize("t", EXACT, ids=EXACT_IDS)
def test_round_trip_odd_non_square(t, shape, dtype):
    a = (np.arange(np.prod(shape)).reshape(shape) * 37 % 251).astype(dtype)
    assert np.array_equal(t.invert_image(t.apply_image(a)), a)
    assert t.in_size(t.out_size(shape[:2])) == shape[:2]


@pytest.mark.parametrize(
    ("t", "ref"),
    [
        (HFlip(), lambda a: a[:, ::-1]),
        (VFlip(), lambda a: a[::-1]),
        (Rot90(1), lambda a: np.rot90(a, 1)),
        (Rot90(2), lambda a: np.rot90(a, 2)),
        (Rot90(3), lambda a: np.rot90(a, 3)),
        (Shift(2, -3), lambda a: np.roll(a, (2, -3), axis=(0, 1))),
    ],
    ids=["hflip", "vflip", "rot90", "rot180", "rot270", "shift"],
)
def test_matches_numpy_semantics(t, ref):
    a = np.arange(5 * 7 * 2, dtype=np.uint8).reshape(5, 7, 2)
    assert np.array_equal(t.apply_image(a), ref(a))


def test_rot90_is_counter_clockwise():
    a = np.array([[1, 2, 3],
                  [4, 5, 6]], dtype=np.uint8)
    assert Rot90(1).apply_image(a).tolist() == [[3, 6], [2, 5], [1, 4]]
    # pixel (0, 0) (value 1) lands at row 2, col 0: centre (0.5, 2.5)
    assert Rot90(1).apply_coords(np.array([[0.5, 0.5]]), (2, 3)).tolist() == [[0.5, 2.5]]


# ---------------------------------------------------------------------------------------------------- coordinates


@FAST
@given(h=st.integers(1, 9), w=st.integers(1, 9), t=any_exact, data=st.data())
def test_point_follows_its_pixel(h, w, t, data):
    r, c = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    img = np.zeros((h, w), np.uint8)
    img[r, c] = 1
    (r2, c2), = np.argwhere(t.apply_image(img))
    got = t.apply_coords(np.array([[c + 0.5, r + 0.5]]), (h, w))
    assert got.tolist() == [[c2 + 0.5, r2 + 0.5]]
    assert t.invert_coords(got, t.out_size((h, w))).tolist() == [[c + 0.5, r + 0.5]]


@FAST
@given(h=st.integers(1, 9), w=st.integers(1, 9), t=any_exact, data=st.data())
def test_coords_round_trip(h, w, t, data):
    # odd multiples of 1/16 are exact in float64 and never on a pixel edge, where flip + wrap is ambiguous
    # (x = 0 and x = w are the same point of the circular frame)
    xs = data.draw(st.lists(st.integers(0, 8 * w - 1), min_size=1, max_size=5))
    ys = data.draw(st.lists(st.integers(0, 8 * h - 1), min_size=len(xs), max_size=len(xs)))
    pts = np.stack([(2 * np.array(xs) + 1) / 16, (2 * np.array(ys) + 1) / 16], axis=1)
    fwd = t.apply_coords(pts, (h, w))
    oh, ow = t.out_size((h, w))
    assert np.all((fwd >= 0) & (fwd <= [ow, oh]))
    assert np.array_equal(t.invert_coords(fwd, (oh, ow)), pts)


@st.composite
def rect_masks(draw):
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@FAST
@given(m=rect_masks(), ts=st.lists(no_shift, max_size=3), shift=st.none() | st.builds(
    Shift, st.integers(-12, 12), st.integers(-12, 12)), pos=st.integers(0, 3))
def test_box_is_tight_box_of_moved_rectangle(m, ts, shift, pos):
    # at most one Shift: a rolled rectangle is a product of two circular intervals, whose tight box the seam rule
    # gives exactly (full extent along a wrapped axis)
    if shift is not None:
        ts.insert(min(pos, len(ts)), shift)
    t = Compose(tuple(ts))
    got = t.apply_boxes(tight_box(m)[None], m.shape)
    assert got.tolist() == [tight_box(t.apply_image(m)).tolist()]


@FAST
@given(a=arrays(), t=no_shift)
def test_box_of_any_mask_flip_rot(a, t):
    m = a[..., 0] > 0 if a.ndim == 3 else a > 0
    if not m.any():
        m[0, 0] = True
    got = t.apply_boxes(tight_box(m)[None], m.shape)
    assert got.tolist() == [tight_box(t.apply_image(m)).tolist()]
    assert t.invert_boxes(got, t.out_size(m.shape)).tolist() == [tight_box(m).tolist()]


@FAST
@given(a=arrays(), t=any_exact)
def test_box_always_contains_moved_pixels(a, t):
    m = a[..., 0] > 0 if a.ndim == 3 else a > 0
    if not m.any():
        m[-1, -1] = True
    (bx0, by0, bx1, by1), = t.apply_boxes(tight_box(m)[None], m.shape)
    x0, y0, x1, y1 = tight_box(t.apply_image(m))
    assert bx0 <= x0 and by0 <= y0 and bx1 >= x1 and by1 >= y1


@pytest.mark.parametrize(
    ("box", "want"),
    [
        ([1, 0, 3, 2], [4, 1, 6, 3]),     # moves rigidly
        ([4, 0, 6, 1], [0, 1, 2, 2]),     # wraps as a whole: moves rigidly
        ([3, 0, 6, 1], [0, 1, 7, 2]),     # straddles the x seam after the shift: full width
        ([0, 0, 7, 5], [0, 0, 7, 5]),     # whole image stays whole
    ],
)
def test_shift_box_seam_rule(box, want):
    assert Shift(1, 3).apply_boxes(np.array([box], float), (5, 7)).tolist() == [want]


def test_boxes_are_normalised():
    got = HFlip().apply_boxes(np.array([[1.0, 2.0, 3.0, 4.0]]), (5, 7))
    assert got.tolist() == [[4.0, 2.0, 6.0, 4.0]]


def test_shift_points_wrap():
    got = Shift(-1, 2).apply_coords(np.array([[6.5, 0.5], [0.0, 4.25]]), (5, 7))
    assert got.tolist() == [[1.5, 4.5], [2.0, 3.25]]


# ---------------------------------------------------------------------------------------------------- Scale


@pytest.mark.parametrize(("src", "factor", "dst"), [((7, 5), 2.0, (14, 10)), ((7, 5), 0.5, (4, 2)),
                                                    ((3, 1001), 0.37, (1, 370)), ((9, 13), 1.0, (9, 13))])
def test_scale_sizes_and_inverse_size(src, factor, dst):
    t = Scale.by_factor(src, factor)
    assert t.out_size(src) == dst and t.in_size(dst) == src
    a = np.random.default_rng(0).random(src, dtype=np.float32)
    fwd = t.apply_image(a)
    assert fwd.shape == dst and fwd.dtype == np.float32
    assert t.invert_image(fwd).shape == src


def test_scale_coords_use_exact_size_ratio():
    t = Scale.to_size((7, 5), (3, 11))
    pts = np.array([[0.0, 0.0], [5.0, 7.0], [2.5, 3.5]])
    got = t.apply_coords(pts, (7, 5))
    assert np.allclose(got, [[0, 0], [11, 3], [5.5, 1.5]], rtol=0, atol=1e-12)
    assert np.allclose(t.invert_coords(got, (3, 11)), pts, rtol=0, atol=1e-12)
    assert np.allclose(t.apply_boxes(np.array([[0.0, 0.0, 5.0, 7.0]]), (7, 5)), [[0, 0, 11, 3]])


def _centroid(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]] + 0.5  # pixel centres, continuous frame
    return np.array([(a * xx).sum() / a.sum(), (a * yy).sum() / a.sum()])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_scale_up_moves_a_pixel_mass_to_its_mapped_centre(factor):
    # a bilinearly upsampled delta is a symmetric tent around the mapped centre
    hw, (r, c) = (7, 9), (4, 3)
    a = np.zeros(hw, np.float32)
    a[r, c] = 1.0
    t = Scale.by_factor(hw, factor)
    assert np.allclose(_centroid(t.apply_image(a)), t.apply_coords(np.array([[c + 0.5, r + 0.5]]), hw)[0], atol=1e-5)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_scale_down_moves_a_block_to_its_mapped_pixel(factor):
    # INTER_AREA by an integer factor: an aligned factor x factor block becomes exactly one output pixel
    hw, (r, c) = (7 * factor, 9 * factor), (4, 3)
    a = np.zeros(hw, np.float32)
    a[r * factor:(r + 1) * factor, c * factor:(c + 1) * factor] = 1.0
    t = Scale.by_factor(hw, 1 / factor)
    out = t.apply_image(a)
    assert np.argwhere(out > 0).tolist() == [[r, c]] and out[r, c] == pytest.approx(1.0)
    centre = np.array([[(c + 0.5) * factor, (r + 0.5) * factor]])
    assert np.allclose(t.apply_coords(centre, hw), [[c + 0.5, r + 0.5]], atol=1e-12)


@pytest.mark.parametrize("size", [(40, 57), (17, 21), (101, 90)])
def test_scale_any_size_keeps_a_blob_centroid_on_mapped_point(size):
    hw = (33, 47)
    yy, xx = np.mgrid[: hw[0], : hw[1]] + 0.5
    cx, cy = 20.3, 15.8
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2)).astype(np.float32)
    t = Scale.to_size(hw, size)
    want = t.apply_coords(np.array([[cx, cy]]), hw)[0]
    # resampling error of a smooth blob, in output pixels
    assert np.allclose(_centroid(t.apply_image(blob)), want, atol=0.05 * max(1, size[1] / hw[1]))


@pytest.mark.parametrize("interp", ["linear", "nearest"])
@pytest.mark.parametrize("factor", [2, 3])
def test_scale_bool_upscale_box_exact(interp, factor):
    m = np.zeros((5, 7), bool)
    m[1:3, 2:5] = True
    t = Scale.by_factor(m.shape, factor)
    out = t.apply_image(m, interp=interp)
    assert out.dtype == bool
    assert t.apply_boxes(tight_box(m)[None], m.shape).tolist() == [tight_box(out).tolist()]


def test_bool_linear_downscale_keeps_thin_line_nearest_may_drop_it():
    m = np.zeros((8, 8), bool)
    m[:, 2] = True  # 1-px line on an even column: area averaging gives exactly 0.5, kept by >= 0.5
    t = Scale.to_size((8, 8), (4, 4))
    assert t.apply_image(m).any(axis=0).tolist() == [False, True, False, False]
    assert not t.apply_image(m, interp="nearest").any()


def test_scale_interpolation_rule_matches_cv2():
    a = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    assert np.array_equal(resize(a, (18, 26)), cv2.resize(a, (26, 18), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize(a, (4, 6)), cv2.resize(a, (6, 4), interpolation=cv2.INTER_AREA))
    # one side grows: bilinear
    assert np.array_equal(resize(a, (4, 26)), cv2.resize(a, (26, 4), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int32, np.float16, np.uint16])
@pytest.mark.parametrize("channels", [None, 1, 5])
@pytest.mark.parametrize("size", [(11, 3), (2, 4)])
def test_resize_keeps_dtype_and_layout(dtype, channels, size):
    shape = (5, 7) if channels is None else (5, 7, channels)
    a = (np.arange(np.prod(shape)).reshape(shape) % 100).astype(dtype)
    out = resize(a, size)
    assert out.dtype == a.dtype and out.shape == size + shape[2:] and out.flags.c_contiguous


def test_resize_many_channels_equals_per_channel():
    a = np.random.default_rng(2).random((5, 7, 6), dtype=np.float32)
    out = resize(a, (11, 3))
    for ch in range(6):
        # OpenCV's SIMD paths differ by channel count, hence a float tolerance
        assert np.allclose(out[..., ch], resize(a[..., ch], (11, 3)), rtol=0, atol=1e-6)


def test_resize_nearest_integer_factor_is_repeat():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert np.array_equal(resize(a, (4, 6), interp="nearest"), a.repeat(2, 0).repeat(2, 1))


def test_scale_rejects_wrong_input_size():
    t = Scale.to_size((7, 5), (14, 10))
    with pytest.raises(ValueError, match=r"maps size \(7, 5\) to \(14, 10\)"):
        t.apply_image(np.zeros((5, 7), np.float32))
    with pytest.raises(ValueError, match="Scale.to_size"):
        t.apply_coords(np.zeros((1, 2)), (5, 7))


def test_scale_inverse_of_inverse():
    t = Scale.by_factor((7, 5), 1.5)
    assert t.inverse().inverse() == t and t.inverse().src == t.size


# ---------------------------------------------------------------------------------------------------- parse & misuse


@pytest.mark.parametrize(
    ("name", "want"),
    [("identity", Identity()), ("hflip", HFlip()), ("vflip", VFlip()), ("rot90", Rot90(1)), ("rot180", Rot90(2)),
     ("rot270", Rot90(3)), ("shift:8,8", Shift(8, 8)), ("shift:-4,0", Shift(-4, 0)), (" HFlip ", HFlip()),
     ("hflip+rot90", Compose((HFlip(), Rot90(1))))],
)
def test_parse_tta(name, want):
    assert parse_tta(name) == want


@pytest.mark.parametrize("t", EXACT, ids=EXACT_IDS)
def test_name_round_trips(t):
    assert parse_tta(t.name).apply_image(np.arange(35).reshape(5, 7)).tolist() == \
        t.apply_image(np.arange(35).reshape(5, 7)).tolist()


def test_tta_names():
    assert TTA_NAMES == ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")
    assert all(isinstance(parse_tta(n), Transform) for n in TTA_NAMES)


@pytest.mark.parametrize("bad", ["rot45", "shift:1", "shift:a,b", "", "flip"])
def test_parse_tta_unknown_lists_valid(bad):
    with pytest.raises(ValueError, match="valid: identity, hflip|shift:DY,DX"):
        parse_tta(bad)


@pytest.mark.parametrize("make", [lambda: Rot90(0), lambda: Rot90(4), lambda: Rot90(1.0), lambda: Shift(1.5, 0),
                                  lambda: Scale.by_factor((5, 5), 0), lambda: Scale.to_size((0, 5), (5, 5))])
def test_invalid_construction(make):
    with pytest.raises(ValueError):
        make()


def test_compose_rejects_non_transforms():
    with pytest.raises(TypeError, match="Transform instances"):
        Compose((HFlip(), "vflip"))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        HFlip().apply_coords(np.zeros((3,)), (5, 7))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        HFlip().apply_boxes(np.zeros((2, 2)), (5, 7))
    with pytest.raises(ValueError, match="interp"):
        HFlip().apply_image(np.zeros((5, 7)), interp="cubic")
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        VFlip().apply_image(np.zeros(5))


def test_transforms_are_frozen_and_hashable():
    assert len({HFlip(), HFlip(), Rot90(1), Rot90(1), Shift(1, 2), Shift(1, 2)}) == 3
    with pytest.raises(AttributeError):
        Rot90(1).k = 2  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------- LongestSide


@pytest.mark.parametrize("hw, long_side, size", [
    ((2048, 1024), 1024, (1024, 512)),
    ((100, 300), 1024, (341, 1024)),  # 341.33 -> 341
    ((96, 160), 1024, (614, 1024)),  # 614.4 -> 614
    ((8, 20), 1024, (410, 1024)),  # 409.6 -> 410 (half up)
    ((1024, 1024), 1024, (1024, 1024)),
    ((1, 3000), 1024, (1, 1024)),  # 0.34 -> at least 1
    ((301, 517), 448, (261, 448)),
])
def test_long_side_size(hw, long_side, size):
    assert long_side_size(hw, long_side) == size
    frame = LongestSide(hw, long_side)
    assert frame.size == frame.out_size(hw) == size and frame.in_size(size) == hw
    assert frame.apply_image(np.zeros((*hw, 3), np.uint8)).shape == (*size, 3)


@pytest.mark.parametrize("src, long_side", [((5, 7), 21), ((7, 5), 35), ((3, 11), 33)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.bool_])
def test_longest_side_nearest_round_trip_odd_non_square(src, long_side, dtype):
    # an integer zoom with nearest copies whole pixels, so the round trip is exact bit for bit
    rng = np.random.default_rng(0)
    a = (rng.random((*src, 3)) * 255).astype(dtype)
    frame = LongestSide(src, long_side)
    up = frame.apply_image(a, interp="nearest")
    assert up.shape[:2] == frame.size and up.dtype == a.dtype
    np.testing.assert_array_equal(frame.invert_image(up, interp="nearest"), a)
    assert frame.invert_image(frame.apply_image(a)).shape == a.shape  # linear: sizes exact, values resampled


@FAST
@given(h=st.integers(1, 50), w=st.integers(1, 50), long_side=st.integers(1, 1100), data=st.data())
def test_longest_side_coords_and_boxes_round_trip(h, w, long_side, data):
    frame = LongestSide((h, w), long_side)
    xs = data.draw(st.lists(st.floats(0, w), min_size=2, max_size=2))
    ys = data.draw(st.lists(st.floats(0, h), min_size=2, max_size=2))
    pts = np.array([[xs[0], ys[0]], [xs[1], ys[1]]])
    moved = frame.apply_coords(pts)
    np.testing.assert_allclose(moved, pts * [frame.size[1] / w, frame.size[0] / h], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(frame.invert_coords(moved, frame.size), pts, rtol=1e-12, atol=1e-9)
    box = np.array([[min(xs), min(ys), max(xs), max(ys)]])
    np.testing.assert_allclose(frame.invert_boxes(frame.apply_boxes(box), frame.size), box, rtol=1e-12, atol=1e-9)


def test_longest_side_pixel_centre_lands_on_its_resized_pixel():
    frame = LongestSide((5, 7), 21)  # 3x
    np.testing.assert_array_equal(frame.apply_coords(np.array([[6.5, 4.5]])), [[19.5, 13.5]])  # pixel (4, 6) centre


def test_longest_side_pad_unpad_and_low_res():
    frame = LongestSide((3, 5), 10)  # resized (6, 10), padded 10 x 10
    a = np.arange(60, dtype=np.float32).reshape(6, 10)
    padded = frame.pad(a)
    assert padded.shape == (10, 10) and not padded[6:].any()
    np.testing.assert_array_equal(frame.unpad(padded), a)
    low = frame.to_low_res(np.ones((6, 10), np.float32), 5)  # 2x2 cells over the padded square
    np.testing.assert_array_equal(low, [[1] * 5] * 3 + [[0] * 5] * 2)
    back = frame.from_low_res(np.ones((5, 5), np.float32))
    assert back.shape == (3, 5) and np.all(back == 1)
    with pytest.raises(ValueError, match="resized size"):
        frame.pad(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="padded"):
        frame.unpad(np.zeros((6, 10), np.float32))
    with pytest.raises(ValueError, match="low_res"):
        frame.to_low_res(a, 11)
    with pytest.raises(ValueError, match="long_side"):
        LongestSide((3, 5), 0)


def test_bilinear_never_area_averages():
    a = np.random.default_rng(1).random((9, 13), dtype=np.float32)
    np.testing.assert_array_equal(resize(a, (4, 6), interp="bilinear"),
                                  cv2.resize(a, (6, 4), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(resize(a, (4, 6)), cv2.resize(a, (6, 4), interpolation=cv2.INTER_AREA))
