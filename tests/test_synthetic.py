"""Synthetic scenes: determinism, exact colour key, mask/thin/skeleton relations, real thinness."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from finedetail.synthetic import (
    BLOB_COLOR,
    KINDS,
    OBJECT_COLOR,
    Scene,
    class_keys,
    make_prompt_pair,
    make_scene,
    object_key,
)

SIZES = [(64, 64), (65, 97), (128, 192), (512, 512)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_scene_arrays_and_relations(kind, size):
    sc = make_scene(kind, seed=7, size=size)
    assert isinstance(sc, Scene) and sc.kind == kind and sc.seed == 7 and sc.labels is None
    assert sc.image.shape == (*size, 3) and sc.image.dtype == np.uint8 and sc.image.flags.c_contiguous
    for a in (sc.mask, sc.thin, sc.skeleton):
        assert a.shape == size and a.dtype == bool
    assert not np.any(sc.skeleton & ~sc.thin), "skeleton must lie inside the thin parts"
    assert not np.any(sc.thin & ~sc.mask), "thin parts must lie inside the mask"
    assert sc.skeleton.any() and (sc.mask & ~sc.thin).any(), "every scene has thin parts and a blob part"
    assert 0.002 < sc.mask.mean() < 0.6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(64, 64), (65, 97), (300, 200)])
def test_colour_key_is_exact(kind, size):
    sc = make_scene(kind, seed=3, size=size)
    key = object_key(sc.image)
    assert key.dtype == np.float32 and key.shape == size
    np.testing.assert_array_equal(key, sc.mask.astype(np.float32))
    keys = class_keys(sc.image)
    assert keys.shape == (2, *size)
    np.testing.assert_array_equal(keys[0], key)
    np.testing.assert_array_equal(keys[1], 0.0)  # nothing bluish in a binary scene
    # object pixels stay close to the kind's colour
    dev = np.abs(sc.image[sc.mask].astype(int) - np.array(OBJECT_COLOR[kind]))
    assert dev.max() <= 12


def test_object_key_formula_edges():
    # R - max(G, B): 40 -> 0, 80 -> 0.5, 120 -> 1, and clipped outside
    img = np.array([[[140, 100, 20], [180, 100, 60], [220, 100, 100], [255, 0, 0], [0, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(object_key(img), np.array([[0.0, 0.5, 1.0, 1.0, 0.0]], np.float32))
    with pytest.raises(TypeError, match="uint8"):
        object_key(img.astype(np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind):
    a = make_scene(kind, seed=11, size=(96, 128))
    b = make_scene(kind, seed=11, size=(96, 128))
    c = make_scene(kind, seed=12, size=(96, 128))
    for name in ("image", "mask", "thin", "skeleton"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.mask, c.mask)
    assert not np.array_equal(a.image, c.image)


def test_kinds_differ_for_one_seed():
    masks = [make_scene(k, seed=0, size=(96, 96)).mask for k in KINDS]
    assert all(not np.array_equal(masks[i], masks[j]) for i in range(4) for j in range(i + 1, 4))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", [(128, 192), (512, 512)])
def test_thin_parts_are_thin(kind, seed, size):
    sc = make_scene(kind, seed=seed, size=size)
    m8 = sc.mask.view(np.uint8)
    # thin pixels away from the blob parts (where a strand joins a body it is not "thin" locally)
    blob = (sc.mask & ~sc.thin).view(np.uint8)
    far = sc.thin & ~cv2.dilate(blob, np.ones((9, 9), np.uint8)).astype(bool)
    assert far.sum() > 30
    # a 5x5 erosion removes anything at most 4 px wide: only rare crossings of two 3-px lines survive it
    survive5 = cv2.erode(m8, np.ones((5, 5), np.uint8)).astype(bool)
    assert np.count_nonzero(survive5 & far) <= 0.005 * far.sum()
    # a 3x3 erosion keeps only the centre line of 3-px parts and crossings
    survive3 = cv2.erode(m8, np.ones((3, 3), np.uint8)).astype(bool)
    assert np.count_nonzero(survive3 & far) <= 0.3 * far.sum()
    # and nothing thin is ever more than ~3.6 px from the background (two 3-px lines crossing at a shallow angle)
    dist = cv2.distanceTransform(np.pad(m8, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    assert dist[far].max() <= 3.7


@pytest.mark.parametrize("kind", ["fur", "wires"])
def test_fur_and_wires_are_mostly_one_or_two_px(kind):
    sc = make_scene(kind, seed=5, size=(256, 256))
    blob = (sc.mask & ~sc.thin).view(np.uint8)
    far = sc.thin & ~cv2.dilate(blob, np.ones((9, 9), np.uint8)).astype(bool)
    survive3 = cv2.erode(sc.mask.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert np.count_nonzero(survive3 & far) <= 0.05 * far.sum()


@pytest.mark.parametrize("kind", KINDS)
def test_two_class_scene(kind):
    sc = make_scene(kind, seed=4, size=(128, 160), classes=2)
    assert sc.labels is not None and sc.labels.dtype == np.uint8 and sc.labels.shape == (128, 160)
    assert set(np.unique(sc.labels)) == {0, 1, 2}
    np.testing.assert_array_equal(sc.labels > 0, sc.mask)
    np.testing.assert_array_equal(sc.labels == 1, sc.thin)
    keys = class_keys(sc.image)
    np.testing.assert_array_equal(keys[0], (sc.labels == 1).astype(np.float32))
    np.testing.assert_array_equal(keys[1], (sc.labels == 2).astype(np.float32))
    dev = np.abs(sc.image[sc.labels == 2].astype(int) - np.array(BLOB_COLOR))
    assert dev.max() <= 12
    # same geometry as the binary scene of the same seed
    np.testing.assert_array_equal(make_scene(kind, seed=4, size=(128, 160)).mask, sc.mask)


def test_background_is_textured_and_unsaturated():
    sc = make_scene("vessels", seed=2, size=(256, 256))
    bg = sc.image[~sc.mask].astype(int)
    assert bg.std(axis=0).min() > 5  # not flat
    spread = bg.max(axis=1) - bg.min(axis=1)
    assert np.percentile(spread, 99) <= 45  # low saturation


def test_make_prompt_pair():
    image, mask = make_prompt_pair("wires", seed=9, size=(80, 120))
    sc = make_scene("wires", seed=9, size=(80, 120))
    np.testing.assert_array_equal(image, sc.image)
    np.testing.assert_array_equal(mask, sc.mask)
    image, labels = make_prompt_pair("wires", seed=9, size=(80, 120), classes=2)
    assert labels.dtype == np.uint8 and labels.max() == 2


def test_large_scene():
    sc = make_scene("roads", seed=0, size=(2048, 2048))
    np.testing.assert_array_equal(object_key(sc.image), sc.mask.astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "cats", "seed": 0}, "unknown scene kind"),
        ({"kind": "fur", "seed": -1}, "seed"),
        ({"kind": "fur", "seed": 1.5}, "seed"),
        ({"kind": "fur", "seed": 0, "size": (16, 64)}, "size"),
        ({"kind": "fur", "seed": 0, "size": 64}, "size"),
        ({"kind": "fur", "seed": 0, "size": (64.0, 64)}, "size"),
        ({"kind": "fur", "seed": 0, "classes": 3}, "classes"),
    ],
)
def test_errors(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=match):
        make_scene(kind, **kwargs)


@pytest.mark.parametrize("size", [(256, 256), (512, 512), (1024, 1024)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wires_poles_have_blob_parts_a_448_px_model_sees(size, seed):
    # every pole carries a transformer box >= 3.5 % of the short side (>= 15.7 px on a 448 canvas, about one 16-px
    # SegGPT patch), and the 1-2 px wires hang from the blob parts (they touch them)
    sc = make_scene("wires", seed=seed, size=size)
    blob = (sc.mask & ~sc.thin).view(np.uint8)
    k = int(0.035 * min(size)) - 1
    cores = cv2.erode(blob, np.ones((k, k), np.uint8))
    n_boxes = cv2.connectedComponents(cores)[0] - 1
    n_poles = cv2.connectedComponents(blob)[0] - 1
    assert n_boxes >= 2 and n_boxes >= n_poles
    touching = sc.thin & cv2.dilate(blob, np.ones((3, 3), np.uint8)).astype(bool)
    assert touching.sum() >= 2 * n_poles
