"""The resolution-limited proxies: protocol, counting, determinism, and the resolution story they exist to tell.

Scenes are hand-built: green noise background (the key is 0 there) and pure red (255, 0, 0) structures (key 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from finedetail import tiling
from finedetail.models.base import CoarseSegmenter, PromptedRefiner
from finedetail.models.proxy import (
    FINE_THRESHOLD,
    ProxySAM,
    ProxySAMConfig,
    ProxySAMEmbedding,
    ProxySegGPT,
    ProxySegGPTConfig,
    key_of,
    pool_mean,
    seggpt_patch_prob,
)
from finedetail.synthetic import make_scene, object_key
from finedetail.frames import Scale
from finedetail.transforms import parse_tta
from finedetail.types import ComponentPrompt, PromptPair
from jobkit import map_tiles

RED = (255, 0, 0)


def background(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = rng.integers(0, 80, (h, w))
    img[..., 1] = rng.integers(100, 200, (h, w))
    img[..., 2] = rng.integers(0, 80, (h, w))
    return img


def whole_image_prompt(hw: tuple[int, int], **kw) -> ComponentPrompt:
    h, w = hw
    return ComponentPrompt(mask=np.zeros((h, w), bool), box=np.array([0.0, 0.0, w, h]), **kw)


def sam_map(image: np.ndarray, sam: ProxySAM | None = None) -> np.ndarray:
    """ProxySAM on the whole image, prompted with a box covering all of it -> (H, W) float32."""
    sam = sam or ProxySAM()
    (emb,) = sam.encode([image])
    return sam.refine(emb, [whole_image_prompt(image.shape[:2])])[0]


def recall(prob: np.ndarray, gt: np.ndarray) -> float:
    return float((prob[gt] >= 0.5).mean())


@pytest.fixture(scope="module")
def wire_scene() -> tuple[np.ndarray, np.ndarray]:
    """1024 x 1024, one vertical 1-px red line at column 501 (rows 100..899)."""
    img = background(1024, 1024)
    gt = np.zeros((1024, 1024), bool)
    gt[100:900, 501] = True
    img[gt] = RED
    return img, gt


def test_key_is_one_on_red_zero_on_green_noise(wire_scene):
    img, gt = wire_scene
    key = key_of(img)
    assert key.dtype == np.float32 and key.shape == gt.shape
    assert np.all(key[gt] == 1.0) and np.all(key[~gt] == 0.0)


# ------------------------------------------------------------------------------------------------ pure parts


def test_pool_mean_partial_cells_average_valid_pixels_only():
    a = np.array([[1, 0, 1],
                  [0, 0, 1],
                  [1, 1, 0]], np.float32)
    np.testing.assert_allclose(pool_mean(a, 2), [[0.25, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("mean, prob", [(0.0, 0.0), (0.25, 0.0), (0.5, 0.5), (0.75, 1.0), (1.0, 1.0), (0.375, 0.25)])
def test_seggpt_patch_rule(mean, prob):
    assert seggpt_patch_prob(np.array([mean]))[0] == pytest.approx(prob)


@pytest.mark.parametrize("mean, prob", [(0.0625, 0.0), (0.125, 0.5), (0.1875, 1.0)])
def test_seggpt_patch_rule_lower_level(mean, prob):
    assert seggpt_patch_prob(np.array([mean]), level=0.125)[0] == pytest.approx(prob)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="threshold"):
        ProxySAMConfig(threshold=0.0)
    with pytest.raises(ValueError, match="box_expand"):
        ProxySAMConfig(box_expand=-0.1)
    with pytest.raises(ValueError, match="level"):
        ProxySegGPTConfig(level=0.0)


# ------------------------------------------------------------------------------------------------ protocol


def test_protocol_conformance_and_pass_counting():
    seg, sam = ProxySegGPT(), ProxySAM()
    assert isinstance(seg, CoarseSegmenter) and isinstance(sam, PromptedRefiner)
    assert (seg.input_size, sam.input_size) == (448, 1024)
    imgs = [background(64, 96, s) for s in range(3)]
    embs = sam.encode(imgs)
    assert sam.encoder_passes == 3 and all(e.hw == (64, 96) for e in embs)
    seg.set_prompts([PromptPair(imgs[0], np.ones((64, 96), bool))])
    maps = seg.predict(imgs[:2])
    assert seg.encoder_passes == 2
    seg.set_prompts([PromptPair(imgs[0], np.ones((64, 96), bool))] * 3)
    seg.predict(imgs[:1])
    assert seg.encoder_passes == 2 + 3  # like SegGPT: one pass per (prompt, target) pair
    assert [m.shape for m in maps] == [(1, 64, 96)] * 2 and all(m.dtype == np.float32 for m in maps)


def test_seggpt_predict_before_set_prompts_raises():
    with pytest.raises(RuntimeError, match="set_prompts"):
        ProxySegGPT().predict([background(32, 32)])


def test_seggpt_multiclass_repeats_the_key_map():
    seg = ProxySegGPT()
    img = background(64, 64)
    seg.set_prompts([PromptPair(img, np.ones((64, 64), np.uint8))], num_classes=3)
    (m,) = seg.predict([img])
    assert m.shape == (3, 64, 64) and np.array_equal(m[0], m[2])


def test_refine_no_prompts_returns_empty_without_work():
    sam = ProxySAM()
    (emb,) = sam.encode([background(40, 70)])
    out = sam.refine(emb, [])
    assert out.shape == (0, 40, 70) and out.dtype == np.float32


def test_refine_rejects_foreign_embedding_and_wrong_frame():
    sam = ProxySAM()
    with pytest.raises(TypeError, match="encode"):
        sam.refine(object(), [])
    (emb,) = sam.encode([background(40, 70)])
    with pytest.raises(ValueError, match="frame"):
        sam.refine(emb, [whole_image_prompt((41, 70))])


def test_embedding_grids():
    (emb,) = ProxySAM().encode([background(300, 600)])
    assert isinstance(emb, ProxySAMEmbedding)
    assert emb.frame.size == (512, 1024) and emb.patches.shape == (64, 64) and emb.fine.shape == (256, 256)
    assert np.all(emb.fine[128:] == 0)  # the zero padding below the image


def test_deterministic(wire_scene):
    img, _ = wire_scene
    img = img.copy()
    img[200:400, 200:400] = RED
    a, b = sam_map(img), sam_map(img)
    assert np.array_equal(a, b)
    seg = ProxySegGPT()
    seg.set_prompts([PromptPair(img, np.ones(img.shape[:2], bool))])
    assert np.array_equal(seg.predict([img])[0], seg.predict([img])[0])


# ------------------------------------------------------------------------------------------------ prompt rules


@pytest.fixture(scope="module")
def two_blobs() -> np.ndarray:
    """256 x 256 (upscaled 4x by the model: one cell = 1 image px): red squares A [40:80, 40:80] and B [160:200,
    160:200]."""
    img = background(256, 256, seed=1)
    img[40:80, 40:80] = RED
    img[160:200, 160:200] = RED
    return img


def _prompt(box, points=(), labels=(), logits=None):
    return ComponentPrompt(mask=np.zeros((256, 256), bool), box=np.asarray(box, np.float64),
                           points=np.asarray(points, np.float64).reshape(-1, 2),
                           labels=np.asarray(labels, np.int32), logits=logits)


def test_box_confines_the_answer(two_blobs):
    sam = ProxySAM()
    (emb,) = sam.encode([two_blobs])
    (m,) = sam.refine(emb, [_prompt([40, 40, 80, 80])]) >= 0.5
    assert m[40:80, 40:80].all() and not m[160:200, 160:200].any()


def test_positive_point_takes_its_whole_component_outside_the_box(two_blobs):
    sam = ProxySAM()
    (emb,) = sam.encode([two_blobs])
    (m,) = sam.refine(emb, [_prompt([40, 40, 80, 80], points=[[180.5, 180.5]], labels=[1])]) >= 0.5
    assert m[40:80, 40:80].all() and m[160:200, 160:200].all()


def test_without_the_box_only_points_and_mask_input_select(two_blobs):
    sam = ProxySAM(config=ProxySAMConfig(use_box=False))
    (emb,) = sam.encode([two_blobs])
    none, point = sam.refine(emb, [_prompt([40, 40, 80, 80]),
                                   _prompt([40, 40, 80, 80], points=[[180.5, 180.5]], labels=[1])]) >= 0.5
    assert not none.any()
    assert point[160:200, 160:200].all() and not point[40:80, 40:80].any()


def test_negative_point_clears_its_cell(two_blobs):
    sam = ProxySAM()
    (emb,) = sam.encode([two_blobs])
    (m,) = sam.refine(emb, [_prompt([40, 40, 80, 80], points=[[60.5, 60.5]], labels=[0])]) >= 0.5
    assert not m[60, 60] and m[40:56, 40:80].all()


def test_mask_input_is_or_ed_in(two_blobs):
    sam = ProxySAM()
    (emb,) = sam.encode([two_blobs])
    logits = np.full((256, 256), -20.0, np.float32)
    logits[100:120, 10:30] = 20.0  # on background: the key says no, the mask input says yes
    (m,) = sam.refine(emb, [_prompt([40, 40, 80, 80], logits=logits)]) >= 0.5
    assert m[100:120, 10:30].all() and m[40:80, 40:80].all() and not m[160:200, 160:200].any()
    with pytest.raises(ValueError, match="256"):
        sam.refine(emb, [_prompt([40, 40, 80, 80], logits=np.zeros((64, 64), np.float32))])


# ------------------------------------------------------------------------------------------------ the story


def test_one_px_line_is_lost_at_1x(wire_scene):
    img, gt = wire_scene
    assert recall(sam_map(img), gt) == 0.0


def test_2x_handed_whole_is_shrunk_back_and_loses_the_line_too(wire_scene):
    img, gt = wire_scene
    up = Scale.by_factor(gt.shape, 2.0)
    prob = up.invert_image(sam_map(up.apply_image(img)))
    assert prob.shape == gt.shape and recall(prob, gt) == 0.0


@pytest.mark.parametrize("overlap", [0, 128])
def test_2x_in_1024_tiles_recovers_the_line(wire_scene, overlap):
    img, gt = wire_scene
    up = Scale.by_factor(gt.shape, 2.0)
    sam = ProxySAM()
    prob2 = map_tiles(lambda t: sam_map(np.ascontiguousarray(t), sam), up.apply_image(img),
                             tile=1024, overlap=overlap)
    assert sam.encoder_passes == (4 if overlap == 0 else 9)
    prob = up.invert_image(prob2)
    assert recall(prob, gt) == 1.0
    assert ((prob >= 0.5) & ~gt).sum() <= 2 * gt.sum()  # at most one extra column: the 4-px cell's reach


def test_crop_zoomed_to_1024_recovers_the_line(wire_scene):
    img, gt = wire_scene
    win = tiling.Window(400, 373, 656, 629)  # 256 x 256 around the line -> zoom 4
    zoom = Scale.to_size(win.hw, (1024, 1024))
    back = zoom.invert_image(sam_map(zoom.apply_image(np.ascontiguousarray(img[win.slices]))))
    assert recall(back, gt[win.slices]) == 1.0
    assert (back >= 0.5).sum() == gt[win.slices].sum()


def test_small_images_are_upsampled_like_sam(wire_scene):
    img, gt = wire_scene
    small, sgt = img[:256, 400:656], gt[:256, 400:656]  # 256 x 256: the model upsamples 4x
    assert recall(sam_map(np.ascontiguousarray(small)), sgt) == 1.0


@pytest.mark.parametrize("dx, kept", [(0, False), (1, True), (2, True), (3, True)])
def test_shifted_grid_recovers_a_line_straddling_cells(dx, kept):
    img = background(1024, 1024, seed=2)
    gt = np.zeros((1024, 1024), bool)
    gt[100:900, 503:505] = True  # 2 px: columns 503 | 504 straddle a 4-px cell border (pooled 0.25 + 0.25)
    img[gt] = RED
    shift = parse_tta(f"shift:0,{dx}")
    prob = shift.invert_image(sam_map(shift.apply_image(img)))
    assert (recall(prob, gt[:, :]) > 0.99) is kept


def test_threshold_sits_between_one_and_two_columns_of_a_cell():
    assert 5 / 16 < FINE_THRESHOLD <= 6 / 16


def test_seggpt_keeps_blobs_and_loses_3px_structures():
    img = background(1024, 1024, seed=3)
    yy, xx = np.mgrid[:1024, :1024]
    blob = (yy - 300) ** 2 + (xx - 300) ** 2 < 150**2
    wire = np.zeros_like(blob)
    wire[600:900, 700:703] = True
    img[blob | wire] = RED
    seg = ProxySegGPT()
    seg.set_prompts([PromptPair(img, blob | wire)])
    (prob,) = seg.predict([img])
    fg = prob[0] >= 0.5
    assert (fg & blob).sum() / (fg | blob).sum() > 0.9
    assert not fg[wire].any()


# ------------------------------------------------------------------------------------------------ synthetic scenes


def test_key_of_is_the_synthetic_object_key():
    scene = make_scene("fur", seed=0, size=(128, 160))
    assert np.array_equal(key_of(scene.image), object_key(scene.image))
    assert np.array_equal(key_of(scene.image) == 1.0, scene.mask)


def test_wires_scene_story():
    """Skeleton recall of the 1-3 px wires of a 1024 scene: lost at 1x and by a 2x image handed whole (the model
    shrinks it back), recovered by 2x in 1024 tiles (the pipeline's tiling: overlap 128) and by a 4x crop."""
    scene = make_scene("wires", seed=1, size=(1024, 1024))
    sk = scene.skeleton
    sam = ProxySAM()
    r1 = recall(sam_map(scene.image, sam), sk)
    up = Scale.by_factor((1024, 1024), 2.0)
    big = up.apply_image(scene.image)
    r_whole = recall(up.invert_image(sam_map(big, sam)), sk)
    tiles = map_tiles(lambda t: sam_map(np.ascontiguousarray(t), sam), big, tile=1024, overlap=128)
    r_tiles = recall(up.invert_image(tiles), sk)
    win = tiling.Window(256, 256, 512, 512)
    zoom = Scale.to_size(win.hw, (1024, 1024))
    crop = zoom.invert_image(sam_map(zoom.apply_image(np.ascontiguousarray(scene.image[win.slices])), sam))
    assert sk[win.slices].sum() > 100
    r_crop = recall(crop, sk[win.slices])
    assert r1 < 0.3 and r_whole < r1 + 0.05
    assert r_tiles > 0.8 and r_crop > 0.95


def test_seggpt_two_class_scene_uses_the_class_keys():
    scene = make_scene("fur", seed=0, size=(1024, 1024), classes=2)
    seg = ProxySegGPT()
    seg.set_prompts([PromptPair(scene.image, scene.labels)], num_classes=2)
    (prob,) = seg.predict([scene.image])
    blob = scene.labels == 2
    fg_blob = prob[1] >= 0.5
    assert (fg_blob & blob).sum() / (fg_blob | blob).sum() > 0.85  # the body (class 2, blue)
    assert recall(prob[0], scene.skeleton) < 0.05  # the strands (class 1, red): too thin for the 448 canvas
