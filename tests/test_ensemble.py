"""Ensemble rules: 3x3 literal maps counted by eye, and the exact soft >= 0.5 <-> decision property."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import finedetail.ensemble as ens_mod
from finedetail.ensemble import RULES, ensemble, majority, majority_or_confident, mean_threshold, union, weighted_mean

A = np.array([[1.0, 0.6, 0.0], [0.2, 0.5, 0.0], [0.95, 0.0, 0.4]], np.float32)
B = np.array([[1.0, 0.0, 0.7], [0.2, 0.5, 0.0], [0.10, 0.0, 0.4]], np.float32)
C = np.array([[0.0, 0.6, 0.0], [0.92, 0.5, 0.0], [0.10, 0.0, 0.4]], np.float32)
MAPS = [A, B, C]
# votes (>= 0.5) per pixel:  A        B        C       count
#                             1 1 0    1 0 1    0 1 0   2 2 1
#                             0 1 0    0 1 0    1 1 0   1 3 0
#                             1 0 0    0 0 0    0 0 0   1 0 0


def fg(soft: np.ndarray) -> np.ndarray:
    return soft >= 0.5


@pytest.mark.parametrize(
    ("rule", "kwargs", "expected"),
    [
        ("union", {}, [[1, 1, 1], [1, 1, 0], [1, 0, 0]]),
        ("majority", {"k": 1}, [[1, 1, 1], [1, 1, 0], [1, 0, 0]]),
        ("majority", {"k": 2}, [[1, 1, 0], [0, 1, 0], [0, 0, 0]]),
        ("majority", {}, [[1, 1, 0], [0, 1, 0], [0, 0, 0]]),  # default k = 3 // 2 + 1 = 2
        ("majority", {"k": 3}, [[0, 0, 0], [0, 1, 0], [0, 0, 0]]),
        # means: .667 .4 .233 / .44 .5 0 / .383 0 .4
        ("mean", {}, [[1, 0, 0], [0, 1, 0], [0, 0, 0]]),
        ("mean", {"tau": 0.4}, [[1, 1, 0], [1, 1, 0], [0, 0, 1]]),
        ("mean", {"tau": 0.3, "weights": [1, 0, 0]}, [[1, 1, 0], [0, 1, 0], [1, 0, 1]]),  # = A >= 0.3
        # 2 votes, or one map >= 0.9: adds (1, 0) (C = 0.92) and (2, 0) (A = 0.95)
        ("majority_or_confident", {}, [[1, 1, 0], [1, 1, 0], [1, 0, 0]]),
        ("majority_or_confident", {"tau_high": 0.96}, [[1, 1, 0], [0, 1, 0], [0, 0, 0]]),
        ("majority_or_confident", {"k": 3}, [[1, 0, 0], [1, 1, 0], [1, 0, 0]]),
    ],
)
def test_rules_on_literal_maps(rule, kwargs, expected):
    soft = ensemble(MAPS, rule=rule, **kwargs)
    assert soft.dtype == np.float32 and soft.shape == (3, 3)
    assert soft.min() >= 0 and soft.max() <= 1
    np.testing.assert_array_equal(fg(soft), np.array(expected, bool))


def test_soft_values():
    np.testing.assert_array_equal(union(MAPS), np.max(MAPS, axis=0))
    np.testing.assert_array_equal(majority(MAPS, k=2), np.sort(MAPS, axis=0)[1])
    np.testing.assert_allclose(weighted_mean(MAPS), np.mean(MAPS, axis=0), atol=1e-7)
    # tau shifts the mean: mean 2/3 at (0, 0) with tau 0.4 -> 2/3 + 0.1
    assert mean_threshold(MAPS, tau=0.4)[0, 0] == pytest.approx(2 / 3 + 0.1)
    # (2, 0): 1 vote, A = 0.95 -> confident term 0.95 - 0.9 + 0.5 = 0.55
    assert majority_or_confident(MAPS, k=2)[2, 0] == pytest.approx(0.55)


@pytest.mark.parametrize(
    "as_input",
    [
        lambda ms: ms,
        lambda ms: np.stack(ms),
        lambda ms: tuple(ms),
        lambda ms: [np.rint(m * 255).astype(np.uint8) for m in ms],
        lambda ms: np.stack(ms).astype(np.float64),
    ],
    ids=["list", "array", "tuple", "uint8", "float64"],
)
@pytest.mark.parametrize("rule", RULES)
def test_input_forms_agree(as_input, rule):
    np.testing.assert_array_equal(
        fg(ensemble(as_input(MAPS), rule=rule)), fg(ensemble(MAPS, rule=rule)), err_msg=f"{rule}"
    )


def test_uint8_is_divided_by_255():
    u8 = [np.full((2, 2), 128, np.uint8), np.full((2, 2), 127, np.uint8)]
    np.testing.assert_allclose(union(u8), np.float32(128 / 255))
    np.testing.assert_array_equal(fg(majority(u8, k=2)), np.zeros((2, 2), bool))


def test_single_map_is_identity():
    for rule in RULES:
        np.testing.assert_array_equal(fg(ensemble([A], rule=rule)), A >= 0.5)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: union([]), ValueError, "at least one"),
        (lambda: union([A, np.zeros((3, 4), np.float32)]), ValueError, "share one"),
        (lambda: union(np.zeros((3, 3), np.float32)), ValueError, r"\(N, H, W\)"),
        (lambda: union([A[None]]), ValueError, r"\(H, W\)"),
        (lambda: union([A * 2]), ValueError, r"\[0, 1\]"),
        (lambda: union([np.full((2, 2), np.nan, np.float32)]), ValueError, r"\[0, 1\]"),
        (lambda: union([np.zeros((2, 2), np.int32)]), TypeError, "int32"),
        (lambda: majority(MAPS, k=0), ValueError, "k must be"),
        (lambda: majority(MAPS, k=4), ValueError, "N=3"),
        (lambda: mean_threshold(MAPS, tau=0), ValueError, "tau"),
        (lambda: mean_threshold(MAPS, weights=[1, 1]), ValueError, "weights"),
        (lambda: mean_threshold(MAPS, weights=[0, 0, 0]), ValueError, "weights"),
        (lambda: majority_or_confident(MAPS, k=2, tau_high=1.5), ValueError, "tau_high"),
        (lambda: ensemble(MAPS, rule="vote"), ValueError, "union"),
        (lambda: ensemble(MAPS, rule="majority", weights=[1, 1, 1]), ValueError, "weights"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# values concentrated near the decision edges make ties and rounding cases likely
_values = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9, 1.0, float(np.nextafter(np.float32(0.5), 0))]),
    st.floats(0, 1, width=32),
)
_maps = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4)).flatmap(
    lambda s: arrays(np.float32, s, elements=_values)
)


@settings(max_examples=50, deadline=None)
@given(
    maps=_maps,
    data=st.data(),
    tau=st.one_of(st.sampled_from([0.5, 0.25, 0.9, 1.0]), st.floats(0.01, 1.0)),
    tau_high=st.one_of(st.sampled_from([0.9, 0.5, 1.0]), st.floats(0.01, 1.0)),
)
def test_soft_threshold_is_exactly_the_decision(maps, data, tau, tau_high):
    n = len(maps)
    k = data.draw(st.integers(1, n), label="k")
    weights = data.draw(st.none() | st.lists(st.floats(0, 4), min_size=n, max_size=n).filter(lambda w: sum(w) > 0))
    votes = (maps >= 0.5).sum(axis=0)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    acc = np.zeros(maps.shape[1:], np.float64)
    for wi, m in zip(w, maps):  # the documented accumulation order
        acc += wi * m.astype(np.float64)
    mean = acc / w.sum()
    expected = {
        "union": votes >= 1,
        "majority": votes >= k,
        "mean": mean >= tau,
        "majority_or_confident": (votes >= k) | (maps.max(axis=0).astype(np.float64) >= tau_high),
    }
    for rule, decision in expected.items():
        soft = ensemble(
            maps, rule=rule, k=k, tau=tau, tau_high=tau_high, weights=weights if rule == "mean" else None
        )
        assert soft.dtype == np.float32 and soft.shape == maps.shape[1:]
        assert np.all((soft >= 0) & (soft <= 1))
        np.testing.assert_array_equal(soft >= 0.5, decision, err_msg=rule)


@pytest.mark.parametrize("eps", [1e-9, -1e-9, 0.0])
def test_rounding_near_threshold_never_flips_the_decision(eps):
    # mean - tau + 0.5 = 0.5 -/+ 1e-9 rounds to exactly 0.5 in float32; the soft map must still say "no" / "yes"
    m = np.full((1, 2, 2), 0.3, np.float32)
    tau = float(np.float32(0.3)) + eps
    soft = mean_threshold(m, tau=tau)
    np.testing.assert_array_equal(soft >= 0.5, float(np.float32(0.3)) >= tau)
    # 0.3 is no vote, so only the confidence term decides
    soft = majority_or_confident(np.full((2, 2, 2), 0.3, np.float32), k=2, tau_high=tau)
    np.testing.assert_array_equal(soft >= 0.5, float(np.float32(0.3)) >= tau)


# --- the blocked implementation: selection networks, row blocks, input checks in the pass ----------------------
# Tiny blocks (down to one row) make small inputs span several blocks, with a shorter last one.


@contextlib.contextmanager
def block_pixels(px: int):
    saved = ens_mod._BLOCK_PIXELS
    ens_mod._BLOCK_PIXELS = px
    try:
        yield
    finally:
        ens_mod._BLOCK_PIXELS = saved


def all_binary_columns(n: int) -> np.ndarray:
    """(n, 1, 2**n) float32: column j holds the bits of j, every 0/1 input of n maps once."""
    bits = np.array(list(itertools.product([0.0, 1.0], repeat=n)), np.float32).T
    return bits[:, None, :]


@pytest.mark.parametrize("n", range(1, 11))
def test_selection_networks_on_every_binary_input(n):
    # The 0-1 principle: a comparator network that selects rank k on every 0/1 input selects it on every input.
    maps = all_binary_columns(n)
    ref = np.sort(maps, axis=0)
    for k in range(1, n + 1):
        np.testing.assert_array_equal(majority(maps, k=k), ref[n - k], err_msg=f"{n=} {k=}")
        soft = majority_or_confident(maps, k=k, tau_high=1.0)
        np.testing.assert_array_equal(soft, np.maximum(ref[n - k], np.where(ref[-1] >= 1.0, 0.5, 0.0)))
    np.testing.assert_array_equal(union(maps), ref[-1])


_kth_values = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, float(np.nextafter(np.float32(0.5), 0))]), st.floats(0, 1, width=32)
)


@settings(max_examples=60, deadline=None)
@given(
    maps=st.tuples(st.integers(1, 9), st.integers(1, 5), st.integers(1, 6)).flatmap(
        lambda s: arrays(np.float32, s, elements=_kth_values)
    ),
    data=st.data(),
    px=st.sampled_from([1, 3, 7, 1 << 15]),
)
def test_kth_largest_equals_sort_reference(maps, data, px):
    n = len(maps)
    k = data.draw(st.integers(1, n), label="k")
    ref = np.sort(maps, axis=0)[n - k]
    with block_pixels(px):
        for form in (maps, list(maps), [m.copy() for m in maps]):
            np.testing.assert_array_equal(majority(form, k=k), ref)
            np.testing.assert_array_equal(union(form), maps.max(axis=0))


def _shifted_reference(values: np.ndarray, tau: float) -> np.ndarray:
    """The documented soft map, on whole arrays: float64 clip(values - tau + 0.5, 0, 1), nudged around 0.5."""
    soft = np.clip(values - tau + 0.5, 0.0, 1.0).astype(np.float32)
    below = np.nextafter(np.float32(0.5), np.float32(0.0))
    return np.where(values >= tau, np.maximum(soft, np.float32(0.5)), np.minimum(soft, below))


@settings(max_examples=40, deadline=None)
@given(
    maps=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)).flatmap(
        lambda s: arrays(np.float32, s, elements=_values)
    ),
    data=st.data(),
    tau=st.one_of(st.sampled_from([0.5, 0.3, float(np.float32(0.3)) + 1e-9]), st.floats(0.01, 1.0)),
    px=st.sampled_from([1, 4, 1 << 15]),
)
def test_soft_values_equal_whole_array_reference_bit_for_bit(maps, data, tau, px):
    n = len(maps)
    k = data.draw(st.integers(1, n), label="k")
    weights = data.draw(st.none() | st.lists(st.floats(0, 4), min_size=n, max_size=n).filter(lambda w: sum(w) > 0))
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    acc = np.zeros(maps.shape[1:], np.float64)
    for wi, m in zip(w, maps):
        acc += wi * m.astype(np.float64)
    acc /= w.sum()
    kth = np.sort(maps, axis=0)[n - k]
    with block_pixels(px):
        np.testing.assert_array_equal(weighted_mean(maps, weights=weights), np.clip(acc, 0, 1).astype(np.float32))
        np.testing.assert_array_equal(mean_threshold(maps, tau=tau, weights=weights), _shifted_reference(acc, tau))
        np.testing.assert_array_equal(
            majority_or_confident(maps, k=k, tau_high=tau),
            np.maximum(kth, _shifted_reference(maps.max(axis=0).astype(np.float64), tau)),
        )


@pytest.mark.parametrize("px", [1, 5, 1 << 15])
def test_converted_inputs_equal_their_float32_conversion(px):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (4, 5, 7), dtype=np.uint8)
    f64 = rng.random((4, 5, 7))
    as_f32 = [u8[0].astype(np.float32) / np.float32(255), f64[1].astype(np.float32), (u8[2] > 127).astype(np.float32)]
    mixed = [u8[0], f64[1], u8[2] > 127]
    with block_pixels(px):
        for rule in RULES:
            np.testing.assert_array_equal(ensemble(mixed, rule=rule), ensemble(as_f32, rule=rule), err_msg=rule)


@pytest.mark.parametrize(
    "as_input",
    [
        lambda ms: ms[::-1].copy()[::-1],  # negative stride between maps
        lambda ms: list(np.repeat(ms, 2, axis=2)[:, :, ::2]),  # strided rows
        lambda ms: [ms[0], ms[2].copy(), ms[1]],  # not equally spaced
        lambda ms: [ms[1], ms[1], ms[1]],  # the same map thrice
    ],
    ids=["reversed", "strided", "scattered", "repeated"],
)
def test_map_layouts_give_the_same_result(as_input):
    maps = np.stack(MAPS)
    given_maps = as_input(maps)
    expected = [np.ascontiguousarray(m) for m in given_maps]
    with block_pixels(3):
        for rule in RULES:
            np.testing.assert_array_equal(ensemble(given_maps, rule=rule), ensemble(expected, rule=rule))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.25])
@pytest.mark.parametrize("stacked", [True, False], ids=["array", "list"])
def test_bad_value_in_a_later_block_is_found(rule, bad, stacked):
    maps = np.full((4, 6, 5), 0.25, np.float32)
    maps[2, -1, -1] = bad  # last row: only the last block sees it
    lo, hi = (np.nan, np.nan) if np.isnan(bad) else (min(bad, 0.25), max(bad, 0.25))
    with block_pixels(5), pytest.raises(ValueError, match=rf"map 2 must be in \[0, 1\], got values in \[{lo}, {hi}\]"):
        ensemble(maps if stacked else [m.copy() for m in maps], rule=rule)


def test_first_bad_map_is_reported():
    maps = [np.full((4, 3), 0.5, np.float32) for _ in range(3)]
    maps[2][0, 0] = 2.0  # seen in the first block
    maps[1][-1, 0] = -1.0  # seen only in the last one
    with block_pixels(3):
        with pytest.raises(ValueError, match="map 1 must be in"):
            majority(maps, k=2)
        # a bad value before a shape error is reported first, as maps are read in order
        with pytest.raises(ValueError, match="map 1 must be in"):
            majority([*maps[:2], np.zeros((5, 3), np.float32)], k=2)
        with pytest.raises(ValueError, match="share one"):
            majority([maps[0], np.zeros((5, 3), np.float32), maps[1]], k=2)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)])
def test_empty_maps(shape):
    maps = np.zeros((3, *shape), np.float32)
    for rule in RULES:
        soft = ensemble(maps, rule=rule)
        assert soft.shape == shape and soft.dtype == np.float32
