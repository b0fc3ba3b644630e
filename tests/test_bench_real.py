"""The real-data benchmark (``python -m job.bench real``) and the dataset converters (``python -m job.datasets``).

The converters run on fake checkouts laid out exactly like the public repositories (the same folder names, file
names and MATLAB structs, written with scipy.io.savemat); the benchmark runs the job CLI on a local Ray on a tiny
set in the common layout, made from generated scenes. No public data is needed or shipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def test_convert_drive_layout(tmp_path):
    from job.datasets import convert

    src = tmp_path / "retina-unet" / "DRIVE" / "test"
    rng = np.random.default_rng(0)
    gt = np.zeros((7, 9), np.uint8)
    gt[3, :] = 255
    for n in ("02", "01"):
        _png(src / "images" / f"{n}.png", rng.integers(0, 255, (7, 9, 3), dtype=np.uint8))
        _png(src / "1st_manual" / f"{n}.png", gt)
        _png(src / "2nd_manual" / f"{n}_manual2.png", np.roll(gt, 1, axis=0))
        _png(src / "mask" / f"{n}.png", np.full((7, 9), 255, np.uint8))
    counts = convert("drive", tmp_path / "retina-unet", tmp_path / "out", commit="abc")
    assert counts["pairs"] == 2
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["drive_01.png", "drive_02.png"]
    assert np.array_equal(_mask(out / "masks" / "drive_01.png"), gt > 0)
    assert np.array_equal(_mask(out / "human" / "drive_01.png"), np.roll(gt, 1, axis=0) > 0)
    assert _mask(out / "valid" / "drive_02.png").all()
    card = (out / "DATA_CARD.md").read_text()
    assert "orobix/retina-unet" in card and "commit abc" in card and "do not commit" in card


def test_convert_crackforest_and_pldu_mat_structs(tmp_path):
    import scipy.io

    from job.datasets import convert

    seg = np.ones((6, 8), np.uint8)
    seg[2, 1:6] = 2  # CrackForest: Segmentation == 2 is crack
    cf = tmp_path / "CrackForest-dataset"
    _png(cf / "image" / "001.jpg", np.zeros((6, 8, 3), np.uint8))
    _png(cf / "image" / "002.jpg", np.zeros((6, 8, 3), np.uint8))  # no ground truth: skipped
    (cf / "groundTruth").mkdir()
    scipy.io.savemat(cf / "groundTruth" / "001.mat",
                     {"groundTruth": {"Segmentation": seg, "Boundaries": np.zeros_like(seg)}})
    assert convert("crackforest", cf, tmp_path / "cf")["pairs"] == 1
    assert np.array_equal(_mask(tmp_path / "cf" / "masks" / "crack_001.png"), seg == 2)

    line = np.zeros((5, 7), np.uint8)
    line[:, 3] = 1
    pl = tmp_path / "PLD-UAV" / "PLDU"
    for n in ("10", "2"):
        _png(pl / "test" / f"{n}.jpg", np.zeros((5, 7, 3), np.uint8))
        (pl / "test_gt").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(pl / "test_gt" / f"{n}.mat", {"groundTruth": {"Boundaries": line}})
    assert convert("pldu", tmp_path / "PLD-UAV", tmp_path / "pl")["pairs"] == 2
    # numeric order, zero-padded names: 2 before 10
    assert sorted(p.name for p in (tmp_path / "pl" / "masks").iterdir()) == ["pldu_002.png", "pldu_010.png"]
    assert np.array_equal(_mask(tmp_path / "pl" / "masks" / "pldu_010.png"), line > 0)


def test_convert_refuses_wrong_checkout(tmp_path):
    from job.datasets import convert

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="DRIVE/test"):
        convert("drive", tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize(
    "pred, gt, valid, expect",
    [
        # 1 tp, 1 fp, 1 fn -> precision 1/2, recall 1/2, F1 1/2
        ([[1, 1, 0]], [[1, 0, 1]], None, {"f1": 0.5, "precision": 0.5, "recall": 0.5}),
        # the fp lies outside valid: not counted
        ([[1, 1, 0]], [[1, 0, 0]], [[1, 0, 1]], {"f1": 1.0, "precision": 1.0, "recall": 1.0}),
        # nothing to find and nothing found
        ([[0, 0, 0]], [[0, 0, 0]], None, {"f1": 1.0, "precision": 1.0, "recall": 1.0}),
    ],
)
def test_score_image_pixel_counts(pred, gt, valid, expect):
    from job.bench.real import score_image

    b = lambda a: None if a is None else np.array(a, bool)  # noqa: E731
    s = score_image(b(pred), b(gt), b(valid))
    for k, v in expect.items():
        assert s[k] == pytest.approx(v), k


def _tiny_set(root: Path, n: int = 3) -> None:
    from finedetail.synthetic import make_scene

    for i in range(n):
        scene = make_scene("wires", seed=i, size=(96, 128))
        _png(root / "images" / f"s{i}.png", scene.image)
        _png(root / "masks" / f"s{i}.png", scene.mask.astype(np.uint8) * 255)
        _png(root / "human" / f"s{i}.png", scene.mask.astype(np.uint8) * 255)


@pytest.mark.slow
def test_bench_real_runs_the_cli_and_scores(tmp_path, capsys):
    from job.bench import real

    _tiny_set(tmp_path / "data")
    code = real.main(["--data", str(tmp_path / "data"), "--prompts", "2", "--inputs", "1",
                      "--configs", "single,quick=--scales 1,2 --tta identity --no-crop", "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompts"] == ["s0", "s1"] and res["inputs"] == ["s2"]
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"human", "single", "quick"}
    assert rows["human"]["f1"] == 1.0 and rows["human"]["tol_f"] == 1.0  # the annotator's mask is the truth here
    for name in ("single", "quick"):
        r = rows[name]
        assert 0.0 <= r["f1"] <= 1.0 and r["encoder_passes"] >= 1 and r["seconds_per_image"] > 0
    assert "--scales 1,2" in rows["quick"]["flags"]


def test_convert_drive_od_two_classes_from_pinned_commits(tmp_path, monkeypatch):
    """drive-od reads DRIVE (images, 1st observer, FOV) and the optic-disc masks from two commits of one checkout
    (the fake repository's commits stand in for the pinned ones) and writes class maps + classes.yaml."""
    import subprocess

    from job import datasets

    repo = tmp_path / "easytorch"
    repo.mkdir()

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                       env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout

    vessel = np.zeros((6, 8), np.uint8)
    vessel[2, :] = 255
    disc = np.zeros((6, 8), np.uint8)
    disc[1:4, 5:8] = 255  # overlaps the vessel at row 2: the vessel wins
    git("init", "-q")
    for i in range(1, 41):
        split = "test" if i <= 20 else "training"
        _png(repo / f"data/DRIVE/images/{i:02d}_{split}.tif", np.full((6, 8, 3), i, np.uint8))
        _png(repo / f"data/DRIVE/manual/{i:02d}_manual1.gif", vessel)
        _png(repo / f"data/DRIVE/mask/{i:02d}_mask.gif", np.full((6, 8), 255, np.uint8))
    git("add", "-A")
    first = git("commit", "-qm", "drive").strip()
    for i in range(1, 41):
        split = "test" if i <= 20 else "training"
        _png(repo / f"example/datasets/DRIVE/OD_Segmentation/{i:02d}_{split}_gt.tif", disc)
    git("add", "-A")
    second = git("commit", "-qm", "od").strip()
    monkeypatch.setattr(datasets, "_QUENN_DRIVE", first)
    monkeypatch.setattr(datasets, "_QUENN_OD", second)
    out = tmp_path / "od"
    assert datasets.convert("drive-od", repo, out)["pairs"] == 40
    labels = np.asarray(Image.open(out / "masks" / "driveod_21.png"))
    want = np.where(vessel > 0, 1, np.where(disc > 0, 2, 0))
    np.testing.assert_array_equal(labels, want)
    assert np.asarray(Image.open(out / "images" / "driveod_21.png"))[0, 0, 0] == 21
    assert (out / "classes.yaml").read_text() == "classes: [vessel, disc]\n"
    from job.bench.real import read_classes

    assert read_classes(out) == ("vessel", "disc")
    monkeypatch.setattr(datasets, "_QUENN_OD", "0" * 40)  # a checkout without that commit: a clear refusal
    with pytest.raises(SystemExit, match="full clone of github.com/sraashis/easytorch"):
        datasets.convert("drive-od", repo, tmp_path / "od2")


@pytest.mark.parametrize("row, on", [("+crop", lambda p: p.crop.enabled), ("+post", lambda p: p.post.guided
                                                                             and p.post.island_area > 0)])
def test_each_stage_row_turns_its_stage_on_even_where_the_backend_has_it_off(row, on):
    """The weight-free backend's defaults turn crops and post-processing off: its "+crop" / "+post" rows must still
    run them (they ran the single pass again until the rows set the stage explicitly)."""
    from job.__main__ import build_parser, config_from_args
    from job.bench.real import CONFIGS

    argv = ["run", "--input", "i", "--output", "o", "--prompts", "p", "--backend", "classical"]
    single = config_from_args(build_parser().parse_args([*argv, *CONFIGS["single"]]))
    staged = config_from_args(build_parser().parse_args([*argv, *CONFIGS[row]]))
    assert on(staged.pipeline) and not on(single.pipeline)
