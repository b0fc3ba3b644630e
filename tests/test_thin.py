"""The weight-free backend's thin-structure models: ridge filters, the in-context pixel model, the growing refiner."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from finedetail import ridges
from finedetail.models.base import CoarseSegmenter, PromptedRefiner
from finedetail.models.thin import (
    GrowConfig,
    GrowEmbedding,
    GrowRefiner,
    PixelConfig,
    PixelSegmenter,
    best_threshold,
    lda_fit,
    sample_pixels,
)
from finedetail.prompts import prompts_from_mask
from finedetail.types import PromptPair


def line_image(hw=(21, 25), *, row=10, value=0.8, background=0.2) -> np.ndarray:
    g = np.full(hw, background, np.float32)
    g[row, :] = value
    return g


# ------------------------------------------------------------------------------------------------ ridge filters


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_hessian_finds_a_bright_1px_line_at_its_row(sigma):
    lo, hi = ridges.hessian_eigen(line_image(), sigma=sigma)
    assert lo.dtype == np.float32 and lo.shape == (21, 25)
    assert np.all(lo <= hi)
    col = lo[:, 12]
    assert int(np.argmin(col)) == 10 and col[10] < -0.01  # strongly negative across a bright line
    assert abs(hi[10, 12]) < 1e-4  # flat along it
    dark, bright = ridges.lineness(lo, hi)
    assert int(np.argmax(bright[:, 12])) == 10 and bright[10, 12] > 0 and dark[10, 12] == 0


def test_lineness_of_a_dark_line_and_of_a_flat_image():
    lo, hi = ridges.hessian_eigen(line_image(value=0.0, background=0.5), sigma=1.0)
    dark, bright = ridges.lineness(lo, hi)
    assert int(np.argmax(dark[:, 5])) == 10 and dark[10, 5] > 0 and bright[10, 5] == 0
    lo, hi = ridges.hessian_eigen(np.full((9, 9), 0.3, np.float32), sigma=1.0)
    assert np.allclose(lo, 0, atol=1e-6) and np.allclose(hi, 0, atol=1e-6)


def test_line_filter_answers_on_the_line_for_both_polarities():
    bright, dark = ridges.line_filter(line_image(), length=7, angles=4)
    assert int(np.argmax(bright[:, 12])) == 10
    assert bright[10, 12] == pytest.approx(0.6 - 0.6 / 7, abs=1e-5)  # segment mean 0.8 - square mean 0.2 + 0.6 / 7
    bright, dark = ridges.line_filter(line_image(value=0.0, background=0.5), length=7, angles=4)
    assert int(np.argmax(dark[:, 12])) == 10 and dark[10, 12] > 0.4


@pytest.mark.parametrize("length, angles", [(3, 1), (7, 4), (15, 12)])
def test_line_kernels_are_normalised_segments(length, angles):
    ks = ridges.line_kernels(length, angles)
    assert len(ks) == angles
    for k in ks:
        assert k.shape == (length, length) and k.sum() == pytest.approx(1.0)
        assert k[length // 2, length // 2] > 0  # through the centre
    horizontal = ks[0]
    assert np.count_nonzero(horizontal) == length and np.all(horizontal[length // 2] > 0)


def test_local_normalise_removes_offset_and_gain():
    rng = np.random.default_rng(0)
    g = rng.random((30, 30)).astype(np.float32)
    a = ridges.local_normalise(g, sigma=4.0)
    b = ridges.local_normalise(3.0 * g + 5.0, sigma=4.0, eps=3e-2)  # eps scales with the image's units
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.allclose(ridges.local_normalise(np.full((8, 8), 0.4, np.float32), sigma=2.0), 0.0, atol=1e-5)


def _texture_with_a_faint_line(angle_deg: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (64, 64) "foliage" of 150 short bright strokes at random orientations, and a long faint straight bright line
    through the centre at ``angle_deg``; returns the grey image and the line's (64, 64) bool mask."""
    import cv2

    rng = np.random.default_rng(seed)
    g = np.full((64, 64), 0.3, np.float32)
    for _ in range(150):
        x, y, a = rng.uniform(0, 64), rng.uniform(0, 64), rng.uniform(0, np.pi)
        dx, dy = 2.5 * np.cos(a), 2.5 * np.sin(a)
        cv2.line(g, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), 0.6, 1)
    a = np.deg2rad(angle_deg)
    line = np.zeros((64, 64), np.uint8)  # anti-aliased: the same ink per unit length at every angle
    cv2.line(line, (int(32 - 60 * np.cos(a)), int(32 + 60 * np.sin(a))),
             (int(32 + 60 * np.cos(a)), int(32 - 60 * np.sin(a))), 255, 1, cv2.LINE_AA)
    return np.maximum(g, 0.3 + 0.15 * line.astype(np.float32) / 255), line > 127


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 120.0])
def test_coherent_lines_pick_a_long_faint_line_out_of_texture(angle):
    g, line = _texture_with_a_faint_line(angle)
    bright, dark = ridges.coherent_lines(g, sigma=1.0, length=21, angles=12)
    assert bright.shape == dark.shape == (64, 64) and bright.dtype == np.float32
    inner = np.zeros((64, 64), bool)
    inner[16:48, 16:48] = True  # away from the borders
    far = ~ndi.binary_dilation(line, iterations=3)  # not the line's own blurred flanks
    coherent = np.median(bright[line & inner]) / np.percentile(bright[far & inner], 95)
    assert bright[line & inner].mean() > dark[line & inner].mean()
    # the strokes are brighter than the line, each short: per pixel (Sato lineness) the line is below the strokes'
    # 95th percentile; summed along one orientation it stands out much more at every angle
    dk, br = ridges.lineness(*ridges.hessian_eigen(g, sigma=1.0))
    sato = np.median(br[line & inner]) / np.percentile(br[far & inner], 95)
    assert sato < 0.6 and coherent > 1.4 * sato


