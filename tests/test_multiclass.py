"""Several classes through the job: classes.yaml in the prompt set, label maps, per-class masks/probs/RLE,
per-image instances and the dataset-level COCO file (real local Ray; proxy and tiny real-architecture models)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from finedetail import synthetic
from finedetail.codecs import decode_label_map, decode_mask, encode_png

CLASSES = ("thin", "blob")
SIZE = (96, 128)
KEYS = ("a.png", "sub/b.png", "c.png")


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict(values)


def _write_prompt_set(root: Path, *, classes_yaml: str | None = "classes: [thin, blob]\n", seeds=(500,),
                      labels_fn=None) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        image, labels = synthetic.make_prompt_pair("roads", seed=seed, size=SIZE, classes=2)
        if labels_fn is not None:
            labels = labels_fn(labels)
        (root / f"images/p{i}.png").write_bytes(encode_png(image))
        (root / f"masks/p{i}.png").write_bytes(encode_png(labels))
    if classes_yaml is not None:
        (root / "classes.yaml").write_text(classes_yaml)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    _write_prompt_set(root / "prompts")
    for seed, key in enumerate(KEYS):  # seeds 0-2: the proxies find both classes in each (checked below)
        scene = synthetic.make_scene("roads", seed=seed, size=SIZE, classes=2)
        path = root / "in" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(scene.image))
    return root


# ----------------------------------------------------------------------------------------------- prompt sets


def test_load_prompts_reads_classes_yaml(data):
    from job.models import load_prompts, read_prompt_classes

    assert read_prompt_classes(str(data / "prompts")) == CLASSES
    pairs = load_prompts(str(data / "prompts"))
    assert len(pairs) == 1 and pairs[0].mask.dtype == np.uint8
    assert set(np.unique(pairs[0].mask)) == {0, 1, 2}
    assert load_prompts(str(data / "prompts"), classes=CLASSES)[0].mask.shape == SIZE


def test_resolve_classes(data, tmp_path):
    from job.models import resolve_classes

    base = dict(input="in", output="out", prompts=str(data / "prompts"))
    assert resolve_classes(_cfg(**base)).classes == CLASSES  # no --classes: the yaml's names
    assert resolve_classes(_cfg(classes=list(CLASSES), **base)).classes == CLASSES  # both, agreeing
    with pytest.raises(ValueError, match=r"--classes road,river disagrees with .*classes.yaml"):
        resolve_classes(_cfg(classes=["road", "river"], **base))
    with pytest.raises(ValueError, match="disagrees"):
        resolve_classes(_cfg(classes=["blob", "thin"], **base))  # same names, other order: other indices
    plain = _write_prompt_set(tmp_path / "plain", classes_yaml=None, labels_fn=lambda lab: (lab > 0).astype(np.uint8))
    cfg = _cfg(**{**base, "prompts": str(plain)})
    assert resolve_classes(cfg) is cfg  # no classes.yaml: unchanged (binary)


@pytest.mark.parametrize("yaml_text, kwargs, match", [
    ("classes: [thin, blob]\n", {"num_classes": 1}, "names 2 classes"),
    ("classes: [thin, blob]\n", {"classes": ["thin"]}, "disagree"),
    ("classes: [thin, blob, river]\n", {}, "holds class|shows class 'river'"),
    ("names: [thin, blob]\n", {}, "exactly one key"),
    ("classes: thin\n", {}, "exactly one key"),
    ("classes: [thin, no]\n", {}, "must be strings"),
    ("classes: [thin, thin]\n", {}, "unique"),
    ("classes: [thin, a/b]\n", {}, "folder"),
    ("classes: [thin, blob\n", {}, "not readable YAML"),
])
def test_load_prompts_refuses(tmp_path, yaml_text, kwargs, match):
    from job.models import load_prompts

    root = _write_prompt_set(tmp_path / "p", classes_yaml=yaml_text)
    with pytest.raises(ValueError, match=match):
        load_prompts(str(root), **kwargs)


def test_load_prompts_refuses_a_class_no_prompt_shows(tmp_path):
    from job.models import load_prompts

    root = _write_prompt_set(tmp_path / "p", labels_fn=lambda lab: np.where(lab == 2, 0, lab).astype(np.uint8))
    with pytest.raises(ValueError, match=r"shows class 'blob' \(mask value 2\)"):
        load_prompts(str(root))


def test_load_prompts_refuses_mask_of_another_size(tmp_path):
    from job.models import load_prompts

    root = _write_prompt_set(tmp_path / "p")
    (root / "masks/p0.png").write_bytes(encode_png(np.ones((10, 12), np.uint8)))
    with pytest.raises(ValueError, match="must have its image's size"):
        load_prompts(str(root))


# ----------------------------------------------------------------------------------------------- the job


def _check_manifest_class_columns(out: Path, labels: dict[str, np.ndarray]) -> None:
    """The manifest's per-class columns agree with the label maps and the stored per-class probabilities."""
    from jobkit import read_manifest_rows

    rows = {r["key"]: r for r in read_manifest_rows(out)}
    for key, lab in labels.items():
        r, stem = rows[key], os.path.splitext(key)[0]
        assert r["class_area"] == [int((lab == c + 1).sum()) for c in range(len(CLASSES))], key
        assert r["empty"] is False and sum(r["class_area"]) == r["mask_area"]
        for c, name in enumerate(CLASSES):
            prob = decode_label_map((out / "probs" / name / f"{stem}.png").read_bytes()) / 255
            assert r["class_mean_prob"][c] == pytest.approx(prob[lab == c + 1].mean(), abs=1 / 255), (key, name)


