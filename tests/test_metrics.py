"""Metrics on tiny literal masks whose answers are counted by hand (counts in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from finedetail.metrics import boundary_f, boundary_iou, boundary_region, iou, mba, mba_radii, thin_recall


def m(rows: str) -> np.ndarray:
    """'110 / 011' -> bool array."""
    return np.array([[c == "1" for c in row] for row in rows.split()], bool)


def cols(h: int, w: int, c0: int, c1: int) -> np.ndarray:
    """(h, w) mask with columns c0..c1 (inclusive) set."""
    out = np.zeros((h, w), bool)
    out[:, c0 : c1 + 1] = True
    return out


SQUARE = m("00000 01110 01110 01110 00000")  # 3x3 square, rows 1-3, cols 1-3
SQUARE_R = np.roll(SQUARE, 1, axis=1)  # cols 2-4


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        (m("110 000"), m("100 100"), 1 / 3),  # inter 1, union 3
        (m("111"), m("111"), 1.0),
        (m("100"), m("010"), 0.0),
        (m("000"), m("000"), 1.0),  # both empty
        (m("000"), m("010"), 0.0),
        (SQUARE, SQUARE_R, 6 / 12),
    ],
)
def test_iou(pred, gt, expected):
    assert iou(pred, gt) == pytest.approx(expected)


def test_boundary_region_counts_border_as_contour():
    # full 3x3: the 8 outer pixels are within 1 of the (padded) border; the centre is not
    np.testing.assert_array_equal(boundary_region(np.ones((3, 3), bool), width=1), ~m("000 010 000"))
    np.testing.assert_array_equal(boundary_region(np.ones((3, 3), bool), width=2), np.ones((3, 3), bool))
    np.testing.assert_array_equal(boundary_region(SQUARE, width=1), SQUARE & ~m("00000 00000 00100 00000 00000"))


@pytest.mark.parametrize(
    ("pred", "gt", "ratio", "expected"),
    [
        # 5x5: diag 7.07, ratio 0.02 -> d = max(1, round(0.14)) = 1. Rings of 8 pixels each; they share
        # (1,2), (1,3), (3,2), (3,3) -> 4 / (8 + 8 - 4)
        (SQUARE, SQUARE_R, 0.02, 4 / 12),
        # ratio 0.3 -> d = round(2.12) = 2: the whole 3x3 squares are boundary -> plain IoU 6/12
        (SQUARE, SQUARE_R, 0.3, 6 / 12),
        (SQUARE, SQUARE, 0.02, 1.0),
        (np.zeros((5, 5), bool), np.zeros((5, 5), bool), 0.02, 1.0),
        (np.zeros((5, 5), bool), SQUARE, 0.02, 0.0),
        # full masks: identical border bands
        (np.ones((4, 6), bool), np.ones((4, 6), bool), 0.02, 1.0),
    ],
)
def test_boundary_iou(pred, gt, ratio, expected):
    assert boundary_iou(pred, gt, dilation_ratio=ratio) == pytest.approx(expected)


def test_boundary_iou_ignores_interior_differences():
    # a 1-px hole deep inside a large square changes IoU a little but boundary IoU (d=1) differs only by
    # the hole's own boundary pixel: it is in pred's band (next to a background pixel)
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = gt.copy()
    pred[20, 20] = False
    d = max(1, round(0.02 * np.hypot(40, 40)))
    assert d == 1
    # gt band: 30*4 - 4 = 116 ring pixels; pred band: the same + the 8 neighbours of the hole
    assert boundary_iou(pred, gt) == pytest.approx(116 / (116 + 8))


@pytest.mark.parametrize(
    ("pred", "gt", "tol", "expected"),
    [
        (cols(4, 6, 0, 2), cols(4, 6, 0, 2), 0, 1.0),
        # edges at column 3 (pred) and 2 (gt), 1 px apart; the left image border is not an edge
        (cols(4, 6, 0, 3), cols(4, 6, 0, 2), 1, 1.0),
        (cols(4, 6, 0, 3), cols(4, 6, 0, 2), 0.5, 0.0),
        (cols(4, 6, 0, 4), cols(4, 6, 0, 2), 2, 1.0),
        (cols(4, 6, 0, 4), cols(4, 6, 0, 2), 1, 0.0),
        # pred edges: (0,2) (1,2) (2,3) (2,4) (3,4); gt edges: column 2.
        # P: (0,2) (1,2) (2,3) within 1 -> 3/5.  R: (0,2) (1,2) (2,2) within 1, (3,2) is sqrt(2) away -> 3/4.
        # F = 2 * 0.6 * 0.75 / 1.35 = 2/3
        (m("111000 111000 111110 111110"), cols(4, 6, 0, 2), 1, 2 / 3),
        (np.zeros((3, 3), bool), np.zeros((3, 3), bool), 2, 1.0),
        (np.ones((3, 3), bool), np.zeros((3, 3), bool), 2, 1.0),  # neither has an edge inside the image
        (SQUARE, np.zeros((5, 5), bool), 2, 0.0),
    ],
)
def test_boundary_f(pred, gt, tol, expected):
    assert boundary_f(pred, gt, tol=tol) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((64, 64), [1, 1, 1, 1, 1]),
        ((1024, 768), [1, 1, 2, 3, 4]),  # R = 5.97
        ((3000, 3000), [1, 4, 8, 12, 16]),  # R = 20
    ],
)
def test_mba_radii(hw, expected):
    assert mba_radii(hw) == expected


@pytest.mark.parametrize(
    ("pred", "gt", "radii", "expected"),
    [
        # r=1 (3x3 ellipse = cross): band = dilate(cols 0-2) - erode(col 0) = cols 1-2; col 1 right, col 2 wrong
        (cols(5, 5, 0, 2), cols(5, 5, 0, 1), [1], 0.5),
        # r=2 (5x5 ellipse): erosion is empty, dilation = cols 0-3 -> band 20 px, col 2 wrong -> 0.75
        (cols(5, 5, 0, 2), cols(5, 5, 0, 1), [2], 0.75),
        (cols(5, 5, 0, 2), cols(5, 5, 0, 1), [1, 2], 0.625),
        (cols(5, 5, 0, 1), cols(5, 5, 0, 1), None, 1.0),
        (np.zeros((4, 4), bool), np.zeros((4, 4), bool), None, 1.0),
        (SQUARE, np.zeros((5, 5), bool), None, 0.0),  # empty band: 1.0 only if pred == gt
        (np.ones((4, 4), bool), np.ones((4, 4), bool), [1, 3], 1.0),
    ],
)
def test_mba(pred, gt, radii, expected):
    assert mba(pred, gt, radii=radii) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "skel", "expected"),
    [
        (m("1011"), m("1110"), 2 / 3),
        (m("0000"), m("0000"), 1.0),
        (m("1111"), m("0000"), 1.0),
        (m("0000"), m("0100"), 0.0),
    ],
)
def test_thin_recall(pred, skel, expected):
    assert thin_recall(pred, skel) == pytest.approx(expected)


@pytest.mark.parametrize("fn", [iou, boundary_iou, boundary_f, mba, thin_recall])
def test_errors(fn):
    with pytest.raises(TypeError, match="bool"):
        fn(np.zeros((3, 3), np.uint8), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match=r"same \(H, W\)"):
        fn(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_knob_errors():
    a = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="radii"):
        mba(a, a, radii=[0])
    with pytest.raises(ValueError, match="tol"):
        boundary_f(a, a, tol=-1)
    with pytest.raises(ValueError, match="dilation_ratio"):
        boundary_iou(a, a, dilation_ratio=0)


@pytest.mark.parametrize("fn", [iou, boundary_iou, boundary_f, mba])
def test_perfect_and_symmetric_on_random_masks(fn):
    rng = np.random.default_rng(0)
    a = rng.random((37, 29)) < 0.4
    b = rng.random((37, 29)) < 0.4
    assert fn(a, a) == 1.0
    score = fn(a, b)
    assert 0.0 <= score < 1.0
    if fn is not mba:  # mba's band comes from gt only
        assert fn(b, a) == pytest.approx(score)
