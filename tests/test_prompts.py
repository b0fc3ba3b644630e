"""Prompts from masks: components, tight boxes, boundary points, SAM mask logits, on tiny literal masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from finedetail.prompts import boundary_points, components, mask_to_sam_logits, prompts_from_mask, tight_box
from finedetail.types import ComponentPrompt


def m(rows: str) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows.split()], bool)


THREE = m(
    """
    0000011
    0110000
    0110001
    0001001
    1000000
    """
)
# components (8-connected): {(0,5),(0,6)}; {(1,1),(1,2),(2,1),(2,2),(3,3)} (diagonal link); {(2,6),(3,6)}; {(4,0)}


def _pixels(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel centres -> (rows, cols), asserting they are centres."""
    np.testing.assert_array_equal(points % 1, 0.5)
    return (points[:, 1] - 0.5).astype(int), (points[:, 0] - 0.5).astype(int)


def test_components_sorted_and_8_connected():
    comps, dropped = components(THREE)
    assert dropped == 0
    assert [int(c.sum()) for c in comps] == [2, 5, 2, 1]
    assert [tuple(tight_box(c)) for c in comps] == [(5, 0, 7, 1), (1, 1, 4, 4), (6, 2, 7, 4), (0, 4, 1, 5)]
    np.testing.assert_array_equal(np.sum(comps, axis=0), THREE)
    assert all(c.dtype == bool and c.shape == THREE.shape for c in comps)


@pytest.mark.parametrize(("min_area", "kept", "dropped"), [(0, 4, 0), (1, 4, 0), (2, 3, 1), (3, 1, 3), (6, 0, 4)])
def test_components_min_area_edge(min_area, kept, dropped):
    # area < min_area is dropped; area == min_area is kept
    comps, n = components(THREE, min_area=min_area)
    assert (len(comps), n) == (kept, dropped)


def test_components_empty():
    assert components(np.zeros((3, 3), bool)) == ([], 0)


@pytest.mark.parametrize(
    ("mask", "box"),
    [
        (m("1"), (0, 0, 1, 1)),
        (m("000 010 000"), (1, 1, 2, 2)),
        (m("0000 0100 0001"), (1, 1, 4, 3)),
        (np.ones((2, 5), bool), (0, 0, 5, 2)),
    ],
)
def test_tight_box(mask, box):
    out = tight_box(mask)
    assert out.dtype == np.float64 and out.shape == (4,)
    assert tuple(out) == box


def _check_points(mask, points, labels, *, k, exclude=None):
    assert points.dtype == np.float64 and points.shape == (len(labels), 2)
    assert labels.dtype == np.int32
    n_pos = int(labels.sum())
    np.testing.assert_array_equal(labels, [1] * n_pos + [0] * (len(labels) - n_pos))  # positives first
    assert 1 <= n_pos <= k and len(labels) - n_pos <= k
    rows, cols = _pixels(points)
    h, w = mask.shape
    assert np.all((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w))
    assert mask[rows[:n_pos], cols[:n_pos]].all(), "positives must be inside the component"
    outside_ok = ~mask if exclude is None else ~(mask | exclude)
    assert outside_ok[rows[n_pos:], cols[n_pos:]].all(), "negatives must be outside every component"
    assert len({(r, c) for r, c in zip(rows, cols)}) == len(rows), "no duplicate points"


SQUARE = np.zeros((16, 16), bool)
SQUARE[4:12, 4:12] = True
LINE = np.zeros((9, 20), bool)
LINE[4, 2:18] = True
DIAG = np.eye(12, dtype=bool)
DOT = m("00000 00000 00100 00000 00000")
FULL = np.ones((5, 5), bool)


@pytest.mark.parametrize(
    "mask", [SQUARE, LINE, DIAG, DOT, FULL, THREE], ids=["square", "line", "diag", "dot", "full", "three"]
)
@pytest.mark.parametrize("k", [1, 4, 8])
def test_boundary_points_sides(mask, k):
    points, labels = boundary_points(mask, k=k)
    _check_points(mask, points, labels, k=k)


