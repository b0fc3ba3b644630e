"""Thin-only classes in multi-class runs (finedetail.classes): the width rule, the threshold lift, the hand-off rule
and, end to end with the proxies, a thin-only class found and kept apart from the blob class."""

from __future__ import annotations

import numpy as np
import pytest

from finedetail import synthetic
from finedetail.classes import ThinClassCoarse, class_widths, handoff, lift_threshold, thin_only_classes
from finedetail.config import MultiClassConfig, PipelineConfig, config_from_dict
from finedetail.types import PromptPair


@pytest.mark.parametrize("width", [1, 3, 5, 9])
def test_class_widths_of_a_bar(width):
    m = np.zeros((40, 60), bool)
    m[10:10 + width, 5:55] = True  # a horizontal bar `width` px wide
    assert class_widths(m) == pytest.approx(width, abs=0.5)


def test_class_widths_empty_is_zero():
    assert class_widths(np.zeros((4, 4), bool)) == 0.0


def _pair(mask: np.ndarray) -> PromptPair:
    return PromptPair(image=np.zeros((*mask.shape, 3), np.uint8), mask=mask)


def test_thin_only_classes_measures_on_the_coarse_canvas():
    labels = np.zeros((100, 200), np.uint8)
    labels[10:13, 10:190] = 1  # 3 px at 200 px long side
    labels[40:80, 40:80] = 2  # 40 px
    # canvas 448: 3 px -> 6.7 canvas px (< 8: thin-only); 40 px -> 90 (not)
    assert thin_only_classes([_pair(labels)], 2, canvas=448, thin_width=8.0) == (0,)
    # a canvas that sees the 3-px bar 8.1 px wide resolves it: no thin-only class
    assert thin_only_classes([_pair(labels)], 2, canvas=540, thin_width=8.0) == ()
    assert thin_only_classes([_pair(labels > 0)], 1, canvas=448, thin_width=8.0) == ()  # binary: never
    # the widest prompt decides: a second prompt showing class 1 wide makes it resolvable
    wide = np.zeros((100, 200), np.uint8)
    wide[10:40, 10:190] = 1
    assert thin_only_classes([_pair(labels), _pair(wide)], 2, canvas=448, thin_width=8.0) == ()


def test_lift_threshold_edges_are_exact():
    p = np.array([0.0, 0.1, 0.19, 0.2, 0.6, 1.0], np.float32)
    out = lift_threshold(p, 0.2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.25, 0.475, 0.5, 0.75, 1.0], atol=1e-6)
    np.testing.assert_array_equal(out >= 0.5, p >= 0.2)


def test_handoff_gives_contested_growth_to_the_higher_coarse_class():
    # 1 x 6 pixels. class 0's refiner map grew over pixels 2-5. class 1: coarse claim at 3, a weaker coarse value than
    # class 0's at 4, and its own refiner growth at 5 with a higher (sub-0.5) coarse value than class 0's.
    coarse = np.array([[[1.0, 1.0, 0.0, 0.0, 0.7, 0.1]], [[0.0, 0.0, 0.0, 0.9, 0.6, 0.3]]], np.float32)
    refined = np.array([[[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.9, 0.6, 1.0]]], np.float32)
    out = handoff(refined.copy(), coarse)
    np.testing.assert_array_equal(out[0, 0], np.float32([1.0, 1.0, 1.0, 0.0, 1.0, 0.1]))  # 3 and 5 handed to class 1
    np.testing.assert_array_equal(out[1, 0], np.float32([0.0, 0.0, 0.0, 0.9, 0.6, 1.0]))  # 4: class 0's coarse is higher
    np.testing.assert_array_equal(handoff(refined[:1].copy(), coarse[:1]), refined[:1])  # binary: unchanged


def test_classes_config_refuses_bad_values():
    with pytest.raises(ValueError, match="thin_model must be one of"):
        MultiClassConfig(thin_model="gmm")
    with pytest.raises(ValueError, match=r"thin_threshold must lie in \(0, 1\)"):
        MultiClassConfig(thin_threshold=1.0)
    with pytest.raises(ValueError, match="unknown config key multiclass.'x'"):
        config_from_dict({"multiclass": {"x": 1}})


def _fast_pixel_model():
    from finedetail.models.thin import PixelConfig, PixelSegmenter

    return PixelSegmenter(config=PixelConfig(iterations=30, max_samples=4000, calibrate=False))


SIZE = 320  # a 1-3 px part is under 4.2 px on the 448 canvas: thin-only; blobs (poles, box) are wider


@pytest.fixture(scope="module")
def wires():
    scene = synthetic.make_scene("wires", seed=0, size=(SIZE, SIZE), classes=2)
    image, labels = synthetic.make_prompt_pair("wires", seed=500, size=(SIZE, SIZE), classes=2)
    return scene, [PromptPair(image=image, mask=labels, name="p")]


def test_thin_class_coarse_proposes_the_thin_class(wires):
    from finedetail.models.proxy import ProxySegGPT

    scene, prompts = wires
    base = ProxySegGPT()
    base.set_prompts(prompts, num_classes=2)
    before = base.predict([scene.image])[0]
    seg = ThinClassCoarse(ProxySegGPT(), detail_factory=_fast_pixel_model)
    seg.set_prompts(prompts, num_classes=2)
    assert seg.thin == (0,) and seg.num_classes == 2
    after = seg.predict([scene.image])[0]
    assert seg.encoder_passes == 1  # the pixel model runs no network
    line = scene.skeleton
    assert np.mean(before[0][line] >= 0.5) == 0.0  # the 448 canvas cannot see the thin class
    assert np.mean(after[0][line] >= 0.5) > 0.7
    np.testing.assert_array_equal(after[1], before[1])  # the blob class is the coarse model's alone


@pytest.mark.parametrize("classes, found", [({}, True), ({"thin_model": "none", "handoff": False}, False)])
def test_thin_only_class_found_and_kept_apart_end_to_end(wires, classes, found):
    """With the fix, the full method labels most of the thin class's centre lines as the thin class and at most
    10 % as the blob class; without it (the old behaviour) the blob class's refinement takes them."""
    from finedetail.execute import run_image
    from finedetail.models.proxy import ProxySAM, ProxySegGPT

    scene, prompts = wires
    cfg = config_from_dict({"scales": [1.0], "tta": ["identity"], "multiclass": classes})
    seg = ThinClassCoarse(ProxySegGPT(), cfg.multiclass, detail_factory=_fast_pixel_model)
    seg.set_prompts(prompts, num_classes=2)
    mask = run_image(scene.image, seg, ProxySAM(), cfg).mask
    line = scene.skeleton
    recall, other = np.mean(mask[0][line]), np.mean(mask[1][line])
    if found:
        assert recall >= 0.5 and other <= 0.1, (recall, other)
    else:
        assert recall < 0.1 and other > 0.3, (recall, other)


def test_binary_runs_are_untouched(wires):
    """One class: no thin-only class, no pixel model, the same coarse map as the base model's."""
    from finedetail.models.proxy import ProxySegGPT

    scene, _ = wires
    prompts = [PromptPair(image=scene.image, mask=scene.mask, name="p")]
    seg = ThinClassCoarse(ProxySegGPT(), detail_factory=lambda: pytest.fail("no pixel model in a binary run"))
    seg.set_prompts(prompts, num_classes=1)
    base = ProxySegGPT()
    base.set_prompts(prompts, num_classes=1)
    assert seg.thin == ()
    np.testing.assert_array_equal(seg.predict([scene.image])[0], base.predict([scene.image])[0])
    assert PipelineConfig().multiclass == MultiClassConfig()