def test_coherent_lines_answer_little_on_a_blob_and_dark_on_a_dark_line():
    blob = np.zeros((31, 31), np.float32)
    blob[14:17, 14:17] = 1.0  # a 3 px dot: as wide as the line below, not long
    line = np.zeros((31, 31), np.float32)
    line[15, :] = 1.0
    bright, _ = ridges.coherent_lines(blob, sigma=1.0, length=7, angles=8)
    assert bright.max() < 0.2 * ridges.coherent_lines(line, sigma=1.0, length=7, angles=8)[0].max()
    bright, dark = ridges.coherent_lines(line_image(value=0.0, background=0.5), sigma=1.0, length=7, angles=4)
    assert int(np.argmax(dark[:, 12])) == 10 and dark[10, 12] > 0 and bright[10, 12] == 0
    with pytest.raises(ValueError, match="sigma"):
        ridges.coherent_lines(blob, sigma=0.0, length=7)


def test_thin_features_shape_and_refusals():
    img = np.zeros((12, 17, 3), np.uint8)
    assert ridges.thin_features(img, sigmas=(1.0, 2.0)).shape == (12, 17, 16)
    assert ridges.thin_features(img, sigmas=(1.0,), line_length=0).shape == (12, 17, 11)
    assert ridges.thin_features(img, sigmas=(1.0,), coherent_length=7, coherent_sigmas=(1.0, 2.0)).shape == (
        12, 17, 17)
    assert ridges.thin_features(img).dtype == np.float32
    with pytest.raises(TypeError, match="uint8 RGB"):
        ridges.thin_features(img[..., 0])
    with pytest.raises(ValueError, match="length"):
        ridges.line_filter(np.zeros((5, 5), np.float32), length=4)
    with pytest.raises(TypeError, match="grey"):
        ridges.hessian_eigen(np.zeros((5, 5, 3), np.float32), sigma=1.0)


# ------------------------------------------------------------------------------------------------ pixel model


@pytest.mark.parametrize("scores, truth, expected", [
    ([0.9, 0.8, 0.1], [1, 1, 0], 0.45),  # cut between 0.8 and 0.1
    ([0.9, 0.8, 0.1], [1, 0, 0], 0.85),
    ([0.9, 0.8, 0.1], [0, 0, 0], 0.0),  # nothing to find: the classifier's own decision
    ([0.5, 0.5, 0.2], [1, 0, 1], 0.2),  # ties are cut together; keeping all wins (F1 0.8 vs 0.5)
    ([0.3], [1], 0.3),
])
def test_best_threshold_maximises_f1(scores, truth, expected):
    assert best_threshold(np.array(scores), np.array(truth, bool)) == pytest.approx(expected)


