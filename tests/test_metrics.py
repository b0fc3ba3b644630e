"""Metrics on tiny literal masks: answers counted by hand (counts in the comments), or golden values from the
reference implementations (provenance in the "reference goldens" section)."""

from __future__ import annotations

import numpy as np
import pytest

from finedetail.metrics import (
    boundary_f_tol,
    boundary_iou,
    boundary_region,
    cldice,
    cldice_scores,
    davis_f,
    iou,
    mba,
    mba_radii,
    pixel_counts,
    pixel_f1,
    pixel_precision,
    pixel_recall,
    thin_recall,
    tolerance_f,
    topology_precision,
    topology_sensitivity,
)


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
def test_boundary_f_tol(pred, gt, tol, expected):
    assert boundary_f_tol(pred, gt, tol=tol) == pytest.approx(expected)


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


ALL_PAIR_METRICS = [iou, pixel_precision, pixel_recall, pixel_f1, boundary_iou, boundary_f_tol, davis_f, mba,
                    thin_recall, tolerance_f, topology_precision, topology_sensitivity, cldice, cldice_scores]


@pytest.mark.parametrize("fn", ALL_PAIR_METRICS)
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
        boundary_f_tol(a, a, tol=-1)
    with pytest.raises(ValueError, match="tol"):
        tolerance_f(a, a, tol=-1)
    with pytest.raises(ValueError, match="bound_th"):
        davis_f(a, a, bound_th=1.5)
    with pytest.raises(ValueError, match="bound_th"):
        davis_f(a, a, bound_th=0)
    with pytest.raises(ValueError, match="steps"):
        mba_radii((10, 10), steps=0)
    with pytest.raises(ValueError, match="dilation_ratio"):
        boundary_iou(a, a, dilation_ratio=0)


@pytest.mark.parametrize("fn", [iou, pixel_f1, boundary_iou, boundary_f_tol, davis_f, mba, tolerance_f, cldice])
def test_perfect_and_symmetric_on_random_masks(fn):
    rng = np.random.default_rng(0)
    a = rng.random((37, 29)) < 0.4
    b = rng.random((37, 29)) < 0.4
    assert fn(a, a) == 1.0
    score = fn(a, b)
    assert 0.0 <= score < 1.0
    if fn is not mba:  # mba's band comes from gt only
        assert fn(b, a) == pytest.approx(score)


# ------------------------------------------------------------------------------------------------ reference goldens
#
# Golden values below were produced by running each reference's own code (checked out at the commit named, run in
# a scratch folder outside this repository; no reference code is part of finedetail) on exactly the inputs built
# here, with numpy 2.4.6, opencv-python 5.0.0, scikit-image 0.26.0, and printed with repr(). They are compared
# with ``==``: the implementations must agree to the last bit, not approximately.
#
# * mBA: hkchengrex/CascadePSP @ 481847c8f20d11e036c2b29d0be290aa8fa26071, util/compute_boundary_acc.py,
#   ``compute_boundary_acc(gt, pred, pred)[0]`` (its eval_post.py passes bool masks; the function casts to uint8).
#   Radii: the ``curr_radius`` values that function passes to ``get_disk_kernel`` for a gt of shape (h, w).
# * DAVIS F: davisvideochallenge/davis2017-evaluation @ ac7c43fca936f9722837b7fbd337d284ba37004b,
#   davis2017/metrics.py, ``f_measure(pred, gt)`` (bound_th=0.008) or ``f_measure(pred, gt, bound_th=3)``.
# * clDice: jocpae/clDice @ 47d31a6cc4a8101b1ffe8052994821961e57af9f, cldice_metric/cldice.py,
#   ``clDice(pred, gt)``; Tprec = ``cl_score(gt, skeletonize(pred))`` and Tsens = ``cl_score(pred, skeletonize(gt))``
#   (the reference's own ``tprec`` variable is the paper's Tsens; the names here follow the paper). Its module
#   imports ``skeletonize_3d``, gone from scikit-image 0.26; the scratch copy aliased it to ``skeletonize`` (the
#   2-D path, the only one used, calls ``skeletonize``).
# * Boundary IoU: bowenc0221/boundary-iou-api @ 37d25586a677b043ed585f10e5c42d4e80176ea9,
#   boundary_iou/utils/boundary_utils.py, ``mask_to_boundary(m.astype(np.uint8), 0.02)`` for pred and gt (pixel
#   counts recorded), then ``|pb & gb| / |pb | gb|``, the IoU its COCO/LVIS/Cityscapes evaluators take of those maps.


