"""Convert public thin-structure datasets into the benchmark layout (``python -m job.datasets ...``).

The real-data benchmark (``python -m job.bench real``) reads any folder laid out as::

    DIR/images/NAME.<ext>   the image
    DIR/masks/NAME.png      ground truth, 0 = background, 255 = object (same size as the image)
    DIR/valid/NAME.png      optional: score only where nonzero (e.g. a retina's field of view)
    DIR/human/NAME.png      optional: a second annotator's mask (human agreement, scored like a prediction)
    DIR/DATA_CARD.md        source, commit, licence, counts

A multi-class set (``drive-od``) also has ``DIR/classes.yaml`` (``classes: [name, ...]``) and its masks are class-index
maps (0 = background, 1..C), the layout of a multi-class prompt set.

The datasets are NOT shipped with the project (research-only or unstated licences): fetch their repositories
yourself, then convert a checkout of each (``--src`` is the repository's root folder)::

    git clone https://github.com/orobix/retina-unet && git -C retina-unet fetch origin pull/64/head && \\
        git -C retina-unet checkout FETCH_HEAD
    python -m job.datasets drive --src retina-unet --dst data/drive
    git clone https://github.com/cuilimeng/CrackForest-dataset
    python -m job.datasets crackforest --src CrackForest-dataset --dst data/crackforest
    git clone https://github.com/SnorkerHeng/PLD-UAV
    python -m job.datasets pldu --src PLD-UAV --dst data/pldu
    git clone https://github.com/sraashis/easytorch   # formerly sraashis/quenn: DRIVE + optic-disc masks in history
    python -m job.datasets drive-od --src easytorch --dst data/drive-od

Names are sorted so the benchmark's "first K pairs are prompts, the next N are inputs" is the same on every machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = ["DATASETS", "convert", "main"]


@dataclass(frozen=True)
class Dataset:
    """How one public dataset maps onto the layout. ``pairs(src)`` yields (name, image path, gt (H, W) bool,
    valid (H, W) bool or None, human (H, W) bool or None)."""

    name: str
    title: str
    repository: str
    ref: str
    licence: str
    notes: str
    pairs: Callable[[Path], Iterator[tuple[str, "Path | np.ndarray", np.ndarray, "np.ndarray | None",
                                           "np.ndarray | None"]]]
    classes: tuple[str, ...] = ()  # multi-class: gt is an (H, W) uint8 class-index map, written as is


def _read_png_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("L"))
    return a > 127


def _loadmat(path: Path) -> dict:
    try:
        import scipy.io
    except ImportError as exc:  # pragma: no cover - scipy comes with scikit-learn / scikit-image
        raise SystemExit(f"reading {path.name} needs scipy: pip install scipy ({exc})") from None
    return scipy.io.loadmat(str(path))


def _drive_pairs(src: Path):
    # orobix/retina-unet, pull request 64: DRIVE/test/{images,1st_manual,2nd_manual,mask}/NN[...].png
    root = src / "DRIVE" / "test"
    if not (root / "images").is_dir():
        raise SystemExit(f"expected {root}/images (DRIVE/test of orobix/retina-unet's refs/pull/64/head), not found")
    for img in sorted((root / "images").glob("*.png")):
        n = img.stem
        gt = _read_png_mask(root / "1st_manual" / f"{n}.png")
        valid = _read_png_mask(root / "mask" / f"{n}.png")
        second = root / "2nd_manual" / f"{n}_manual2.png"
        human = _read_png_mask(second) if second.is_file() else None
        yield f"drive_{n}", img, gt, valid, human


def _crackforest_pairs(src: Path):
    # cuilimeng/CrackForest-dataset: image/NNN.jpg + groundTruth/NNN.mat (struct groundTruth.Segmentation, 2 = crack)
    for mat in sorted((src / "groundTruth").glob("*.mat")):
        img = src / "image" / f"{mat.stem}.jpg"
        if not img.is_file():
            continue
        seg = _loadmat(mat)["groundTruth"][0, 0]["Segmentation"]
        yield f"crack_{mat.stem}", img, np.asarray(seg) == 2, None, None


def _pldu_pairs(src: Path):
    # SnorkerHeng/PLD-UAV: PLDU/test/N.jpg + PLDU/test_gt/N.mat (struct groundTruth.Boundaries, 1 = power line)
    root = src / "PLDU"
    mats = sorted((root / "test_gt").glob("*.mat"), key=lambda p: (len(p.stem), p.stem))
    for mat in mats:
        img = root / "test" / f"{mat.stem}.jpg"
        if not img.is_file():
            continue
        b = _loadmat(mat)["groundTruth"][0, 0]["Boundaries"]
        b = b[0, 0] if b.dtype == object else b
        yield f"pldu_{int(mat.stem):03d}", img, np.asarray(b) > 0, None, None


#: sraashis/quenn (now sraashis/easytorch) history: DRIVE as published (584 x 565 tif, 1st observer gif, FOV gif) at
#: _QUENN_DRIVE, and the authors' optic-disc masks for the same 40 images at _QUENN_OD
_QUENN_DRIVE, _QUENN_OD = "bc36e83", "7a41d6f"


def _git_image(src: Path, commit: str, path: str) -> np.ndarray:
    import io

    from PIL import Image

    out = subprocess.run(["git", "-C", str(src), "show", f"{commit}:{path}"], capture_output=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"{src}: cannot read {commit}:{path} ({out.stderr.decode().strip()}); --src must be a full "
                         "clone of github.com/sraashis/easytorch (formerly quenn), history included")
    with Image.open(io.BytesIO(out.stdout)) as im:
        return np.asarray(im.convert("RGB"))


def _drive_od_pairs(src: Path):
    # all 40 DRIVE images (01-20 test, 21-40 training): vessels (1st observer) = class 1, optic disc = class 2
    # (vessels crossing the disc stay vessels); valid = the field of view
    for i in range(1, 41):
        split = "test" if i <= 20 else "training"
        image = _git_image(src, _QUENN_DRIVE, f"data/DRIVE/images/{i:02d}_{split}.tif")
        vessel = _git_image(src, _QUENN_DRIVE, f"data/DRIVE/manual/{i:02d}_manual1.gif")[..., 0] > 127
        fov = _git_image(src, _QUENN_DRIVE, f"data/DRIVE/mask/{i:02d}_mask.gif")[..., 0] > 127
        disc = _git_image(src, _QUENN_OD, f"example/datasets/DRIVE/OD_Segmentation/{i:02d}_{split}_gt.tif")[..., 0] > 127
        labels = np.where(vessel, 1, np.where(disc, 2, 0)).astype(np.uint8)
        yield f"driveod_{i:02d}", image, labels, fov, None


DATASETS = {
    "drive": Dataset(
        "drive", "DRIVE retinal vessels (test split, 20 images)", "orobix/retina-unet", "refs/pull/64/head",
        "DRIVE's terms: research use only; not redistributed by this project",
        "masks = 1st observer; valid = field-of-view mask (score inside it); human = 2nd observer "
        "(pixel F1 against the 1st is about 0.79)",
        _drive_pairs),
    "crackforest": Dataset(
        "crackforest", "CrackForest pavement cracks (118 annotated images)", "cuilimeng/CrackForest-dataset",
        "master", "non-commercial research purposes only (the repository's README)",
        "mask = Segmentation == 2 in groundTruth/*.mat; images without ground truth are skipped",
        _crackforest_pairs),
    "pldu": Dataset(
        "pldu", "PLD-UAV urban power lines, PLDU test split (120 images, 540x360)", "SnorkerHeng/PLD-UAV", "master",
        "not stated in the repository", "1-2 px centre-line labels (groundTruth.Boundaries): score with a "
        "tolerance F (python -m job.bench real reports tol_f)",
        _pldu_pairs),
    "drive-od": Dataset(
        "drive-od", "DRIVE vessels + optic disc, two classes (all 40 images)", "sraashis/easytorch",
        f"{_QUENN_DRIVE} (DRIVE) + {_QUENN_OD} (optic-disc masks)",
        "DRIVE's terms: research use only; the disc masks are the easytorch/quenn authors' (MIT repository)",
        "masks are class maps: 1 = vessel (1st observer), 2 = optic disc (vessels on the disc stay 1); valid = "
        "field of view", _drive_od_pairs, classes=("vessel", "disc")),
}


def _commit_of(src: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def convert(name: str, src: Path, dst: Path, *, commit: str | None = None) -> dict:
    """Convert the checkout ``src`` of dataset ``name`` into ``dst`` (the layout in the module docstring).
    Returns the counts written to the data card. Refuses a non-empty ``dst`` that holds other files."""
    from PIL import Image

    if name not in DATASETS:
        raise SystemExit(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    ds = DATASETS[name]
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise SystemExit(f"--src {src} is not a folder; clone {ds.repository} first (see python -m job.datasets -h)")
    for sub in ("images", "masks", "valid", "human"):
        if (dst / sub).exists():
            shutil.rmtree(dst / sub)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    n = skipped = fg = px = 0
    has_valid = has_human = False
    for key, img_path, gt, valid, human in ds.pairs(src):
        if isinstance(img_path, np.ndarray):
            size = img_path.shape[:2]
        else:
            with Image.open(img_path) as im:
                size = (im.height, im.width)
        if gt.shape != size:
            print(f"skip {key}: ground truth {gt.shape} does not match image {size}", file=sys.stderr)
            skipped += 1
            continue
        if isinstance(img_path, np.ndarray):
            Image.fromarray(img_path).save(dst / "images" / f"{key}.png")
        else:
            shutil.copyfile(img_path, dst / "images" / f"{key}{img_path.suffix.lower()}")
        if ds.classes:
            Image.fromarray(gt.astype(np.uint8)).save(dst / "masks" / f"{key}.png")
        else:
            _write_mask(dst / "masks" / f"{key}.png", gt)
        if valid is not None:
            (dst / "valid").mkdir(exist_ok=True)
            _write_mask(dst / "valid" / f"{key}.png", valid)
            has_valid = True
        if human is not None:
            (dst / "human").mkdir(exist_ok=True)
            _write_mask(dst / "human" / f"{key}.png", human)
            has_human = True
        n += 1
        fg += int(np.count_nonzero(gt))
        px += gt.size
    if n == 0:
        raise SystemExit(f"no image/ground-truth pairs found under {src} for {name}; is it a checkout of {ds.repository}?")
    counts = {"pairs": n, "skipped": skipped, "foreground_fraction": round(fg / px, 5)}
    card = [
        f"# {ds.title}", "",
        f"- source: https://github.com/{ds.repository} (ref {ds.ref}), commit {commit or _commit_of(src)}",
        f"- licence: {ds.licence}",
        f"- converted by: python -m job.datasets {name} --src {src.name} --dst {dst.name}",
        f"- pairs: {n} (skipped {skipped}); foreground fraction {counts['foreground_fraction']}",
        f"- folders: images/, masks/{', valid/' if has_valid else ''}{', human/' if has_human else ''}",
        f"- notes: {ds.notes}",
        "", "Not part of the finedetail project: do not commit or redistribute.", "",
    ]
    (dst / "DATA_CARD.md").write_text("\n".join(card))
    if ds.classes:
        (dst / "classes.yaml").write_text(f"classes: [{', '.join(ds.classes)}]\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.datasets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(DATASETS), help="which public dataset the checkout holds")
    p.add_argument("--src", required=True, type=Path, help="root folder of the dataset repository's checkout")
    p.add_argument("--dst", required=True, type=Path, help="output folder (images/, masks/, [valid/, human/])")
    p.add_argument("--commit", help="commit of the checkout for the data card (default: git rev-parse HEAD)")
    args = p.parse_args(argv)
    counts = convert(args.dataset, args.src, args.dst, commit=args.commit)
    print(f"{args.dataset}: {counts['pairs']} pairs -> {args.dst} (skipped {counts['skipped']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
