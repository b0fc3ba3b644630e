"""Post-processing: guided filter against OpenCV and a brute-force reference, morphology on tiny literal masks."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import finedetail.guided as gf
from finedetail.crf import dense_crf
from finedetail.guided import fast_guided_filter, guided_filter
from finedetail.morphology import close, disk, fill_holes, open_by_reconstruction, open_plain, remove_islands
from finedetail.postprocess import PostprocessConfig, postprocess


def M(text: str) -> np.ndarray:
    """Mask literal: rows of '#' (foreground) and '.' (background)."""
    return np.array([[c == "#" for c in row.strip()] for row in text.strip().splitlines()], bool)


def _rng_image(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    guide = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    src = rng.random((h, w)).astype(np.float32)
    return guide, src


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Textured background, one red disc with 1-2 px red lines; returns (image uint8 RGB, true mask bool)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 200, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), h // 6, 1, -1)
    for ang in np.linspace(0, 2 * np.pi, 9)[:-1]:
        end = (int(w // 2 + 0.45 * h * np.cos(ang)), int(h // 2 + 0.45 * h * np.sin(ang)))
        cv2.line(mask, (w // 2, h // 2), end, 1, 1 + int(ang > 3))
    image[mask > 0] = (220, 30, 30)
    return image, mask.astype(bool)


# ------------------------------------------------------------------------------------------------ guided filter

# Golden values: cv2.ximgproc.guidedFilter(guide, src, radius, eps_opencv) from opencv-contrib-python-headless
# 5.0.0.93, computed live. Conventions found by experiment with that version and matched here:
#   * borders: BORDER_REFLECT (with BORDER_REFLECT_101 the border band differs by up to 0.19);
#   * eps applies to the guide's own values: a uint8 guide needs eps * 255**2 for our [0, 1]-guide eps.
#   * OpenCV's float32-colour-guide path is off by up to 0.07 on a few near-singular border pixels at eps <= 1e-4
#     (its uint8 path and our float64 brute force below agree with us to 3e-6), so there the golden values come
#     from the uint8 call, the same filter in other units.
GUIDES = {
    "colour_u8": (lambda g: g, 255.0),
    "colour_f32": (lambda g: g.astype(np.float32) / 255, 1.0),
    "grey_u8": (lambda g: np.ascontiguousarray(g[..., 1]), 255.0),
    "grey_f32": (lambda g: g[..., 1].astype(np.float32) / 255, 1.0),
}


@pytest.mark.parametrize("guide_kind", sorted(GUIDES))
@pytest.mark.parametrize(("radius", "eps"), [(1, 1e-4), (2, 1e-3), (4, 1e-2), (8, 1e-3)])
@pytest.mark.parametrize("block_pixels", [gf._BLOCK_PIXELS, 300])  # 300: many row blocks with halos
def test_guided_filter_matches_opencv(guide_kind, radius, eps, block_pixels, monkeypatch):
    monkeypatch.setattr(gf, "_BLOCK_PIXELS", block_pixels)
    guide_u8, src = _rng_image(37, 53, seed=radius)
    make, scale = GUIDES[guide_kind]
    guide = make(guide_u8)
    if guide_kind == "colour_f32" and eps < 1e-3:
        ref = cv2.ximgproc.guidedFilter(guide_u8, src, radius, eps * 255.0**2)
    else:
        ref = cv2.ximgproc.guidedFilter(guide, src, radius, eps * scale**2)
    ours = guided_filter(guide, src, radius=radius, eps=eps)
    assert ours.dtype == np.float32 and ours.shape == (37, 53)
    assert np.abs(ours - ref).max() <= 1e-3


def test_eps_is_in_unit_guide_units_whatever_the_guide_dtype():
    guide, src = _rng_image(20, 30, seed=1)
    a = guided_filter(guide, src, radius=2, eps=1e-3)
    b = guided_filter(guide.astype(np.float64) / 255, src, radius=2, eps=1e-3)
    c = guided_filter(guide.astype(np.uint16) * np.uint16(257), src, radius=2, eps=1e-3)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)


def _brute_force(guide01: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Per-pixel float64 reference: windows over np.pad(mode="symmetric") == OpenCV's BORDER_REFLECT."""
    h, w, c = guide01.shape
    k = 2 * radius + 1
    gp = np.pad(guide01, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    sp = np.pad(src.astype(np.float64), radius, mode="symmetric")
    a = np.zeros((h, w, c))
    b = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            gi = gp[y : y + k, x : x + k].reshape(-1, c)
            pi = sp[y : y + k, x : x + k].reshape(-1)
            cov = np.cov(gi.T, bias=True).reshape(c, c) + eps * np.eye(c)
            cgp = (gi * pi[:, None]).mean(0) - gi.mean(0) * pi.mean()
            a[y, x] = np.linalg.solve(cov, cgp)
            b[y, x] = pi.mean() - a[y, x] @ gi.mean(0)
    ap = np.pad(a, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    bp = np.pad(b, radius, mode="symmetric")
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            mean_a = ap[y : y + k, x : x + k].reshape(-1, c).mean(0)
            out[y, x] = mean_a @ guide01[y, x] + bp[y : y + k, x : x + k].mean()
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_matches_brute_force_reference(channels):
    guide, src = _rng_image(7, 9, seed=3)
    g01 = guide[..., :channels].astype(np.float64) / 255
    ours = guided_filter(guide if channels == 3 else np.ascontiguousarray(guide[..., 0]), src, radius=2, eps=1e-2)
    np.testing.assert_allclose(ours, _brute_force(g01, src, 2, 1e-2), atol=2e-5)


def test_guided_filter_literals():
    guide, _ = _rng_image(9, 11, seed=4)
    const = np.full((9, 11), 0.3, np.float32)
    np.testing.assert_allclose(guided_filter(guide, const, radius=2, eps=1e-3), 0.3, atol=1e-6)
    # src equal to the (grey) guide is kept when its local variance >> eps: q ~= I.
    grey = guide[..., 0].astype(np.float32) / 255
    assert np.abs(guided_filter(grey, grey, radius=1, eps=1e-6) - grey).max() < 1e-3


def test_guided_filter_one_row_and_one_pixel():
    guide, src = _rng_image(1, 5, seed=5)
    ref = cv2.ximgproc.guidedFilter(guide, src, 2, 1e-3 * 255**2)
    np.testing.assert_allclose(guided_filter(guide, src, radius=2, eps=1e-3), ref, atol=1e-3)
    one = guided_filter(guide[:1, :1], src[:1, :1], radius=3, eps=1e-3)
    np.testing.assert_allclose(one, src[:1, :1], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"radius": 0, "eps": 1e-3}, ValueError, r"radius must be an int >= 1 .*got radius=0"),
        ({"radius": 2.0, "eps": 1e-3}, ValueError, r"got radius=2.0"),
        ({"radius": 2, "eps": 0.0}, ValueError, r"eps must be a finite float > 0 .*got eps=0.0"),
        ({"radius": 2, "eps": float("nan")}, ValueError, r"got eps=nan"),
    ],
)
def test_guided_filter_bad_knobs(kwargs, exc, match):
    guide, src = _rng_image(4, 4, seed=0)
    with pytest.raises(exc, match=match):
        guided_filter(guide, src, **kwargs)