def _check_outputs(out: Path, keys, *, every_class: bool) -> dict[str, np.ndarray]:
    """labels/ + masks/<class>/ + probs/<class>/ + rle/ agree, one class per pixel; returns key -> label map."""
    from pycocotools import mask as mask_utils

    found = {}
    for key in keys:
        stem = os.path.splitext(key)[0]
        labels = decode_label_map((out / "labels" / f"{stem}.png").read_bytes())
        assert labels.shape == SIZE, key
        assert set(np.unique(labels)) <= {0, 1, 2}, key
        if every_class:
            assert {1, 2} <= set(np.unique(labels)), f"{key}: both classes expected, got {np.bincount(labels.ravel())}"
        rles = json.loads((out / "rle" / f"{stem}.json").read_text())
        assert list(rles) == list(CLASSES)
        union = np.zeros(SIZE, np.uint8)
        for c, name in enumerate(CLASSES):
            m = decode_mask((out / "masks" / name / f"{stem}.png").read_bytes())
            union += m
            np.testing.assert_array_equal(m, labels == c + 1)
            rle = {"size": rles[name]["size"], "counts": rles[name]["counts"].encode()}
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), labels == c + 1)
            assert decode_label_map((out / "probs" / name / f"{stem}.png").read_bytes()).shape == SIZE
        assert union.max() <= 1, f"{key}: a pixel in two classes"
        found[key] = labels
    return found


def _check_coco(out: Path, labels: dict[str, np.ndarray]) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    by_name = {img["file_name"]: img for img in coco.loadImgs(coco.getImgIds())}
    assert sorted(by_name) == sorted(labels)
    assert [by_name[k]["id"] for k in sorted(labels)] == [1, 2, 3]  # ids follow the keys' order
    for key, lab in labels.items():
        img = by_name[key]
        assert (img["height"], img["width"]) == SIZE
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        per_image = json.loads((out / "instances" / f"{os.path.splitext(key)[0]}.json").read_text())
        assert len(anns) == len(per_image["annotations"])
        back = np.zeros(SIZE, np.uint8)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            assert not back[m].any()
            back[m] = a["category_id"]
            assert a["iscrowd"] == 0 and 0.0 <= a["score"] <= 1.0 and a["area"] == int(m.sum())
        np.testing.assert_array_equal(back, lab)  # the instances tile the label map


def test_two_classes_through_the_job_proxy(ray_local, data, tmp_path):
    from job.coco import write_dataset_coco
    from job.models import resolve_classes
    from job.run import run_job

    out = tmp_path / "out"
    cfg = resolve_classes(_cfg(input=str(data / "in"), prompts=str(data / "prompts"), output=str(out),
                               backend="proxy", scales=[1.0], tta=["identity"], coco=True))
    assert cfg.classes == CLASSES
    summary = run_job(cfg, out=io.StringIO())
    assert summary["ok"] == len(KEYS) and summary["errors"] == 0
    labels = _check_outputs(out, KEYS, every_class=True)
    _check_coco(out, labels)
    _check_manifest_class_columns(out, labels)

    # a resumed job whose instance files are missing or from another config rebuilds them from masks/ + probs/
    before = json.loads((out / "coco.json").read_text())
    (out / "instances/a.json").unlink()
    stale = json.loads((out / "instances/c.json").read_text())
    stale["info"] = {"config_hash": "another"}
    stale["annotations"] = []
    (out / "instances/c.json").write_text(json.dumps(stale))
    summary = write_dataset_coco(cfg)
    assert summary["rebuilt"] >= 2 and summary["images"] == len(KEYS)
    assert json.loads((out / "coco.json").read_text()) == before