def disk(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def curve(h: int, w: int, y0: int, k: int, half: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
    """Integer parabola ``y = y0 + x*x // k``, ``half`` px either side, columns x0 .. x1-1 (integer maths only)."""
    y, x = np.ogrid[:h, :w]
    on = np.abs(y - (y0 + (x * x) // k)) <= half
    return on & (x >= x0) & (x < (w if x1 is None else x1))


GT_6X7 = m("0000000 0011100 0111110 0111111 0011100 0000100")
PRED_6X7 = m("0000000 0001100 0111100 1111111 0011000 0001100")

MBA_CASES = {  # id -> () -> (pred, gt)
    "cols_5x5": lambda: (cols(5, 5, 0, 2), cols(5, 5, 0, 1)),
    "square_shift": lambda: (SQUARE, SQUARE_R),
    "literal_6x7": lambda: (PRED_6X7, GT_6X7),
    "pred_empty": lambda: (np.zeros((5, 5), bool), SQUARE),
    # h + w = 1100: radii [1, 1, 2, 2, 3], so the 5x5 and 7x7 ellipses are exercised
    "disk_curve_600x500": lambda: (
        disk(600, 500, 303, 248, 152) | curve(600, 500, 101, 2000, 0, 0, 400),
        disk(600, 500, 300, 250, 150) | curve(600, 500, 100, 2000, 1),
    ),
    # h + w = 3800: the reference's radii are [1, 3, 5, 7, 10]; (R - 1) * i / 5 would give 8 for i = 3
    "disks_2000x1800": lambda: (disk(2000, 1800, 1002, 901, 607), disk(2000, 1800, 1000, 900, 600)),
}
MBA_GOLDEN = {
    'cols_5x5': 0.5,
    'disk_curve_600x500': 0.6571317709914857,
    'disks_2000x1800': 0.5401420183411222,
    'literal_6x7': 0.8076923076923077,
    'pred_empty': 0.6,
    'square_shift': 0.6875,
}

MBA_RADII_GOLDEN = {
    (64, 64): [1, 1, 1, 1, 1],  # h + w = 128
    (1024, 768): [1, 1, 2, 3, 4],  # h + w = 1792
    (3000, 3000): [1, 4, 8, 12, 16],  # h + w = 6000
    (1900, 1900): [1, 3, 5, 7, 10],  # h + w = 3800
    (1000, 2800): [1, 3, 5, 7, 10],  # h + w = 3800
    (3650, 3650): [1, 5, 10, 14, 19],  # h + w = 7300
    (3000, 4300): [1, 5, 10, 14, 19],  # h + w = 7300
    (6400, 6400): [1, 9, 17, 25, 34],  # h + w = 12800
    (4800, 8000): [1, 9, 17, 25, 34],  # h + w = 12800
    (7150, 7150): [1, 10, 19, 28, 38],  # h + w = 14300
}

DAVIS_CASES = {  # id -> () -> (pred, gt, bound_th)
    "square_shift": lambda: (SQUARE, SQUARE_R, 0.008),
    "same": lambda: (SQUARE, SQUARE, 0.008),
    "cols_touch_border": lambda: (cols(4, 6, 0, 3), cols(4, 6, 0, 2), 0.008),
    "cols_two_apart": lambda: (cols(4, 6, 0, 4), cols(4, 6, 0, 2), 0.008),
    "step": lambda: (m("111000 111000 111110 111110"), cols(4, 6, 0, 2), 0.008),
    "right_bottom_border": lambda: (m("000 011 011"), m("000 001 011"), 0.008),
    "literal_6x7": lambda: (PRED_6X7, GT_6X7, 0.008),
    "square_diagonal_shift": lambda: (np.pad(SQUARE, ((1, 0), (1, 0))), np.pad(SQUARE, ((0, 1), (0, 1))), 0.008),
    "both_empty": lambda: (np.zeros((3, 3), bool), np.zeros((3, 3), bool), 0.008),
    "pred_empty": lambda: (np.zeros((5, 5), bool), SQUARE, 0.008),
    "gt_empty": lambda: (SQUARE, np.zeros((5, 5), bool), 0.008),
    "full_vs_empty": lambda: (np.ones((3, 3), bool), np.zeros((3, 3), bool), 0.008),
    # diagonal 200 -> r = ceil(1.6) = 2
    "disk_curve_120x160": lambda: (
        disk(120, 160, 61, 79, 31) | curve(120, 160, 11, 400, 0, 0, 120),
        disk(120, 160, 60, 80, 30) | curve(120, 160, 10, 400, 1),
        0.008,
    ),
    "disk_curve_120x160_3px": lambda: (
        disk(120, 160, 61, 79, 31) | curve(120, 160, 11, 400, 0, 0, 120),
        disk(120, 160, 60, 80, 30) | curve(120, 160, 10, 400, 1),
        3,
    ),
}
DAVIS_GOLDEN = {
    'both_empty': 1.0,
    'cols_touch_border': 1.0,
    'cols_two_apart': 0.0,
    'disk_curve_120x160': 0.8591116105755013,
    'disk_curve_120x160_3px': 0.895986895986896,
    'full_vs_empty': 1.0,
    'gt_empty': 0.0,
    'literal_6x7': 1.0,
    'pred_empty': 0.0,
    'right_bottom_border': 1.0,
    'same': 1.0,
    'square_diagonal_shift': 0.9166666666666666,
    'square_shift': 1.0,
    'step': 0.6,
}

CLDICE_CASES = {  # id -> () -> (pred, gt)
    "same_line": lambda: (cols(5, 7, 3, 3), cols(5, 7, 3, 3)),
    "bar_vs_edge_line": lambda: (cols(5, 7, 2, 4), cols(5, 7, 4, 4)),
    "thick_vs_thin": lambda: (cols(5, 7, 2, 4), cols(5, 7, 3, 3)),
    "literal_6x7": lambda: (PRED_6X7, GT_6X7),
    "broken_line": lambda: (m("0000000 1110111 0000000"), m("0000000 1111111 0000000")),
    "vessels_40x48": lambda: (
        curve(40, 48, 3, 60, 1, 0, 30) | curve(40, 48, 20, 90, 0) | disk(40, 48, 30, 10, 4),
        curve(40, 48, 3, 60, 1) | curve(40, 48, 21, 90, 1, 5, 48) | disk(40, 48, 29, 11, 5),
    ),
}
CLDICE_GOLDEN = {  # id -> (Tprec, Tsens, clDice)
    'bar_vs_edge_line': (0.0, 1.0, 0.0),
    'broken_line': (1.0, 0.8571428571428571, 0.923076923076923),
    'literal_6x7': (1.0, 1.0, 1.0),
    'same_line': (1.0, 1.0, 1.0),
    'thick_vs_thin': (1.0, 1.0, 1.0),
    'vessels_40x48': (0.9324324324324325, 0.37, 0.5297779622328284),
}


BIOU_CASES = {  # id -> () -> (pred, gt)
    "square_shift": lambda: (SQUARE, SQUARE_R),
    "literal_6x7": lambda: (PRED_6X7, GT_6X7),
    "disk_curve_120x160": lambda: DAVIS_CASES["disk_curve_120x160"]()[:2],  # d = round(0.02 * 200) = 4
    "disk_curve_600x500": MBA_CASES["disk_curve_600x500"],  # d = round(0.02 * 781.02) = 16
}
BIOU_GOLDEN = {  # id -> (|pred boundary|, |gt boundary|, Boundary IoU)
    'disk_curve_120x160': (1036, 1363, 0.5222081218274112),
    'disk_curve_600x500': (18772, 19616, 0.7383507675587556),
    'literal_6x7': (17, 16, 0.65),
    'square_shift': (8, 8, 0.3333333333333333),
}


@pytest.mark.parametrize("case", sorted(BIOU_CASES))
def test_boundary_iou_matches_boundary_iou_api(case):
    pred, gt = BIOU_CASES[case]()
    d = max(1, round(0.02 * np.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2)))
    n_pred, n_gt, expected = BIOU_GOLDEN[case]
    assert np.count_nonzero(boundary_region(pred, width=d)) == n_pred
    assert np.count_nonzero(boundary_region(gt, width=d)) == n_gt
    assert boundary_iou(pred, gt) == expected


@pytest.mark.parametrize("case", sorted(MBA_CASES))
def test_mba_matches_cascadepsp(case):
    pred, gt = MBA_CASES[case]()
    assert mba(pred, gt) == MBA_GOLDEN[case]


@pytest.mark.parametrize("hw", sorted(MBA_RADII_GOLDEN), ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_mba_radii_match_cascadepsp(hw):
    assert mba_radii(hw) == MBA_RADII_GOLDEN[hw]


@pytest.mark.parametrize("case", sorted(DAVIS_CASES))
def test_davis_f_matches_davis2017(case):
    pred, gt, bound_th = DAVIS_CASES[case]()
    assert davis_f(pred, gt, bound_th=bound_th) == DAVIS_GOLDEN[case]


@pytest.mark.parametrize("case", sorted(CLDICE_CASES))
def test_cldice_matches_reference(case):
    pred, gt = CLDICE_CASES[case]()
    assert cldice_scores(pred, gt) == CLDICE_GOLDEN[case]
    assert (topology_precision(pred, gt), topology_sensitivity(pred, gt), cldice(pred, gt)) == CLDICE_GOLDEN[case]


@pytest.mark.parametrize("case", sorted(CLDICE_CASES))
def test_cldice_matches_reference(case):
    pred, gt = CLDICE_CASES[case]()
    assert cldice_scores(pred, gt) == CLDICE_GOLDEN[case]
    assert (topology_precision(pred, gt), topology_sensitivity(pred, gt), cldice(pred, gt)) == CLDICE_GOLDEN[case]


def test_mba_radii_order_of_operations_matters():
    # h + w = 3800, i = 3: CascadePSP divides first, (R - 1) / 5 * 3 = 6.999999999999999 in float64 -> r = 1 + 6;
    # multiplying first, (R - 1) * 3 / 5 = 35.0 / 5 = 7.0 -> r = 8
    assert mba_radii((1900, 1900))[3] == 7
    assert mba_radii((1900, 1900), steps=5) == mba_radii((1000, 2800))


# ------------------------------------------------------------------------------------------------ empty conventions
# where the reference returns NaN (0 / 0), ours returns the module's convention


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        # (Tprec, Tsens, clDice); the reference's clDice is NaN in all three
        (np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1.0, 1.0, 1.0)),
        (np.zeros((5, 7), bool), cols(5, 7, 3, 3), (0.0, 0.0, 0.0)),
        (cols(5, 7, 3, 3), np.zeros((5, 7), bool), (0.0, 0.0, 0.0)),
        # disjoint lines: S(pred) misses gt and S(gt) misses pred -> Tprec = Tsens = 0, clDice 0 / 0
        (cols(5, 7, 3, 3), cols(5, 7, 5, 5), (0.0, 0.0, 0.0)),
    ],
)
def test_cldice_empty_conventions(pred, gt, expected):
    assert cldice_scores(pred, gt) == expected


def test_mba_empty_band_convention():
    # gt all False or all True has no boundary band: the reference divides 0 by 0 at every radius
    z, o = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert (mba(z, z), mba(o, o), mba(o, z), mba(z, o)) == (1.0, 1.0, 0.0, 0.0)


# ------------------------------------------------------------------------------------------------ pixel scores

A8 = m("1100 0110")
B8 = m("1000 0111")


@pytest.mark.parametrize(
    ("pred", "gt", "valid", "counts", "p", "r", "f", "j"),
    [
        # tp (0,0) (1,1) (1,2); fp (0,1); fn (1,3)
        (A8, B8, None, (3, 1, 1), 3 / 4, 3 / 4, 3 / 4, 3 / 5),
        # inside the left two columns: pred (0,0) (0,1) (1,1); gt (0,0) (1,1) -> tp 2, fp 1, fn 0
        (A8, B8, m("1100 1100"), (2, 1, 0), 2 / 3, 1.0, 4 / 5, 2 / 3),
        (m("1110"), m("0100"), None, (1, 2, 0), 1 / 3, 1.0, 1 / 2, 1 / 3),
        (m("0000"), m("0000"), None, (0, 0, 0), 1.0, 1.0, 1.0, 1.0),  # both empty
        (m("0000"), m("0100"), None, (0, 0, 1), 0.0, 0.0, 0.0, 0.0),  # nothing found
        (m("0010"), m("0000"), None, (0, 1, 0), 0.0, 0.0, 0.0, 0.0),  # nothing to find
        (m("0010"), m("0100"), m("1001"), (0, 0, 0), 1.0, 1.0, 1.0, 1.0),  # both empty inside valid
    ],
)
def test_pixel_scores(pred, gt, valid, counts, p, r, f, j):
    assert pixel_counts(pred, gt, valid=valid) == counts
    got = [fn(pred, gt, valid=valid) for fn in (pixel_precision, pixel_recall, pixel_f1, iou)]
    assert got == pytest.approx([p, r, f, j])


def test_valid_region_errors():
    a = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="valid must have"):
        pixel_f1(a, a, valid=np.ones((3, 4), bool))
    with pytest.raises(TypeError, match="valid must be an"):
        iou(a, a, valid=np.ones((3, 3), np.uint8))