def test_guided_filter_bad_arrays():
    guide, src = _rng_image(4, 5, seed=0)
    with pytest.raises(ValueError, match=r"src is \(5, 4\) but the guide is \(4, 5\)"):
        guided_filter(guide, src.T.copy(), radius=1, eps=1e-3)
    with pytest.raises(ValueError, match=r"guide must be \(H, W, 3\) colour or \(H, W\) grey, got shape \(4, 5, 2\)"):
        guided_filter(guide[..., :2], src, radius=1, eps=1e-3)
    with pytest.raises(TypeError, match="guide must be uint8"):
        guided_filter(guide.astype(np.int32), src, radius=1, eps=1e-3)
    with pytest.raises(ValueError, match=r"src must be an \(H, W\) map"):
        guided_filter(guide, np.stack([src, src]), radius=1, eps=1e-3)


def test_fast_guided_filter_subsample_one_or_radius_one_is_exact():
    guide, src = _rng_image(23, 31, seed=6)
    exact = guided_filter(guide, src, radius=3, eps=1e-3)
    np.testing.assert_array_equal(fast_guided_filter(guide, src, radius=3, eps=1e-3, subsample=1), exact)
    exact1 = guided_filter(guide, src, radius=1, eps=1e-3)
    np.testing.assert_array_equal(fast_guided_filter(guide, src, radius=1, eps=1e-3, subsample=4), exact1)


