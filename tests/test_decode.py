"""SegGPT output decoding on fake model outputs (no model, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from finedetail.decode import canvas_probabilities, pred_to_canvas, resize_probs, seggpt_probabilities

MEAN = (0.485, 0.456, 0.406)  # ImageNet, SegGptImageProcessor.image_mean
STD = (0.229, 0.224, 0.225)
BINARY = [(0, 0, 0), (255, 255, 255)]
# transformers 5.24 SegGptImageProcessor().get_palette(3): background black, then 255 - i * 128 per channel digit
PALETTE3 = [(0, 0, 0), (255, 255, 255), (255, 255, 127), (255, 127, 255)]


def encode_canvas(canvas: np.ndarray, top: np.ndarray | None = None) -> np.ndarray:
    """Inverse of the model-side normalisation: (S, S, 3) 0..255 canvas -> (3, 2S, S) fake pred_masks item."""
    target = (canvas / 255.0 - np.array(MEAN)) / np.array(STD)
    top = np.zeros_like(target) if top is None else top
    return np.concatenate([top, target], axis=0).transpose(2, 0, 1).astype(np.float32)


def test_pred_to_canvas_takes_the_target_half_and_unnormalises():
    canvas = np.array([[[0, 0, 0], [255, 255, 255]], [[10, 20, 30], [200, 100, 50]]], np.float64)
    top = np.full((2, 2, 3), 7.0)  # the prompt half must be ignored
    got = pred_to_canvas(encode_canvas(canvas, top), image_mean=MEAN, image_std=STD)
    assert got.shape == (2, 2, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, canvas, atol=1e-3)


def test_pred_to_canvas_clips_to_0_255():
    pred = np.full((3, 4, 2), 50.0, np.float32)
    assert pred_to_canvas(pred, image_mean=MEAN, image_std=STD).max() == 255.0
    assert pred_to_canvas(-pred, image_mean=MEAN, image_std=STD).min() == 0.0


@pytest.mark.parametrize("shape", [(3, 4), (1, 4, 2), (3, 5, 2)])
def test_pred_to_canvas_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(3, 2S, S\)"):
        pred_to_canvas(np.zeros(shape, np.float32), image_mean=MEAN, image_std=STD)


def test_binary_palette_colours_decode_confidently():
    canvas = np.array([[[255, 255, 255], [0, 0, 0]]], np.float32)  # 1 x 2: white, black
    p = canvas_probabilities(canvas, palette=BINARY)
    assert p.shape == (1, 1, 2) and p.dtype == np.float32
    assert p[0, 0, 0] > 0.99 and p[0, 0, 1] < 0.01


@pytest.mark.parametrize("cls", [0, 1, 2, 3])
def test_multiclass_palette_colours_decode_to_their_class(cls):
    canvas = np.zeros((3, 3, 3), np.float32) + np.array(PALETTE3[cls], np.float32)
    p = canvas_probabilities(canvas, palette=PALETTE3)
    assert p.shape == (3, 3, 3)
    full = np.concatenate([1.0 - p.sum(0, keepdims=True), p])  # background = what the classes leave
    assert np.all(full.argmax(0) == cls)
    assert full[cls].min() > 0.9


@pytest.mark.parametrize(("grey", "expected"), [(127.5, 0.5), (255 * 0.75, 0.924), (255 * 0.25, 0.076)])
def test_binary_grey_levels_give_soft_probabilities(grey, expected):
    # p = sigmoid((d_black^2 - d_white^2) / (T * d_min^2)) = sigmoid(3 * (2g - 1) / (3 * 0.2)) with g = grey / 255
    p = canvas_probabilities(np.full((1, 1, 3), grey, np.float32), palette=BINARY)
    assert p[0, 0, 0] == pytest.approx(expected, abs=1e-3)


def test_lower_temperature_is_sharper():
    canvas = np.full((1, 1, 3), 160.0, np.float32)
    soft = canvas_probabilities(canvas, palette=BINARY, temperature=1.0)[0, 0, 0]
    sharp = canvas_probabilities(canvas, palette=BINARY, temperature=0.05)[0, 0, 0]
    assert 0.5 < soft < sharp < 1.0


def test_class_probabilities_leave_a_valid_background_share():
    rng = np.random.default_rng(0)
    p = canvas_probabilities(rng.uniform(0, 255, (8, 8, 3)), palette=PALETTE3)
    assert np.all(p >= 0) and np.all(p.sum(0) <= 1 + 1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(palette=[(0, 0, 0), (0, 0, 0)]), "duplicate"),
        (dict(palette=[(0, 0, 0)]), "K >= 2"),
        (dict(palette=BINARY, temperature=0.0), "temperature"),
    ],
)
def test_canvas_probabilities_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        canvas_probabilities(np.zeros((2, 2, 3)), **kwargs)


def test_resize_probs_upsampling_keeps_a_soft_edge():
    step = np.zeros((1, 4, 4), np.float32)
    step[:, :, 2:] = 1.0
    up = resize_probs(step, (16, 16))
    assert up.shape == (1, 16, 16) and up.dtype == np.float32
    row = up[0, 5]
    assert row[0] == 0.0 and row[-1] == 1.0
    assert np.all(np.diff(row) >= 0)
    assert np.sum((row > 0.01) & (row < 0.99)) >= 2  # a ramp, not a hard nearest-neighbour step


def test_resize_probs_constant_and_identity():
    c = np.full((2, 5, 7), 0.3, np.float32)
    np.testing.assert_allclose(resize_probs(c, (13, 3)), 0.3, atol=1e-6)
    same = resize_probs(c, (5, 7))
    assert same is not c and np.array_equal(same, c)


def test_resize_probs_downsampling_averages_areas():
    p = np.array([[[0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]], np.float32)
    np.testing.assert_allclose(resize_probs(p, (2, 2))[0], [[0.5, 0.0], [1.0, 1.0]], atol=1e-6)


def test_seggpt_probabilities_end_to_end_frame():
    s = 8
    canvas = np.zeros((s, s, 3), np.float64)
    canvas[:, s // 2 :] = 255.0  # right half of the target is the object
    pred = encode_canvas(canvas)
    small = seggpt_probabilities(pred, palette=BINARY, image_mean=MEAN, image_std=STD)
    assert small.shape == (1, s, s)
    big = seggpt_probabilities(pred, palette=BINARY, image_mean=MEAN, image_std=STD, out_hw=(12, 20))
    assert big.shape == (1, 12, 20)
    assert big[0, :, :8].max() < 0.01 and big[0, :, 12:].min() > 0.99
    assert np.all((big[0, :, 9] > 0.01) & (big[0, :, 9] < 0.99))