def test_thin_recall_valid():
    assert thin_recall(m("1011"), m("1110"), valid=m("1100")) == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------------------------ tolerance F

BAR_3X8 = np.pad(np.ones((3, 8), bool), ((1, 1), (0, 0)))  # rows 1-3 of a 5x8 image
LINE_5X8 = np.pad(np.ones((1, 8), bool), ((2, 2), (0, 0)))  # row 2
# row 2 of an 8x8 image plus a 1-px spur down column 4, rows 3-6
SPUR = np.zeros((8, 8), bool)
SPUR[2, :] = True
SPUR[3:7, 4] = True
LINE_8X8 = np.zeros((8, 8), bool)
LINE_8X8[2, :] = True


@pytest.mark.parametrize(
    ("pred", "gt", "tol", "valid", "expected"),
    [
        (LINE_5X8, LINE_5X8, 0, None, 1.0),
        (np.roll(LINE_5X8, 1, axis=0), LINE_5X8, 1, None, 1.0),  # one row apart
        (np.roll(LINE_5X8, 1, axis=0), LINE_5X8, 0.5, None, 0.0),
        # skeletonize (Zhang-Suen) thins the bar to row 2, cols 0-5, plus (1, 6): 7 px; gt skeleton = row 2, 8 px.
        # tol 0: P = 6/7, R = 6/8 -> F = 0.8
        (BAR_3X8, LINE_5X8, 0, None, 0.8),
        # tol 1: (1, 6) is 1 from (2, 6) -> P = 1; (2, 7) is sqrt(2) from (1, 6) -> R = 7/8 -> F = 14/15
        (BAR_3X8, LINE_5X8, 1, None, 14 / 15),
        (BAR_3X8, LINE_5X8, 1.5, None, 1.0),
        # spur: 12 skeleton px, the line's 8 and (3, 4) are within 1 -> P = 9/12, R = 1 -> F = 6/7
        (SPUR, LINE_8X8, 1, None, 6 / 7),
        (SPUR, LINE_8X8, 1, cols(8, 8, 0, 3), 1.0),  # the spur lies outside the valid columns
        (LINE_8X8, LINE_8X8, 2, np.zeros((8, 8), bool), 1.0),  # nothing inside valid
        (np.zeros((5, 8), bool), np.zeros((5, 8), bool), 2, None, 1.0),
        (np.zeros((5, 8), bool), LINE_5X8, 2, None, 0.0),
        (LINE_5X8, np.zeros((5, 8), bool), 2, None, 0.0),
    ],
)
def test_tolerance_f(pred, gt, tol, valid, expected):
    assert tolerance_f(pred, gt, tol=tol, valid=valid) == pytest.approx(expected)
