"""``python -m job quickstart``: the first thing to run on a fresh machine, no weights needed.

Generates a few synthetic scenes with thin structures and exact masks (``finedetail.synthetic``), one of them as the
prompt pair, runs the real job twice on local Ray with the weight-free classical backend — once as a single pass
(1x, no TTA, no crops) and once with the fine-detail stages — and prints both against the exact masks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from finedetail import metrics, synthetic
from finedetail.codecs import decode_mask, encode_png

__all__ = ["quickstart", "write_examples"]

SINGLE_PASS = {"scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}}


def write_examples(root: Path, *, images: int, size: int, seed: int = 0) -> None:
    """root/images/*.png (inputs), root/truth/*.png (exact masks), root/prompts/{images,masks}/ (one pair)."""
    for sub in ("images", "truth", "skeletons", "prompts/images", "prompts/masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kind = "fur"
    img, mask = synthetic.make_prompt_pair(kind, seed=seed + 1000, size=(size, size))
    (root / "prompts/images/example.png").write_bytes(encode_png(img))
    (root / "prompts/masks/example.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    for i in range(images):
        h, w = size, size + 64 * (i % 3)
        scene = synthetic.make_scene(kind, seed=seed + i, size=(h, w))
        name = f"scene_{i:02d}"
        (root / f"images/{name}.png").write_bytes(encode_png(scene.image))
        (root / f"truth/{name}.png").write_bytes(encode_png(scene.mask.astype(np.uint8) * 255))
        (root / f"skeletons/{name}.png").write_bytes(encode_png(scene.skeleton.astype(np.uint8) * 255))


def score(out_dir: Path, data: Path) -> dict[str, float]:
    rows = []
    for truth_file in sorted((data / "truth").glob("*.png")):
        gt = decode_mask(truth_file.read_bytes())
        skel = decode_mask((data / "skeletons" / truth_file.name).read_bytes())
        pred = decode_mask((out_dir / "masks" / truth_file.name).read_bytes())
        rows.append((metrics.iou(pred, gt), metrics.boundary_iou(pred, gt), metrics.thin_recall(pred, skel)))
    arr = np.array(rows)
    return {"iou": float(arr[:, 0].mean()), "boundary_iou": float(arr[:, 1].mean()),
            "thin_recall": float(arr[:, 2].mean())}


def quickstart(*, workdir: str, images: int = 6, size: int = 768, address: str | None = None) -> int:
    from job.config import job_config_from_dict
    from job.run import run_job

    root = Path(workdir).resolve()
    data = root / "data"
    write_examples(data, images=images, size=size)
    base = {"input": str(data / "images"), "prompts": str(data / "prompts"), "backend": "classical"}
    results = {}
    for name, extra in (("single pass", SINGLE_PASS), ("fine detail", {})):
        out = root / ("out-single" if extra else "out-finedetail")
        cfg = job_config_from_dict({**base, **extra, "output": str(out)})
        print(f"\n== {name}: python -m job run --backend classical --input {base['input']} --output {out}")
        run_job(cfg, address=address)
        results[name] = score(out, data)
    print("\nagainst the exact masks (mean over %d scenes):" % images)
    print(f"{'':14s}{'IoU':>8s}{'BoundaryIoU':>13s}{'thin recall':>13s}")
    for name, r in results.items():
        print(f"{name:14s}{r['iou']:8.3f}{r['boundary_iou']:13.3f}{r['thin_recall']:13.3f}")
    print(f"\nmasks and overlays: {root / 'out-finedetail'}/masks, {root / 'out-finedetail'}/overlays")
    return 0


if __name__ == "__main__":
    sys.exit(quickstart(workdir=os.environ.get("FINEDETAIL_QUICKSTART", "finedetail-quickstart")))
