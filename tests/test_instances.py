"""Instances from masks and their COCO records (finedetail.instances) and the per-image outputs that carry them
(finedetail.outputs). Golden RLEs come from pycocotools (``pycocotools.mask.encode`` of the same Fortran-ordered
uint8 mask); its ``bytes`` counts are compared as ``str``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from finedetail.codecs import decode_label_map, decode_mask
from finedetail.instances import coco_dataset, coco_image_record, instances_from_mask, rle_of_pixels
from finedetail.outputs import check_class_names, render_outputs
from finedetail.rle import rle_encode

mask_utils = pytest.importorskip("pycocotools.mask")


def _cocorle(rle):
    return {"size": rle["size"], "counts": rle["counts"].encode()}


def _decode(rle) -> np.ndarray:
    return mask_utils.decode(_cocorle(rle)).astype(bool)


def _m(rows: list[str]) -> np.ndarray:
    return np.array([[ch == "#" for ch in r] for r in rows], bool)


# ----------------------------------------------------------------------------------------------- rle_of_pixels


@pytest.mark.parametrize("rows", [
    ["....", "...."],            # empty: one background run
    ["####", "####"],            # full: empty leading run, no trailing run
    ["#...", "...."],            # first pixel only
    ["....", "...#"],            # last pixel only: ends on a foreground run
    [".#.", "#.#", ".#."],       # runs across column boundaries
])
def test_rle_of_pixels_matches_rle_encode_and_pycocotools(rows):
    mask = _m(rows)
    r, c = np.nonzero(mask)
    got = rle_of_pixels(r, c, mask.shape)
    assert got == rle_encode(mask)
    golden = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert got["counts"] == golden["counts"].decode()


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(bool, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9)))
def test_rle_of_pixels_property(mask):
    r, c = np.nonzero(mask)
    assert rle_of_pixels(r, c, mask.shape) == rle_encode(mask)


# ----------------------------------------------------------------------------------------------- instances


def test_instances_literal_two_classes():
    thin = _m(["......",
               "....#.",
               "...#..",
               "......"])
    blob = _m(["##....",
               "##....",
               "......",
               ".....#"])
    mask = np.stack([thin, blob])
    prob = np.zeros(mask.shape, np.float32)
    prob[0][thin] = [0.6, 0.8]
    prob[1][blob] = [1.0, 0.5, 1.0, 0.5, 0.75]  # raster order: (0,0) (0,1) (1,0) (1,1) (3,5)
    inst = instances_from_mask(mask, prob, classes=("wire", "pole"))
    # reading order of the boxes: pole (0,0), wire (1,3), pole (3,5)
    assert [i["id"] for i in inst] == [1, 2, 3]
    assert [i["category_id"] for i in inst] == [2, 1, 2]
    assert [i["bbox"] for i in inst] == [[0, 0, 2, 2], [3, 1, 2, 2], [5, 3, 1, 1]]
    assert [i["area"] for i in inst] == [4, 2, 1]
    assert [i["score"] for i in inst] == pytest.approx([0.75, 0.7, 0.75], abs=1e-6)
    assert all(i["iscrowd"] == 0 for i in inst)
    np.testing.assert_array_equal(_decode(inst[1]["segmentation"]), thin)
    for i in inst:  # pycocotools agrees on box and area
        assert mask_utils.toBbox(_cocorle(i["segmentation"])).tolist() == i["bbox"]
        assert int(mask_utils.area(_cocorle(i["segmentation"]))) == i["area"]


def test_instances_sharing_a_box_corner_are_ordered_by_their_first_pixel():
    # two 8-components of one class whose boxes both start at (row 0, col 0)
    mask = _m(["#..#",
               "..#.",
               ".#..",
               "#..."])[None]
    inst = instances_from_mask(mask, mask.astype(np.float32), classes=["a"])
    assert [i["bbox"] for i in inst] == [[0, 0, 1, 1], [0, 0, 4, 4]]
    assert [i["area"] for i in inst] == [1, 4]


def test_instances_same_box_corner_across_classes_ties_to_lower_class():
    mask = np.stack([_m(["#.", ".."]), _m([".#", "##"])])  # disjoint, but both boxes start at (row 0, col 0)
    inst = instances_from_mask(mask, mask.astype(np.float32), classes=["a", "b"])
    assert [(i["category_id"], i["bbox"]) for i in inst] == [(1, [0, 0, 1, 1]), (2, [0, 0, 2, 2])]


@pytest.mark.parametrize("min_area, kept", [(0, [1, 2, 3]), (1, [1, 2, 3]), (2, [2, 3]), (3, [3]), (4, [])])
def test_min_area_edge_is_exact(min_area, kept):
    """Components with area < min_area are dropped; area == min_area is kept."""
    mask = _m(["#.##.###"])[None]
    inst = instances_from_mask(mask, mask.astype(np.float32), classes=["a"], min_area=min_area)
    assert [i["area"] for i in inst] == kept
    assert [i["id"] for i in inst] == list(range(1, len(kept) + 1))


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.integers(0, 2)))
def test_instances_tile_each_class_exactly(labels):
    mask = np.stack([labels == 1, labels == 2])
    inst = instances_from_mask(mask, mask.astype(np.float32), classes=["a", "b"])
    rebuilt = np.zeros(labels.shape, np.uint8)
    for i in inst:
        m = _decode(i["segmentation"])
        assert not (rebuilt[m] > 0).any(), "two instances share a pixel"
        rebuilt[m] = i["category_id"]
        assert i["score"] == 1.0
    np.testing.assert_array_equal(rebuilt, labels)
    keys = [(i["bbox"][1], i["bbox"][0]) for i in inst]
    assert keys == sorted(keys)


@pytest.mark.parametrize("bad, exc", [
    (dict(mask=np.zeros((2, 3), bool)), TypeError),
    (dict(mask=np.zeros((1, 2, 3), np.uint8)), TypeError),
    (dict(prob=np.zeros((1, 2, 2), np.float32)), TypeError),
    (dict(classes=["a", "b"]), ValueError),
    (dict(min_area=-1), ValueError),
])
def test_instances_refuse_misuse(bad, exc):
    args = dict(mask=np.zeros((1, 2, 3), bool), prob=np.zeros((1, 2, 3), np.float32), classes=["a"], min_area=1)
    args.update(bad)
    mask, prob = args.pop("mask"), args.pop("prob")
    with pytest.raises(exc):
        instances_from_mask(mask, prob, **args)


# ----------------------------------------------------------------------------------------------- COCO records


def _labels_scene():
    labels = np.zeros((6, 7), np.uint8)
    labels[0:2, 0:2] = 2
    labels[3, 1:6] = 1
    labels[5, 6] = 2
    mask = np.stack([labels == 1, labels == 2])
    return labels, mask, mask.astype(np.float32) * 0.9


def test_image_record_loads_in_pycocotools(tmp_path):
    coco_mod = pytest.importorskip("pycocotools.coco")
    labels, mask, prob = _labels_scene()
    inst = instances_from_mask(mask, prob, classes=["road", "water"])
    rec = coco_image_record(inst, classes=["road", "water"], file_name="sub/a.jpg", hw=labels.shape,
                            info={"config_hash": "abc"})
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rec))
    coco = coco_mod.COCO(str(path))
    assert coco.getImgIds() == [1] and coco.imgs[1]["file_name"] == "sub/a.jpg"
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["road", "water"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == 3
    back = np.zeros(labels.shape, np.uint8)
    for a in anns:
        back[coco.annToMask(a).astype(bool)] = a["category_id"]
    np.testing.assert_array_equal(back, labels)
    assert rec["info"] == {"config_hash": "abc"}


def test_coco_dataset_renumbers_and_checks_categories():
    _, mask, prob = _labels_scene()
    inst = instances_from_mask(mask, prob, classes=["road", "water"])
    recs = [coco_image_record(inst[:k], classes=["road", "water"], file_name=f"{k}.png", hw=(6, 7))
            for k in (2, 0, 3)]
    ds = coco_dataset(recs, classes=["road", "water"])
    assert [i["id"] for i in ds["images"]] == [1, 2, 3]
    assert [i["file_name"] for i in ds["images"]] == ["2.png", "0.png", "3.png"]
    assert [a["id"] for a in ds["annotations"]] == [1, 2, 3, 4, 5]
    assert [a["image_id"] for a in ds["annotations"]] == [1, 1, 3, 3, 3]
    with pytest.raises(ValueError, match="categories"):
        coco_dataset(recs, classes=["water", "road"])


# ----------------------------------------------------------------------------------------------- render_outputs


def test_render_outputs_multiclass_files_agree():
    labels, mask, prob = _labels_scene()
    image = np.full(labels.shape + (3,), 90, np.uint8)
    files = render_outputs(image, prob, mask, classes=("road", "water"), coco=True, file_name="k.png",
                           info={"config_hash": "h"})
    assert set(files) == {("labels", ".png"), ("masks/road", ".png"), ("masks/water", ".png"),
                          ("probs/road", ".png"), ("probs/water", ".png"), ("rle", ".json"),
                          ("overlays", ".png"), ("instances", ".json")}
    np.testing.assert_array_equal(decode_label_map(files[("labels", ".png")]), labels)
    rles = json.loads(files[("rle", ".json")])
    assert list(rles) == ["road", "water"]
    for c, name in enumerate(("road", "water")):
        np.testing.assert_array_equal(_decode(rles[name]), labels == c + 1)
        np.testing.assert_array_equal(decode_mask(files[(f"masks/{name}", ".png")]), labels == c + 1)
    rec = json.loads(files[("instances", ".json")])
    assert rec["images"] == [{"id": 1, "file_name": "k.png", "height": 6, "width": 7}]
    assert len(rec["annotations"]) == 3 and rec["info"] == {"config_hash": "h"}


def test_render_outputs_binary_is_unchanged_and_coco_is_opt_in():
    mask = np.zeros((1, 4, 5), bool)
    mask[0, 1:3, 1:4] = True
    image = np.zeros((4, 5, 3), np.uint8)
    files = render_outputs(image, mask.astype(np.float32), mask, classes=["object"])
    assert set(files) == {("masks", ".png"), ("probs", ".png"), ("rle", ".json"), ("overlays", ".png")}
    np.testing.assert_array_equal(_decode(json.loads(files[("rle", ".json")])), mask[0])
    files = render_outputs(image, mask.astype(np.float32), mask, classes=["object"], overlays=False, coco=True)
    assert ("overlays", ".png") not in files
    assert len(json.loads(files[("instances", ".json")])["annotations"]) == 1


def test_render_outputs_refuses_a_pixel_in_two_classes():
    mask = np.ones((2, 2, 2), bool)
    with pytest.raises(ValueError, match="several classes"):
        render_outputs(np.zeros((2, 2, 3), np.uint8), mask.astype(np.float32), mask, classes=["a", "b"])


@pytest.mark.parametrize("classes", [[], ["a", "a"], ["a/b"], [".."], [" a"], ["a\n"], [""], "road",
                                     [f"c{i}" for i in range(256)]])
def test_class_names_must_make_folders(classes):
    with pytest.raises((ValueError, TypeError)):
        check_class_names(classes)


def test_instances_module_is_pure():
    code = ("import sys, finedetail.instances, finedetail.outputs; "
            "print(','.join(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