def test_boundary_points_offset_from_boundary():
    points, labels = boundary_points(SQUARE, k=8, offset=2.0)
    rows, cols = _pixels(points)
    assert labels.sum() == 8 and len(labels) == 16
    # square covers 4..11: 2 px inside means row or col 5 or 10 (inside distance 2), 2 px outside means 2 or 13
    pos = list(zip(rows[:8], cols[:8]))
    neg = list(zip(rows[8:], cols[8:]))
    assert all(min(r - 4, 11 - r, c - 4, 11 - c) == 1 for r, c in pos)
    assert all(max(4 - r, r - 11, 4 - c, c - 11) == 2 for r, c in neg)
    # spread: every side of the square gets points of both signs
    for side in (lambda r, c: r < 6, lambda r, c: r > 9, lambda r, c: c < 6, lambda r, c: c > 9):
        assert any(side(r, c) for r, c in pos) and any(side(r, c) for r, c in neg)


def test_boundary_points_line_gets_both_sides():
    points, labels = boundary_points(LINE, k=4, offset=2.0)
    rows, cols = _pixels(points)
    assert set(rows[labels == 1]) == {4}  # too thin for the offset: its ridge (the line itself)
    assert set(rows[labels == 0]) == {2, 6}  # 2 px above and below


def test_boundary_points_full_image_has_no_negatives():
    points, labels = boundary_points(FULL, k=4)
    assert labels.tolist() == [1, 1, 1, 1]
    # the image border counts as boundary: 2 px in is the ring around the centre
    rows, cols = _pixels(points)
    assert {(r, c) for r, c in zip(rows, cols)} == {(1, 2), (2, 1), (2, 3), (3, 2)}


def test_boundary_points_exclude_and_determinism():
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True
    b = np.zeros((10, 10), bool)
    b[6:10, 0:10] = True  # a neighbour 2 px below
    pts1, lab1 = boundary_points(a, k=8, exclude=a | b)
    pts2, lab2 = boundary_points(a, k=8, exclude=a | b)
    np.testing.assert_array_equal(pts1, pts2)
    np.testing.assert_array_equal(lab1, lab2)
    _check_points(a, pts1, lab1, k=8, exclude=b)


def test_boundary_points_k0_and_errors():
    pts, lab = boundary_points(SQUARE, k=0)
    assert pts.shape == (0, 2) and lab.shape == (0,)
    with pytest.raises(ValueError, match="empty"):
        boundary_points(np.zeros((3, 3), bool))
    with pytest.raises(TypeError, match="bool"):
        boundary_points(SQUARE.astype(np.uint8))
    with pytest.raises(ValueError, match="k must be"):
        boundary_points(SQUARE, k=-1)
    with pytest.raises(ValueError, match="offset"):
        boundary_points(SQUARE, offset=0)
    with pytest.raises(ValueError, match="shape"):
        boundary_points(SQUARE, exclude=np.zeros((3, 3), bool))


@settings(max_examples=40, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))),
    st.integers(1, 6),
    st.sampled_from([1.0, 2.0, 3.5]),
)
def test_boundary_points_property(mask, k, offset):
    for comp in components(mask)[0]:
        points, labels = boundary_points(comp, k=k, offset=offset, exclude=mask)
        _check_points(comp, points, labels, k=k, exclude=mask)