@pytest.mark.parametrize(("subsample", "bound"), [(2, 0.01), (4, 0.02)])
@pytest.mark.parametrize("guide_kind", ["colour_u8", "grey_f32"])
def test_fast_guided_filter_is_close_to_exact_on_a_scene(subsample, bound, guide_kind):
    # A small scene dense in 1-2 px lines is the hard case (~1e-3 on the 2048^2 bench inputs).
    image, mask = _scene(99, 131)  # odd sizes: low-res grid is ceil(H / s) x ceil(W / s)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)
    guide = GUIDES[guide_kind][0](image)
    exact = guided_filter(guide, soft, radius=4, eps=1e-3)
    fast = fast_guided_filter(guide, soft, radius=4, eps=1e-3, subsample=subsample)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    assert np.abs(fast - exact).mean() < bound
    assert ((fast >= 0.5) != (exact >= 0.5)).mean() < 0.01


@pytest.mark.parametrize(("radius", "subsample", "window"), [(4, 4, 12), (2, 4, 6), (8, 4, 20), (6, 4, 20)])
def test_fast_guided_filter_window_is_the_documented_one(radius, subsample, window):
    """The docstring's window: (2 * round(r / s) + 1) * s px (s capped at r), wider than the exact filter's 2r + 1.
    On a flat guide the filter is two box means, so one src pixel reaches exactly two windows' width."""
    guide = np.full((64, 64, 3), 128, np.uint8)
    src = np.zeros((64, 64), np.float32)
    src[32, 32] = 1.0

    def reach(q: np.ndarray) -> int:
        cols = np.nonzero(np.abs(q[32]) > 1e-6)[0]
        return int(cols.max() - cols.min() + 1)

    assert reach(guided_filter(guide, src, radius=radius, eps=1e-3)) == 2 * (2 * radius + 1) - 1
    assert reach(fast_guided_filter(guide, src, radius=radius, eps=1e-3, subsample=subsample)) == 2 * window
    assert f"(2 * round(radius / s) + 1) * s" in " ".join(fast_guided_filter.__doc__.split())


def test_fast_guided_filter_float64_guide_and_bad_subsample():
    image, mask = _scene(40, 48)
    soft = mask.astype(np.float32)
    a = fast_guided_filter(image, soft, radius=4, eps=1e-3, subsample=2)
    b = fast_guided_filter(image.astype(np.float64) / 255, soft, radius=4, eps=1e-3, subsample=2)
    np.testing.assert_allclose(a, b, atol=5e-3)  # a uint8 guide is shrunk in uint8 (rounded to 1/255)
    with pytest.raises(ValueError, match="subsample must be an int >= 1 .*got subsample=0"):
        fast_guided_filter(image, soft, radius=4, eps=1e-3, subsample=0)


# --------------------------------------------------------------------------------------------------- morphology


def test_disk_structuring_elements():
    np.testing.assert_array_equal(disk(1), M("""
        ###
        ###
        ###
    """))
    np.testing.assert_array_equal(disk(2), M("""
        .###.
        #####
        #####
        #####
        .###.
    """))
    np.testing.assert_array_equal(disk(3), M("""
        ..###..
        .#####.
        #######
        #######
        #######
        .#####.
        ..###..
    """))


