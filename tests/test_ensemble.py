"""Ensemble rules: 3x3 literal maps counted by eye, and the exact soft >= 0.5 <-> decision property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

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