@pytest.mark.parametrize(("h", "w"), [(100, 200), (200, 100), (37, 53), (1024, 1024), (3000, 700)])
def test_sam_logits_frame_and_sign(h, w):
    prob = np.zeros((h, w), np.float32)
    prob[: h // 2] = 1.0  # top half foreground
    logits = mask_to_sam_logits(prob)
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    s = 256 / max(h, w)  # low-res pixels per image pixel
    nh, nw, edge = h * s, w * s, (h // 2) * s
    margin = int(np.ceil(s)) + 1  # bilinear upsampling ramps over one image pixel
    assert np.all(logits[: int(edge) - margin, : int(nw) - 1] > 9.999)  # fg: +scale/2 (area weights may round)
    assert np.all(logits[int(edge) + margin : int(nh) - 1, : int(nw) - 1] < -9.999)  # bg
    assert np.all(logits[int(np.ceil(nh)) :] <= -10.0)  # padding rows
    assert np.all(logits[:, int(np.ceil(nw)) :] <= -10.0)  # padding columns
    assert logits.min() >= -10.0 and logits.max() <= 10.0


def test_sam_logits_values_and_inputs():
    np.testing.assert_array_equal(mask_to_sam_logits(np.full((8, 8), 0.5, np.float32)), 0.0)
    np.testing.assert_array_equal(mask_to_sam_logits(np.ones((4, 4), bool), scale=8.0), 4.0)
    half = mask_to_sam_logits(np.full((4, 2), 0.75, np.float32), low_res=4, long_side=8)
    # 4x2 -> 8x4, padded to 8x8, 4x4 low-res: left two columns 0.75 -> 5, right two padding -> -10
    np.testing.assert_array_equal(half, np.array([[5.0, 5.0, -10.0, -10.0]] * 4, np.float32))
    with pytest.raises(TypeError, match="from_u8"):
        mask_to_sam_logits(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="low_res"):
        mask_to_sam_logits(np.zeros((4, 4), np.float32), low_res=2048)


def test_prompts_from_mask():
    prompts, dropped = prompts_from_mask(THREE, k=2, min_area=2)
    assert dropped == 1  # the lone pixel at (4, 0)
    assert [p.area for p in prompts] == [2, 5, 2]
    assert all(isinstance(p, ComponentPrompt) for p in prompts)
    for p in prompts:
        np.testing.assert_array_equal(p.box, tight_box(p.mask))
        _check_points(p.mask, p.points, p.labels, k=2, exclude=THREE)
        assert p.logits.shape == (256, 256)
    # the biggest component's logits see it but not its neighbours (7 px wide image -> 36.6 low-res px per px;
    # bilinear: p > 0.5 from image coordinate 1.0 to 3.0 -> low-res 37..110)
    low = prompts[1].logits
    assert low[45:100, 45:100].min() > 0
    assert low[:30, 200:].max() < 0  # component 0 (row 0, cols 5..6) is not in component 1's prompt


def test_prompts_from_prob_threshold_and_soft_ring():
    prob = np.zeros((6, 6), np.float32)
    prob[1:4, 1:4] = 0.8
    prob[2, 4] = 0.3  # soft edge: below threshold, kept in the logits ring
    prob[5, 5] = 0.6  # a separate speck
    prompts, dropped = prompts_from_mask(prob, min_area=2, k=4)
    assert dropped == 1 and len(prompts) == 1
    assert prompts[0].area == 9
    assert tuple(prompts[0].box) == (1, 1, 4, 4)
    prompts, _ = prompts_from_mask(prob, min_area=1, threshold=0.25, logits=False)
    assert [p.area for p in prompts] == [10, 1] and prompts[0].logits is None


def test_prompts_from_mask_errors():
    with pytest.raises(TypeError, match="from_u8"):
        prompts_from_mask(np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        prompts_from_mask(np.zeros((3, 3, 1), bool))
    assert prompts_from_mask(np.zeros((3, 3), bool)) == ([], 0)


def test_mask_to_sam_logits_extreme_aspect_keeps_one_row():
    # (1, 3000) -> SAM's frame (1, 1024): the short side rounds to 0.34 px, floored at 1 (it crashed in cv2.resize)
    logits = mask_to_sam_logits(np.ones((1, 3000), np.float32))
    assert logits.shape == (256, 256) and logits[0, 0] < 0  # one row of 1024 fills a quarter of a 4-row cell