HOLE_1 = M("""
    #####
    #.###
    #####
""")
HOLE_2 = M("""
    ######
    #..###
    ######
""")


@pytest.mark.parametrize(
    ("mask", "max_area", "filled"),
    [(HOLE_1, 0, False), (HOLE_1, 1, True), (HOLE_2, 1, False), (HOLE_2, 2, True)],
)
def test_fill_holes_area_edge_is_inclusive(mask, max_area, filled):
    out = fill_holes(mask, max_area=max_area)
    np.testing.assert_array_equal(out, np.ones_like(mask) if filled else mask)


def test_fill_holes_background_touching_the_border_is_not_a_hole():
    notch = M("""
        ##.##
        #####
    """)
    np.testing.assert_array_equal(fill_holes(notch, max_area=100), notch)


def test_fill_holes_uses_4_connected_background():
    # The centre pixel touches outside background only diagonally: a hole for 4-connectivity.
    mask = M("""
        .##
        #.#
        ###
    """)
    np.testing.assert_array_equal(fill_holes(mask, max_area=1), M("""
        .##
        ###
        ###
    """))


@pytest.mark.parametrize(("max_area", "removed"), [(3, False), (4, True)])
def test_remove_islands_area_edge_is_inclusive(max_area, removed):
    mask = M("""
        ##....
        ##..##
        ....##
        ....##
    """)
    expect = mask.copy()
    if removed:
        expect[:2, :2] = False
    np.testing.assert_array_equal(remove_islands(mask, max_area=max_area), expect)


def test_remove_islands_uses_8_connectivity():
    diag = M("""
        #..
        .#.
        ...
    """)
    np.testing.assert_array_equal(remove_islands(diag, max_area=1), diag)  # one component of area 2
    assert not remove_islands(diag, max_area=2).any()


@pytest.mark.parametrize("n_specks", [3, 40])  # few ids: per-id compares; many: lookup table
def test_remove_islands_many_or_few(n_specks):
    mask = np.zeros((20, 200), bool)
    mask[:, :4] = True
    for i in range(n_specks):
        mask[10, 8 + 4 * i] = True
    expect = np.zeros_like(mask)
    expect[:, :4] = True
    np.testing.assert_array_equal(remove_islands(mask, max_area=1), expect)


def test_more_than_65536_components_use_int32_labels():
    specks = np.zeros((600, 600), bool)
    specks[::2, ::2] = True  # 90000 isolated pixels
    assert not remove_islands(specks, max_area=1).any()
    np.testing.assert_array_equal(remove_islands(specks, max_area=0), specks)
    grid = np.ones((601, 601), bool)
    grid[1::2, 1::2] = False  # 90000 one-pixel holes, none on the border
    assert fill_holes(grid, max_area=1).all()
    cut = grid[:600, :600]  # now the holes on the last row and column touch the border
    filled = fill_holes(cut, max_area=1)
    expect = np.ones_like(cut)
    expect[-1, 1::2] = False
    expect[1::2, -1] = False
    np.testing.assert_array_equal(filled, expect)


@pytest.mark.parametrize(
    ("mask", "closed"),
    [
        ("...... / ##.### / ......", "...... / ###### / ......"),  # gap bridged, nothing glued to the frame
        ("#..... / .#.#.# / ......", "#..... / .##### / ......"),  # diagonal step kept, gap bridged
        ("##..### / ##..### / .......", "####### / ####### / ......."),  # gaps of 2 = 2 * size px: bridged
        ("#...### / #...### / .......", "#...### / #...### / ......."),  # 3 px: not
    ],
)
def test_close_size_1_bridges_gaps_up_to_2_px(mask, closed):
    def lit(t: str) -> np.ndarray:
        return M("\n".join(t.split(" / ")))

    np.testing.assert_array_equal(close(lit(mask), size=1), lit(closed))
    np.testing.assert_array_equal(close(lit(mask), size=0), lit(mask))


LINE_ON_BLOB = M("""
    ....................
    .####...............
    .#####################
    .####...............
    .####...............
    ....................
""".replace("#####################", "###################"))


