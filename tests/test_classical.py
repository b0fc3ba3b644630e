"""The weight-free backend: colour + texture coarse model (models/classical.py), GrabCut refiner (models/grabcut.py)
and their shared working frame (models/weightfree.py)."""

from __future__ import annotations

import numpy as np
import pytest

from finedetail.models.base import CoarseSegmenter, PromptedRefiner
from finedetail.frames import LongestSide
from finedetail.models.classical import ColourTextureConfig, ColourTextureSegmenter, colour_index, texture_features
from finedetail.models.grabcut import GrabCutConfig, GrabCutEmbedding, GrabCutRefiner
from finedetail.models.weightfree import working_frame
from finedetail.prompts import prompts_from_mask
from finedetail.synthetic import KINDS, make_scene
from finedetail.types import ComponentPrompt, PromptPair


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def disk(hw, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def blob_scene(seed: int, hw=(200, 260)) -> tuple[np.ndarray, np.ndarray]:
    """Noisy red disk (random place and radius) on green noise."""
    rng = np.random.default_rng(seed)
    h, w = hw
    img = np.stack([rng.integers(0, 90, hw), rng.integers(90, 200, hw), rng.integers(0, 90, hw)], -1).astype(np.uint8)
    m = min(60, h // 3, w // 3)
    mask = disk(hw, rng.integers(m, h - m + 1), rng.integers(m, w - m + 1), rng.integers(m * 5 // 12, m * 5 // 6))
    red = np.stack([rng.integers(170, 256, hw), rng.integers(0, 70, hw), rng.integers(0, 70, hw)], -1)
    img[mask] = red[mask]
    return img, mask


def texture_scene(seed: int, hw=(160, 160)) -> tuple[np.ndarray, np.ndarray]:
    """Grey only: a 1-px checkerboard of 100/156 (the object) on smooth grey noise spanning 100..156.
    Colour alone cannot tell them apart well; local std can."""
    rng = np.random.default_rng(seed)
    h, w = hw
    grey = rng.integers(100, 157, hw).astype(np.float32)
    grey = np.clip(np.rint(np.repeat(np.repeat(grey[::8, ::8], 8, 0), 8, 1)[:h, :w]), 0, 255)
    mask = disk(hw, rng.integers(50, h - 50), rng.integers(50, w - 50), rng.integers(25, 40))
    yy, xx = np.mgrid[:h, :w]
    checker = np.where((yy + xx) % 2 == 0, 100, 156).astype(np.float32)
    grey[mask] = checker[mask]
    img = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    return img, mask


# ------------------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("hw, long_side, up, out", [
    ((2048, 512), 1024, False, (1024, 256)),
    ((300, 200), 1024, False, (300, 200)),
    ((300, 200), 512, True, (512, 341)),
    ((101, 101), 100, False, (100, 100)),
])
def test_working_frame(hw, long_side, up, out):
    """The weight-free models' working frame is a LongestSide: long side ``long_side``, or the image's own size when
    it is small enough and the model never enlarges."""
    frame = working_frame(hw, long_side, allow_upscale=up)
    assert isinstance(frame, LongestSide) and frame.src == hw and frame.size == out


def test_colour_index_bins():
    black = np.zeros((1, 1, 3), np.uint8)
    # 8-bit Lab of black is (0, 128, 128): L bin 0, a and b bins 128 * 16 >> 8 = 8
    assert colour_index(black, l_bins=8, ab_bins=16)[0, 0] == (0 * 16 + 8) * 16 + 8
    rnd = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    idx = colour_index(rnd, l_bins=8, ab_bins=16)
    assert idx.min() >= 0 and idx.max() < 8 * 16 * 16


def test_texture_features_of_a_flat_image_are_flat():
    f = texture_features(np.full((12, 9, 3), 77, np.uint8), scales=(3, 5))
    assert f.shape == (12, 9, 5) and f.dtype == np.float32
    np.testing.assert_allclose(f[..., 0], 77 / 255, atol=1e-6)
    np.testing.assert_allclose(f[..., [1, 3, 4]], 0.0, atol=1e-3)


@pytest.mark.parametrize("kw, match", [
    ({"input_size": 8}, "input_size"),
    ({"texture_scales": (4,)}, "texture_scales"),
    ({"fg_floor": 0.0}, "fg_floor"),
    ({"bg_floor": 1.0}, "bg_floor"),
])
def test_colour_texture_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        ColourTextureConfig(**kw)


@pytest.mark.parametrize("kw, match", [({"iterations": 0}, "iterations"), ({"ring": 0}, "ring")])
def test_grabcut_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        GrabCutConfig(**kw)


# ------------------------------------------------------------------------------------------------ coarse model


def test_coarse_protocol_and_counting():
    seg = ColourTextureSegmenter()
    assert isinstance(seg, CoarseSegmenter) and seg.input_size == 512
    with pytest.raises(RuntimeError, match="set_prompts"):
        seg.predict([blob_scene(0)[0]])
    img, mask = blob_scene(0)
    seg.set_prompts([PromptPair(img, mask)])
    maps = seg.predict([blob_scene(1)[0], blob_scene(2, hw=(90, 130))[0]])
    assert seg.encoder_passes == 2
    assert [m.shape for m in maps] == [(1, 200, 260), (1, 90, 130)]
    assert all(m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 for m in maps)


@pytest.mark.parametrize("make", [blob_scene, texture_scene])
@pytest.mark.parametrize("target", [1, 2])
def test_coarse_generalises_to_another_scene_of_the_kind(make, target):
    img, mask = make(0)
    seg = ColourTextureSegmenter()
    seg.set_prompts([PromptPair(img, mask)])
    timg, tmask = make(target)
    (prob,) = seg.predict([timg])
    assert iou(prob[0] >= 0.5, tmask) > 0.7


def test_coarse_bounded_working_resolution_still_answers_in_the_image_frame():
    img, mask = blob_scene(0, hw=(300, 400))
    seg = ColourTextureSegmenter(config=ColourTextureConfig(input_size=128))
    seg.set_prompts([PromptPair(img, mask)])
    timg, tmask = blob_scene(1, hw=(300, 400))
    (prob,) = seg.predict([timg])
    assert prob.shape == (1, 300, 400) and iou(prob[0] >= 0.5, tmask) > 0.7


def test_coarse_multiclass_one_vs_rest():
    def scene(seed):
        rng = np.random.default_rng(seed)
        hw = (160, 200)
        img = np.stack([rng.integers(0, 90, hw), rng.integers(90, 200, hw), rng.integers(0, 90, hw)], -1)
        labels = np.zeros(hw, np.uint8)
        labels[disk(hw, 50, rng.integers(40, 80), 25)] = 1
        labels[disk(hw, 110, rng.integers(120, 160), 25)] = 2
        img[labels == 1] = (220, 30, 30)
        img[labels == 2] = (30, 30, 220)
        noise = rng.integers(-20, 21, img.shape)
        return np.clip(img + noise * (labels[..., None] > 0), 0, 255).astype(np.uint8), labels

    seg = ColourTextureSegmenter()
    seg.set_prompts([PromptPair(*scene(0))], num_classes=2)
    img, labels = scene(1)
    (prob,) = seg.predict([img])
    assert prob.shape == (2, 160, 200)
    assert iou(prob[0] >= 0.5, labels == 1) > 0.7 and iou(prob[1] >= 0.5, labels == 2) > 0.7


def test_coarse_prompt_without_background_is_refused():
    img, _ = blob_scene(0)
    with pytest.raises(ValueError, match="background"):
        ColourTextureSegmenter().set_prompts([PromptPair(img, np.ones(img.shape[:2], bool))])
    with pytest.raises(ValueError, match="class 2: the prompts give 0 clean foreground"):
        ColourTextureSegmenter().set_prompts([PromptPair(img, _.astype(np.uint8))], num_classes=2)


def test_coarse_deterministic():
    img, mask = blob_scene(0)
    timg, _ = blob_scene(3)
    a, b = ColourTextureSegmenter(), ColourTextureSegmenter()
    a.set_prompts([PromptPair(img, mask)])
    b.set_prompts([PromptPair(img, mask)])
    assert np.array_equal(a.predict([timg])[0], b.predict([timg])[0])


# ------------------------------------------------------------------------------------------------ GrabCut


def tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def partial_prompt(mask: np.ndarray, **kw) -> ComponentPrompt:
    """The component's box, with a coarse mask that misses a band along its border (what a coarse model gives)."""
    ys, xs = np.nonzero(mask)
    coarse = np.zeros_like(mask)
    coarse[ys.min() + 8: ys.max() - 8, xs.min() + 8: xs.max() - 8] = True
    return ComponentPrompt(mask=coarse & mask, box=tight_box(mask), **kw)


def test_refiner_protocol_counting_and_bounded_resolution():
    gc = GrabCutRefiner()
    assert isinstance(gc, PromptedRefiner) and gc.input_size == 1024
    big = np.zeros((512, 2048, 3), np.uint8)
    small = np.zeros((60, 80, 3), np.uint8)
    e_big, e_small = gc.encode([big, small])
    assert gc.encoder_passes == 2
    assert isinstance(e_big, GrabCutEmbedding)
    assert e_big.hw == (512, 2048) and e_big.image.shape == (256, 1024, 3) and e_big.frame.size == (256, 1024)
    assert e_small.image.shape == (60, 80, 3)  # never enlarged


def test_refine_no_prompts():
    gc = GrabCutRefiner()
    (emb,) = gc.encode([blob_scene(0)[0]])
    out = gc.refine(emb, [])
    assert out.shape == (0, 200, 260) and out.dtype == np.float32


def test_refine_completes_a_partial_coarse_mask():
    img, mask = blob_scene(4)
    gc = GrabCutRefiner()
    (emb,) = gc.encode([img])
    p = partial_prompt(mask)
    (out,) = gc.refine(emb, [p])
    assert out.dtype == np.float32 and out.shape == mask.shape
    assert iou(out >= 0.5, mask) > 0.9 > iou(p.mask, mask)


def test_refine_at_reduced_working_resolution_answers_in_the_image_frame():
    img, mask = blob_scene(4, hw=(400, 520))
    gc = GrabCutRefiner(config=GrabCutConfig(input_size=260))
    (emb,) = gc.encode([img])
    (out,) = gc.refine(emb, [partial_prompt(mask)])
    assert out.shape == (400, 520) and iou(out >= 0.5, mask) > 0.85


def test_foreground_outside_the_expanded_box_is_impossible():
    img, mask = blob_scene(5)
    other = disk(mask.shape, 30, 30, 12) & ~mask
    img[other] = (230, 20, 20)
    gc = GrabCutRefiner()
    (emb,) = gc.encode([img])
    pos_outside = np.array([[30.5, 30.5]])  # a positive point on the other object, outside the box
    p = partial_prompt(mask, points=pos_outside, labels=np.array([1], np.int32))
    (out,) = gc.refine(emb, [p])
    x0, y0, x1, y1 = p.box
    margin = max(gc.config.min_margin, gc.config.box_margin * max(x1 - x0, y1 - y0))
    allowed = np.zeros_like(mask)
    rows = slice(max(0, int(np.floor(y0 - margin))), int(np.ceil(y1 + margin)))
    cols = slice(max(0, int(np.floor(x0 - margin))), int(np.ceil(x1 + margin)))
    allowed[rows, cols] = True
    assert not (out[~allowed] > 0).any()
    assert (other & ~allowed).sum() > 100  # the other object really lies outside, and none of it came in


def test_negative_point_is_background_and_positive_point_foreground():
    img, mask = blob_scene(6)
    gc = GrabCutRefiner()
    (emb,) = gc.encode([img])
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    neg = partial_prompt(mask, points=np.array([[cx + 0.5, cy + 0.5]]), labels=np.array([0], np.int32))
    (out,) = gc.refine(emb, [neg])
    assert out[cy, cx] == 0.0  # definite background wins over the coarse mask and the colour model
    assert iou(out >= 0.5, mask) > 0.9
    # a positive point on an object pixel the coarse mask misses (its 8-px border band) is definite foreground
    pos = partial_prompt(mask, points=np.array([[xs.min() + 1.5, cy + 0.5]]), labels=np.array([1], np.int32))
    assert not pos.mask[cy, xs.min() + 1]
    (out2,) = gc.refine(emb, [pos])
    assert out2[cy, xs.min() + 1] == 1.0


def test_degenerate_seeds_fall_back_to_the_coarse_mask():
    img, mask = blob_scene(7, hw=(60, 60))
    gc = GrabCutRefiner()
    (emb,) = gc.encode([img])
    everything = np.ones_like(mask)  # coarse mask = whole image, box = whole image: no background samples
    p = ComponentPrompt(mask=everything, box=np.array([0.0, 0.0, 60.0, 60.0]))
    (out,) = gc.refine(emb, [p])
    assert np.array_equal(out, everything.astype(np.float32))


def whisker_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Green noise, a red disk (centre x=30, radius 12: rightmost pixel column 41) and a 2 px red line from it to
    x=230 along rows 29-30. Returns image, the disk (what a low-resolution coarse model keeps), the line."""
    rng = np.random.default_rng(3)
    hw = (60, 240)
    img = np.stack([rng.integers(0, 90, hw), rng.integers(90, 200, hw), rng.integers(0, 90, hw)], -1).astype(np.uint8)
    body = disk(hw, 30, 30, 12.5)
    line = np.zeros(hw, bool)
    line[29:31, 42:230] = True
    img[body | line] = (220, 40, 40)
    return img, body, line


@pytest.mark.parametrize("band_frac", [0.25, 0.5])
def test_band_is_a_fraction_of_the_box_and_bounds_the_growth(band_frac):
    """The coarse mask has only the disk; the box spans the whole object (212 px long). GrabCut follows the line
    within band = band_frac * 212 px of the disk and never beyond it (definite background there)."""
    img, body, line = whisker_scene()
    box = np.array([17.0, 17.0, 230.0, 43.0])
    gc = GrabCutRefiner(config=GrabCutConfig(band_frac=band_frac))
    (emb,) = gc.encode([img])
    (out,) = gc.refine(emb, [ComponentPrompt(mask=body, box=box)])
    band = band_frac * 213.0
    dist = np.arange(240) - 41.0  # a line pixel's distance from the disk, along the row
    near = line & (dist <= 0.85 * band)[None, :]
    far = line & (dist > band / 0.95 + 2)[None, :]  # DIST_L2 with a 3x3 mask underestimates by up to ~5 %
    assert (out[near] >= 0.5).mean() > 0.95
    assert far.any() and not (out[far] > 0).any()


def test_refine_deterministic():
    img, mask = blob_scene(8)
    a = GrabCutRefiner()
    b = GrabCutRefiner()
    p = [partial_prompt(mask)]
    assert np.array_equal(a.refine(a.encode([img])[0], p), b.refine(b.encode([img])[0], p))


def test_refine_rejects_foreign_embedding_and_wrong_frame():
    gc = GrabCutRefiner()
    with pytest.raises(TypeError, match="encode"):
        gc.refine(object(), [])
    img, mask = blob_scene(0)
    (emb,) = gc.encode([img])
    with pytest.raises(ValueError, match="frame"):
        gc.refine(emb, [ComponentPrompt(mask=np.ones((5, 5), bool), box=np.array([0.0, 0, 5, 5]))])


# ------------------------------------------------------------------------------------------------ synthetic scenes


@pytest.mark.parametrize("kind", KINDS)
def test_coarse_on_synthetic_scenes_of_the_prompts_kind(kind):
    prompt = make_scene(kind, seed=0, size=(384, 384))
    seg = ColourTextureSegmenter()
    seg.set_prompts([PromptPair(prompt.image, prompt.mask)])
    for seed in (1, 2):
        target = make_scene(kind, seed=seed, size=(384, 384))
        (prob,) = seg.predict([target.image])
        assert iou(prob[0] >= 0.5, target.mask) > 0.9


def test_hybrid_on_a_synthetic_scene_with_prompts_from_the_coarse_map():
    prompt = make_scene("vessels", seed=0, size=(256, 256))
    target = make_scene("vessels", seed=1, size=(256, 256))
    seg, gc = ColourTextureSegmenter(), GrabCutRefiner()
    seg.set_prompts([PromptPair(prompt.image, prompt.mask)])
    (coarse,) = seg.predict([target.image])
    prompts, _ = prompts_from_mask(coarse[0])
    (emb,) = gc.encode([target.image])
    refined = gc.refine(emb, prompts)
    assert refined.shape == (len(prompts), 256, 256) and len(prompts) >= 1
    merged = np.maximum(refined.max(axis=0), coarse[0]) >= 0.5
    assert iou(merged, target.mask) > 0.9


# ------------------------------------------------------------------------------------------------ job wiring


def _job_cfg(backend: str, options: dict):
    from job.config import job_config_from_dict

    return job_config_from_dict({"input": "/tmp/in", "output": "/tmp/out", "prompts": "/tmp/prompts",
                                 "backend": backend, "backend_options": options})


def test_backend_options_reach_the_classical_models():
    from job.models import build_coarse, build_refiner

    cfg = _job_cfg("classical", {"coarse_model": "colour-texture", "refiner_model": "grabcut", "coarse_input_size": 192,
                                 "coarse_texture_scales": [5, 9], "refiner_input_size": 384, "refiner_iterations": 2})
    img, mask = blob_scene(0)
    seg = build_coarse(cfg, [PromptPair(img, mask)])
    gc = build_refiner(cfg)
    assert seg.config == ColourTextureConfig(input_size=192, texture_scales=(5, 9)) and seg.input_size == 192
    assert gc.config == GrabCutConfig(input_size=384, iterations=2) and gc.input_size == 384


def test_backend_options_reach_the_proxy_models():
    from finedetail.models.proxy import ProxySAMConfig, ProxySegGPTConfig
    from job.models import backend_configs

    cfg = _job_cfg("proxy", {"coarse_level": 0.4, "refiner_threshold": 0.3})
    assert backend_configs(cfg) == (ProxySegGPTConfig(level=0.4), ProxySAMConfig(threshold=0.3))


@pytest.mark.parametrize("backend, options, match", [
    ("classical", {"refiner_model": "grabcut", "grabcut_iterations": 2},
     r"unknown backend_options key 'grabcut_iterations'.*'refiner_iterations'"),
    ("classical", {"input_size": 2}, r"unknown backend_options key 'input_size'.*'coarse_input_size'"),
    ("classical", {"refiner_model": "grabcut", "refiner_iterations": 0}, r"GrabCutConfig.*iterations must be >= 1"),
    ("classical", {"coarse_model": "colour-texture", "coarse_input_size": "big"}, r"ColourTextureConfig"),
    ("proxy", {"refiner_input_size": 512}, r"unknown backend_options key 'refiner_input_size'.*'refiner_threshold'"),
    ("seggpt-sam", {"refiner_input_size": 512}, r"takes no backend_options"),
])
def test_backend_options_refused_naming_the_key(backend, options, match):
    from job.models import backend_configs

    with pytest.raises(ValueError, match=match):
        backend_configs(_job_cfg(backend, options))