def test_sample_pixels_balances_and_prefers_the_band_near_the_object():
    lab = np.zeros((20, 20), np.int8)
    lab[10, 2:18] = 1
    lab[0, :] = -1
    idx, y = sample_pixels(lab, 10, near_px=2, near_frac=0.5, rng=np.random.default_rng(0))
    assert np.all(np.diff(idx) > 0) and np.count_nonzero(y == 1) == 10 and np.count_nonzero(y == 0) == 10
    rows = idx // 20
    assert np.all(lab.ravel()[idx] == y)  # never an unused (-1) pixel
    assert np.count_nonzero((y == 0) & (np.abs(rows - 10) <= 2)) >= 5


def lines_scene(seed: int, hw=(64, 80)) -> tuple[np.ndarray, np.ndarray]:
    """Dark 1-px lines (random rows and columns) on brighter smooth noise: only ridge features tell them apart
    from the noise's dark specks, colour cannot."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(150, 12, hw).astype(np.float32)
    mask = np.zeros(hw, bool)
    for r in rng.choice(np.arange(5, hw[0] - 5), 2, replace=False):
        mask[r, 3:-3] = True
    for c in rng.choice(np.arange(5, hw[1] - 5), 2, replace=False):
        mask[3:-3, c] = True
    g = np.where(mask, noise - 45, noise)
    img = np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return img, mask


def f1(pred, gt) -> float:
    return 2 * float((pred & gt).sum()) / max(1, int(pred.sum() + gt.sum()))


def test_pixel_segmenter_finds_1px_lines_in_a_new_scene():
    seg = PixelSegmenter(config=PixelConfig(iterations=30))
    assert isinstance(seg, CoarseSegmenter)
    with pytest.raises(RuntimeError, match="set_prompts"):
        seg.predict([lines_scene(0)[0]])
    seg.set_prompts([PromptPair(*lines_scene(0)), PromptPair(*lines_scene(1))])
    img, gt = lines_scene(2)
    (prob,) = seg.predict([img])
    assert prob.shape == (1, 64, 80) and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    assert f1(prob[0] >= 0.5, gt) > 0.8
    assert seg.encoder_passes == 1


def test_pixel_segmenter_is_deterministic_with_a_seed_and_answers_in_the_image_frame():
    prompts = [PromptPair(*lines_scene(0))]  # one prompt: calibrated on two halves of it
    img = lines_scene(3, hw=(70, 90))[0]
    maps = []
    for _ in range(2):
        seg = PixelSegmenter(config=PixelConfig(iterations=20, input_size=40, seed=3))
        seg.set_prompts(prompts)
        maps.append(seg.predict([img])[0])
    assert maps[0].shape == (1, 70, 90)
    np.testing.assert_array_equal(maps[0], maps[1])


def test_pixel_segmenter_multiclass_and_refusals():
    img, mask = lines_scene(0)
    labels = np.zeros(mask.shape, np.uint8)
    labels[mask] = 1
    labels[:, :20][mask[:, :20]] = 2
    seg = PixelSegmenter(config=PixelConfig(iterations=10))
    seg.set_prompts([PromptPair(img, labels)], num_classes=2)
    assert seg.predict([img])[0].shape == (2, 64, 80)
    with pytest.raises(ValueError, match="class 3: the prompts give 0 clean foreground"):
        seg.set_prompts([PromptPair(img, labels)], num_classes=3)
    with pytest.raises(ValueError, match="at least one PromptPair"):
        seg.set_prompts([])


@pytest.mark.parametrize("kw, match", [
    ({"input_size": 8}, "input_size"),
    ({"sigmas": ()}, "sigmas"),
    ({"line_length": 4}, "line_length"),
    ({"coherent_length": 30}, "coherent_length"),
    ({"coherent_sigmas": (1.0, 0.0)}, "coherent_sigmas"),
    ({"near_frac": 1.5}, "near_frac"),
    ({"iterations": 0}, "iterations"),
])
def test_pixel_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        PixelConfig(**kw)


# ------------------------------------------------------------------------------------------------ grow refiner


def test_lda_separates_two_gaussians_with_equal_priors():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal([4, 0], 1, (200, 2))])
    y = np.r_[np.zeros(200, np.int8), np.ones(200, np.int8)]
    w, b = lda_fit(x, y, shrinkage=0.0)
    assert np.array([2.0, 0.0]) @ w + b == pytest.approx(0.0, abs=0.3)  # midway: even odds
    assert np.mean(((x @ w + b) > 0) == (y == 1)) > 0.95


def test_refiner_keeps_a_1px_line_the_coarse_map_finds():
    img, gt = lines_scene(4)
    ref = GrowRefiner()
    assert isinstance(ref, PromptedRefiner)
    (emb,) = ref.encode([img])
    assert isinstance(emb, GrowEmbedding) and ref.encoder_passes == 1
    prompts, _ = prompts_from_mask(gt, k=4, min_area=4, logits=False)
    out = ref.refine(emb, prompts)
    assert out.shape == (len(prompts), 64, 80) and out.dtype == np.float32
    merged = out.max(axis=0) >= 0.5
    assert np.all(merged[gt])  # nothing of the line lost
    assert f1(merged, gt) > 0.9  # and not swollen


def test_refiner_grows_a_line_through_a_gap_in_the_coarse_map():
    img, gt = lines_scene(5)
    coarse = gt.copy()
    row = int(np.flatnonzero(gt.sum(axis=1) > 40)[0])
    coarse[row, 30:38] = False  # the coarse map missed 8 px of one line
    prompts, _ = prompts_from_mask(coarse, k=4, min_area=4, logits=False)
    ref = GrowRefiner()
    merged = ref.refine(ref.encode([img])[0], prompts).max(axis=0) >= 0.5
    assert np.count_nonzero(merged[row, 30:38]) >= 6
    assert np.count_nonzero(merged & ~gt) <= 12  # a few noise specks touching the lines, no swelling


def test_refiner_no_prompts_degenerate_seeds_and_misuse():
    img, gt = lines_scene(0)
    ref = GrowRefiner()
    emb = ref.encode([img])[0]
    assert ref.refine(emb, []).shape == (0, 64, 80)
    whole = np.ones((64, 80), bool)  # no pixel far from the component: no negatives, the mask comes back
    (p,) = prompts_from_mask(whole, k=0, min_area=1, logits=False)[0]
    np.testing.assert_array_equal(ref.refine(emb, [p])[0], whole.astype(np.float32))
    with pytest.raises(TypeError, match="GrowRefiner.encode"):
        ref.refine(object(), [p])
    small = prompts_from_mask(np.ones((10, 10), bool), k=0, min_area=1, logits=False)[0]
    with pytest.raises(ValueError, match="frame"):
        ref.refine(emb, small)


def test_refiner_bounded_resolution_answers_in_the_image_frame_and_is_deterministic():
    img, gt = lines_scene(6, hw=(64, 80))
    ref = GrowRefiner(config=GrowConfig(input_size=40))
    emb = ref.encode([img])[0]
    assert emb.feats.shape[:2] == (32, 40) and emb.hw == (64, 80)
    prompts, _ = prompts_from_mask(gt, k=4, min_area=4, logits=False)
    a, b = ref.refine(emb, prompts), ref.refine(emb, prompts)
    assert a.shape == (len(prompts), 64, 80)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw, match", [
    ({"grow_p": 0.0}, "grow_p"),
    ({"min_gap": 0.5}, "min_gap"),
    ({"shrinkage": 1.0}, "shrinkage"),
    ({"input_size": 4}, "input_size"),
])
def test_grow_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        GrowConfig(**kw)


# ------------------------------------------------------------------------------------------------ job wiring


def _job_cfg(options: dict):
    from job.config import job_config_from_dict

    return job_config_from_dict({"input": "/tmp/in", "output": "/tmp/out", "prompts": "/tmp/prompts",
                                 "backend": "classical", "backend_options": options})


def test_classical_backend_defaults_to_the_thin_structure_models():
    from job.models import build_coarse, build_refiner

    cfg = _job_cfg({"coarse_iterations": 10, "refiner_grow_p": 0.8})
    seg = build_coarse(cfg, [PromptPair(*lines_scene(0))])
    assert isinstance(seg, PixelSegmenter) and seg.config == PixelConfig(iterations=10)
    ref = build_refiner(cfg)
    assert isinstance(ref, GrowRefiner) and ref.config == GrowConfig(grow_p=0.8)


@pytest.mark.parametrize("options, match", [
    ({"coarse_model": "sam"}, r"coarse_model='sam' is not a classical model; choose one of \['pixel', 'colour-"),
    ({"refiner_iterations": 2}, r"unknown backend_options key 'refiner_iterations'.*'refiner_grow_p'"),
    ({"refiner_model": "grow", "refiner_grow_p": 2.0}, r"GrowConfig.*grow_p"),
])
def test_classical_model_choice_refused(options, match):
    from job.models import backend_configs

    with pytest.raises(ValueError, match=match):
        backend_configs(_job_cfg(options))