def test_plain_opening_erases_an_attached_line_reconstruction_keeps_it():
    mask = LINE_ON_BLOB
    np.testing.assert_array_equal(open_by_reconstruction(mask, size=1), mask)
    plain = open_plain(mask, size=1)
    assert not plain[2, 5:].any()  # the line is gone
    np.testing.assert_array_equal(plain[1:5, 1:5], True)  # the blob survives


def test_opening_by_reconstruction_removes_what_does_not_survive_erosion():
    mask = M("""
        ..........
        .##....#..
        .##....#..
        .......#..
        ##########
    """)
    # The 2x2 speck and the free-standing vertical+bottom wire (1 px thick everywhere) vanish under the cross.
    assert not open_by_reconstruction(mask, size=1).any()
    np.testing.assert_array_equal(open_by_reconstruction(mask, size=0), mask)


mask_strategy = arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12)))


@settings(max_examples=60, deadline=None)
@given(mask=mask_strategy, size=st.integers(1, 3), area=st.integers(0, 6))
def test_morphology_properties(mask, size, area):
    assert (close(mask, size=size) >= mask).all()
    opened = open_plain(mask, size=size)
    rec = open_by_reconstruction(mask, size=size)
    assert (opened <= mask).all() and (rec <= mask).all()
    assert (rec >= opened).all()  # reconstruction only ever keeps more
    filled = fill_holes(mask, max_area=area)
    assert (filled >= mask).all()
    np.testing.assert_array_equal(fill_holes(filled, max_area=area), filled)
    kept = remove_islands(mask, max_area=area)
    assert (kept <= mask).all()
    np.testing.assert_array_equal(remove_islands(kept, max_area=area), kept)


@pytest.mark.parametrize("fn", [close, open_plain, open_by_reconstruction])
def test_morphology_refuses_non_bool(fn):
    with pytest.raises(TypeError, match=r"mask must be \(H, W\) bool, got uint8 \(2, 2\); threshold first"):
        fn(np.zeros((2, 2), np.uint8), size=1)


def test_area_knobs_refuse_negative():
    with pytest.raises(ValueError, match="max_area must be an int >= 0, got max_area=-1"):
        fill_holes(HOLE_1, max_area=-1)
    with pytest.raises(ValueError, match="max_area must be an int >= 0, got max_area=-1"):
        remove_islands(HOLE_1, max_area=-1)


# ------------------------------------------------------------------------------------------- the whole stage