@pytest.mark.slow  # torch + transformers + segment_anything imported in two actors: ~50 s of CPU on 2 cores
def test_two_classes_through_the_job_tiny_models(ray_local, tiny_weights, data, tmp_path):
    from job.models import resolve_classes
    from job.run import run_job

    out = tmp_path / "out"
    cfg = resolve_classes(_cfg(input=str(data / "in"), prompts=str(data / "prompts"), output=str(out),
                               backend="seggpt-sam", sam_checkpoint=tiny_weights["sam"],
                               seggpt_checkpoint=tiny_weights["seggpt"], device="cpu", scales=[1.0],
                               tta=["identity"], crop={"enabled": False}, coco=True))
    summary = run_job(cfg, out=io.StringIO())
    assert summary["ok"] == len(KEYS) and summary["errors"] == 0
    labels = _check_outputs(out, KEYS, every_class=False)  # random weights: structure only
    _check_coco(out, labels)


def test_dataset_coco_from_stored_maps_without_ray(tmp_path):
    """write_dataset_coco rebuilds missing per-image files from masks/ + probs/, leaves out outputs of another config
    and outputs without PNG maps (rasters written in windows), and numbers images in key order."""
    from pycocotools.coco import COCO

    from job import io as jio
    from job import manifest as jm
    from job.coco import write_dataset_coco

    out = tmp_path / "out"
    cfg = _cfg(input="in", output=str(out), prompts="p", classes=list(CLASSES), coco=True)
    labels = {"z.png": np.zeros((4, 6), np.uint8), "a/b.jpg": np.zeros((4, 6), np.uint8)}
    labels["z.png"][1, 1:5] = 1
    labels["a/b.jpg"][0:2, 0:2] = 2
    labels["a/b.jpg"][3, 5] = 2
    for key, lab in labels.items():
        stem = os.path.splitext(key)[0]
        for c, name in enumerate(CLASSES):
            for folder, data in (("masks", (lab == c + 1).astype(np.uint8) * 255), ("probs", (lab == c + 1) * 200)):
                path = out / folder / name / f"{stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode_png(data.astype(np.uint8)))
    rows = [dict(key=k, status="ok", error="", height=4, width=6, config_hash=cfg.config_hash, finished_at=1.0)
            for k in labels]
    rows.append(dict(key="big.tif", status="ok", error="", height=4, width=6, config_hash=cfg.config_hash,
                     finished_at=1.0))
    rows.append(dict(key="old.png", status="ok", error="", height=4, width=6, config_hash="other", finished_at=1.0))
    rows.append(dict(key="bad.png", status="error", error="x", config_hash=cfg.config_hash, finished_at=1.0))
    jm.write_part(jio.open_storage(str(out))[0], rows)
    summary = write_dataset_coco(cfg)
    assert summary == {"images": 2, "annotations": 3, "rebuilt": 2, "left_out": 1, "missing": 1,
                       "uri": f"{out}/coco.json"}
    coco = COCO(str(out / "coco.json"))
    assert [coco.imgs[i]["file_name"] for i in (1, 2)] == ["a/b.jpg", "z.png"]
    assert [a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[1]))] == [2, 2]
    assert coco.loadAnns(coco.getAnnIds(imgIds=[2]))[0]["score"] == pytest.approx(200 / 255, abs=1e-6)
    assert (out / "instances/a/b.json").exists() and (out / "instances/z.json").exists()


# ----------------------------------------------------------------------------------------------- benchmark


def test_two_class_quality_benchmark_smoke(capsys):
    from job.bench.quality_classes import main

    assert main(["--size", "96", "--seeds", "1", "--kinds", "roads", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["classes"] == ["thin", "blob"]
    (scene,) = result["scenes"]
    for method in ("coarse", "full"):
        assert set(scene[method]) == {"thin", "other", "iou"}
        assert all(len(v) == 2 for v in scene[method].values())
    # at 96 px the proxies see both classes; the full method recovers thin structure the coarse pass loses
    assert scene["full"]["thin"][0] > scene["coarse"]["thin"][0]
    assert main(["--size", "96", "--seeds", "1", "--kinds", "roads"]) == 0
    assert "mean" in capsys.readouterr().out


def test_two_class_benchmark_ablation_rows(capsys):
    """--ablation runs every candidate of ABLATION and reports its means per method and class."""
    from job.bench.quality_classes import ABLATION, main

    assert main(["--size", "96", "--seeds", "1", "--kinds", "roads", "--ablation", "--json"]) == 0
    means = json.loads(capsys.readouterr().out)
    assert list(means) == list(ABLATION)
    for m in means.values():
        assert set(m) == {"coarse", "full"} and all(len(v) == 2 for v in m["full"].values())
