"""COCO RLE: our encoder/decoder against pycocotools, both ways, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from finedetail.rle import (
    StripRle,
    counts_to_string,
    rle_area,
    rle_counts,
    rle_decode,
    rle_encode,
    string_to_counts,
)

coco = pytest.importorskip("pycocotools.mask", reason="pycocotools is in the 'test' extra")

# pycocotools 2.0.x + numpy 2 warn about __array__(copy=...) inside their decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _theirs_encode(mask: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))


def _theirs_decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    rle = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco.decode(rle).astype(bool)


@pytest.mark.parametrize(
    ("mask", "counts"),
    [
        (np.zeros((1, 1), bool), [1]),
        (np.ones((1, 1), bool), [0, 1]),
        # column-major: column 0 is (0, 1), column 1 is (1, 1)
        (np.array([[0, 1], [0, 1]], bool), [2, 2]),
        (np.array([[1, 0], [0, 1]], bool), [0, 1, 2, 1]),
        (np.array([[0, 0, 1]], bool), [2, 1]),
        (np.zeros((0, 3), bool), [0]),
    ],
)
def test_counts_literal(mask, counts):
    assert rle_counts(mask) == counts


@pytest.mark.parametrize(
    ("counts", "string"),
    [
        ([1], "1"),
        ([0, 1], "01"),
        ([15], "?"),  # 48 + 15
        # 16 and 31 set the sign bit 0x10 of their only group, so a 0 group must follow: 48 + (16 | 0x20) = '`'
        ([16], "`0"),
        ([31], "o0"),
        ([5, 3, 5, 3], "5350"),  # only i > 2 is stored as counts[i] - counts[i - 2]: i=3 gives 3 - 3 = 0
        # 1 - 3 = -2: low 5 bits 0b11110 carry the sign, the rest is -1 -> one group, chr(48 + 30) = 'N'
        ([5, 3, 4, 1], "534N"),
        ([0, 1024], "0PP1"),  # 1024 = 0b1_00000_00000 -> groups 0, 0, 1; the first two carry 0x20: 48 + 32 = 'P' 
    ],
)
def test_string_literal(counts, string):
    assert counts_to_string(counts) == string
    assert string_to_counts(string) == counts
    # and pycocotools agrees on the string for the mask these counts describe
    n = sum(counts)
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    mask = flat.reshape(1, n)
    assert _theirs_encode(mask)["counts"].decode() == string


masks = st.tuples(st.integers(1, 23), st.integers(1, 23)).flatmap(
    lambda hw: st.one_of(
        arrays(bool, hw),
        st.just(np.zeros(hw, bool)),
        st.just(np.ones(hw, bool)),
        # long runs exercise multi-group counts and negative deltas
        st.integers(0, hw[0] * hw[1]).map(lambda k, hw=hw: (np.arange(hw[0] * hw[1]) < k).reshape(hw)),
    )
)


@settings(max_examples=50, deadline=None)
@given(masks)
def test_roundtrip_against_pycocotools(mask):
    ours = rle_encode(mask)
    theirs = _theirs_encode(mask)
    assert ours["size"] == list(theirs["size"])
    assert ours["counts"] == theirs["counts"].decode("ascii")
    np.testing.assert_array_equal(_theirs_decode(ours), mask)
    np.testing.assert_array_equal(rle_decode(theirs), mask)
    np.testing.assert_array_equal(rle_decode(ours), mask)
    assert rle_area(ours) == int(mask.sum()) == int(coco.area(theirs))


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (64, 33), (301, 127)])
def test_random_large_masks(hw):
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    # blocky masks give runs of every length, including > 2**10 (3-group counts)
    mask = rng.random(hw) < 0.5
    mask[: hw[0] // 2, : hw[1] // 2] = True
    ours = rle_encode(mask)
    assert ours["counts"] == _theirs_encode(mask)["counts"].decode("ascii")
    np.testing.assert_array_equal(rle_decode(ours), mask)


def test_decode_uncompressed_list():
    # COCO iscrowd-style uncompressed counts; pycocotools converts these with frPyObjects
    mask = np.array([[0, 1, 1], [1, 1, 0]], bool)
    rle = {"size": [2, 3], "counts": [1, 4, 1]}  # column-major: 0 1 | 1 1 | 1 0
    np.testing.assert_array_equal(rle_decode(rle), mask)
    theirs = coco.frPyObjects(rle, 2, 3)
    np.testing.assert_array_equal(coco.decode(theirs).astype(bool), mask)
    assert rle_area(rle) == 4


def test_decode_accepts_bytes_and_output_is_c_contiguous():
    mask = np.eye(4, 7, dtype=bool)
    rle = _theirs_encode(mask)
    assert isinstance(rle["counts"], bytes)
    out = rle_decode(rle)
    assert out.dtype == bool and out.flags.c_contiguous
    np.testing.assert_array_equal(out, mask)


@pytest.mark.parametrize(
    ("rle", "error", "match"),
    [
        ({"size": [2, 2], "counts": [1, 2]}, ValueError, "sum to 3"),
        ({"size": [2, 2], "counts": "0"}, ValueError, "sum to 0"),
        ({"size": [2, 2], "counts": "P"}, ValueError, "truncated"),  # 'P' = 48 + 0x20: a continuation, then nothing
        ({"size": [2, 2], "counts": "~"}, ValueError, "invalid RLE character"),
        ({"counts": "1"}, TypeError, "size"),
        ({"size": [2], "counts": "1"}, ValueError, r"\[h, w\]"),
    ],
)
def test_decode_errors(rle, error, match):
    with pytest.raises(error, match=match):
        rle_decode(rle)


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.uint8), np.zeros((2, 2, 1), bool), [[True]]])
def test_encode_rejects_non_bool(bad):
    with pytest.raises(TypeError, match="bool"):
        rle_encode(bad)


@given(masks, st.lists(st.integers(0, 40), max_size=4))
def test_strip_rle_equals_rle_counts(mask, cuts):
    h = mask.shape[0]
    bounds = sorted({0, h, *(min(c, h) for c in cuts)})
    r = StripRle(mask.shape)
    for a, b in zip(bounds[:-1], bounds[1:]):
        r.add(mask[a:b])
    assert r.counts() == rle_counts(mask)


@pytest.mark.parametrize("mask", [np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(3, 4, dtype=bool),
                                  np.array([[1], [0], [1]], bool), np.array([[0, 1, 0]], bool)])
def test_strip_rle_literal_masks_row_by_row(mask):
    r = StripRle(mask.shape)
    for row in mask:
        r.add(row[None])
    assert r.counts() == rle_counts(mask)


def test_strip_rle_refuses_a_short_or_misfit_mask():
    r = StripRle((3, 2))
    r.add(np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="2 of the mask's 3 rows"):
        r.counts()
    with pytest.raises(ValueError, match="does not continue"):
        r.add(np.zeros((1, 3), bool))