def _line_blob_speck() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey textured image; red 12x12 blob with a 1-px red line of length 50 attached; isolated red 2x2 speck."""
    rng = np.random.default_rng(7)
    image = (128 + rng.integers(-10, 11, (64, 96, 3))).astype(np.uint8)
    mask = np.zeros((64, 96), bool)
    mask[20:32, 10:22] = True  # blob
    line = np.zeros_like(mask)
    line[26, 22:72] = True  # 1 px wide, 50 long, touching the blob
    speck = np.zeros_like(mask)
    speck[50:52, 80:82] = True
    full = mask | line | speck
    image[full] = (220, 30, 30)
    return image, full, line


def test_default_config_keeps_attached_line_and_removes_speck():
    image, full, line = _line_blob_speck()
    prob, mask = postprocess(full.astype(np.float32), image, PostprocessConfig())
    assert prob.dtype == np.float32 and mask.dtype == bool and mask.shape == full.shape
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert mask[line].all(), "the 1-px line attached to the blob must survive"
    assert not mask[50:52, 80:82].any(), "the isolated 2x2 speck must go"
    assert mask[20:32, 10:22].all()


def test_plain_opening_would_erase_the_line():
    image, full, line = _line_blob_speck()
    _, mask = postprocess(full.astype(np.float32), image, PostprocessConfig(opening="plain"))
    assert not mask[26, 24:].any(), "plain opening erases the line (all but its root next to the blob)"
    assert mask[20:32, 10:22].sum() > 100


def test_without_guided_filter_prob_is_the_input_and_threshold_is_inclusive():
    soft = np.zeros((8, 8), np.float32)
    soft[2:6, 2:6] = 0.5  # exactly the threshold: foreground
    cfg = PostprocessConfig(guided=False, hole_area=0, island_area=0, opening="none", close_size=0)
    prob, mask = postprocess(soft, np.zeros((8, 8, 3), np.uint8), cfg)
    np.testing.assert_array_equal(prob, soft)
    assert prob is not soft
    np.testing.assert_array_equal(mask, soft >= 0.5)


def test_exact_config_improves_a_blurred_map():
    image, truth = _scene()
    soft = np.clip(cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 2.0) * 1.5, 0, 1).astype(np.float32)

    def iou(a: np.ndarray) -> float:
        return float((a & truth).sum() / (a | truth).sum())

    for subsample in (1, 2, 4):
        _, mask = postprocess(soft, image, PostprocessConfig(subsample=subsample))
        assert iou(mask) > iou(soft >= 0.5)


def test_postprocess_bad_inputs():
    image = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(TypeError, match=r"soft map must be \(H, W\) float32"):
        postprocess(np.zeros((4, 5), np.uint8), image, PostprocessConfig())
    with pytest.raises(ValueError, match=r"soft map is \(5, 4\) but the image is \(4, 5\)"):
        postprocess(np.zeros((5, 4), np.float32), image, PostprocessConfig())
    with pytest.raises(TypeError, match=r"image must be \(H, W, 3\) uint8 RGB"):
        postprocess(np.zeros((4, 5), np.float32), image[..., 0], PostprocessConfig())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radius": 0}, r"radius must be an int >= 1, got radius=0"),
        ({"eps": -1.0}, r"eps must be a finite float > 0, got eps=-1.0"),
        ({"subsample": 0}, r"subsample must be an int >= 1, got subsample=0"),
        ({"threshold": 1.0}, r"threshold must be a float in \(0, 1\), got threshold=1.0"),
        ({"close_size": 4}, r"close_size must be an int in 0..3, got close_size=4"),
        ({"hole_area": -1}, r"hole_area must be an int >= 0, got hole_area=-1"),
        ({"island_area": 1.5}, r"island_area must be an int >= 0, got island_area=1.5"),
        ({"opening": "tophat"}, r"opening must be one of \('reconstruction', 'plain', 'none'\), got opening='tophat'"),
        ({"opening_size": 0}, r"opening_size must be an int in 1..3, got opening_size=0"),
        ({"guided": 1}, r"guided must be a bool, got guided=1"),
        ({"crf_iters": 0}, r"crf_iters must be an int >= 1, got crf_iters=0"),
    ],
)
def test_config_validation_shows_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PostprocessConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PostprocessConfig().radius = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------- dense CRF


def test_dense_crf_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import of a None entry raises ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image = np.zeros((4, 4, 3), np.uint8)
    prob = np.zeros((4, 4), np.float32)
    hint = r"dense CRF needs the 'crf' extra: pip install 'finedetail\[crf\]' \(pydensecrf2\)"
    with pytest.raises(ImportError, match=hint):
        dense_crf(image, prob)
    with pytest.raises(ImportError, match=hint):
        postprocess(prob, image, PostprocessConfig(crf=True))


def test_dense_crf_real():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install 'finedetail[crf]')")
    image, truth = _scene(48, 64)
    soft = np.clip(cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 2.0), 0.02, 0.98).astype(np.float32)
    out = dense_crf(image, soft, iters=3)
    assert out.shape == truth.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert ((out >= 0.5) == truth).mean() > 0.9


def test_empty_images_pass_through():
    image = np.zeros((0, 5, 3), np.uint8)
    soft = np.zeros((0, 5), np.float32)
    assert guided_filter(image, soft, radius=2, eps=1e-3).shape == (0, 5)
    prob, mask = postprocess(soft, image)
    assert prob.shape == mask.shape == (0, 5)
