"""``python -m job quickstart``: the first thing to run on a fresh machine, no weights and no network needed.

Generates synthetic scenes with thin structures, exact masks and thin-structure centre lines
(``finedetail.synthetic``), runs the real job twice on a local Ray with the weight-free classical backend, once as a
single pass and once with the fine-detail stages, and prints both against the exact masks. Masks and overlays of both
runs stay under ``--workdir``.

Why these settings (measured in-process on the default 6 scenes of 768 px; thin = thin-structure recall):

- **The colour models** (``coarse_model: colour-texture``, ``refiner_model: grabcut``), not the backend's default
  thin-structure models (``pixel`` + ``grow``, made for real vessels, cracks and wires): these scenes paint each
  object in one key colour, which a colour histogram and GrabCut's colour models follow best (thin-structure models
  on the same settings: single pass IoU 0.83, thin 0.55; fine detail 0.85, 0.65).

- **The models get less than the image, as SegGPT and SAM do** (through ``backend_options``). SegGPT paints on a 448
  px canvas; on a 2k photo a 1-2 px strand is a fraction of one of its pixels. The colour/texture coarse model gets
  the same handicap: it works at a quarter of the scene's size (192 px), so the strands mostly vanish from the coarse
  mask. GrabCut, in SAM's role, gets a bounded input of half the scene (384 px): like SAM's 1024 on a larger photo,
  the job tiles each scene into 384 px windows at scale 1 (1 coarse + 9 window passes per image) and zooms crops
  into that input. At the defaults (512 and 1024 px) the coarse model already sees these strands and both rows
  print nearly the same numbers. GrabCut runs 2 rounds instead of 3: about the same numbers, a quarter less time.
- **Single pass**: scale 1, identity view, no crops (IoU 0.883, thin 0.716).
- **Fine detail**: the single pass plus crop refinement: every object of the first result is cropped with context,
  zoomed so GrabCut sees it at ``crop.min_zoom`` (1.5x) the scene's resolution and re-prompted from that result, so
  GrabCut follows the strands further (IoU 0.887, thin 0.783). The ensemble rule is ``union``: with two maps (scale
  1 and the crop map) a majority needs both, which keeps what the single pass already had (thin within 0.05 of it);
  the crop map starts from that result anyway (crops are pasted with ``max``), so the union adds what the zoomed
  crops found. Left out because they add nothing here for their time: an hflip view (thin 0.786, IoU 0.886, +30 %
  time; both classical models are nearly flip-equivariant), the 2x scale (thin 0.785, IoU 0.881, twice the time:
  36 windows per image), ``crop.min_zoom`` 2 (thin 0.758).
- ``refine.use_mask_input`` is off in both rows: GrabCut has no mask-logit input (the coarse mask reaches it as the
  prompt's mask), so the logits would only cost time.
- One actor per pool (``resources``): six images in two batches keep it busy, and every extra actor is one more
  process to start on a small machine.

The real models: ``python -m job run --backend seggpt-sam ...`` (README, "Running it on your images").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from finedetail import metrics, synthetic
from finedetail.codecs import decode_mask, encode_png

__all__ = ["FINE_DETAIL", "KINDS", "SINGLE_PASS", "backend_options", "quickstart", "score", "write_examples"]

#: scene kinds, cycled over the scenes; one prompt pair per kind says what to segment
KINDS = ("fur", "wires", "vessels")
#: the quickstart compares the stages on colour-keyed scenes, so it states the post-processing it uses (the classical
#: backend's own default is none: ``finedetail.presets.BACKEND_DEFAULTS``)
_COMMON: dict[str, Any] = {"refine": {"use_mask_input": False},
                           "post": {"guided": True, "close_size": 1, "hole_area": 64, "opening": "reconstruction",
                                    "island_area": 16}}
SINGLE_PASS: dict[str, Any] = {**_COMMON, "scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}}
FINE_DETAIL: dict[str, Any] = {**_COMMON, "scales": [1.0], "tta": ["identity"], "crop": {"enabled": True},
                               "ensemble": {"rule": "union"}}


def backend_options(size: int) -> dict[str, Any]:
    """The classical models' options for ``size`` px scenes: the colour/texture coarse model at size/4, GrabCut at
    size/2 with 2 rounds."""
    return {"coarse_model": "colour-texture", "refiner_model": "grabcut", "coarse_input_size": max(16, size // 4),
            "refiner_input_size": max(16, size // 2), "refiner_iterations": 2}


def write_examples(root: Path, *, images: int, size: int, seed: int = 0) -> list[str]:
    """root/images/*.png (inputs), root/truth/*.png (exact masks), root/skeletons/*.png (thin-structure centre
    lines), root/prompts/{images,masks}/ (one pair per kind, seeds apart from the inputs'). Returns the scenes' kinds.
    Deterministic in (images, size, seed); existing files are rewritten with the same bytes."""
    for sub in ("images", "truth", "skeletons", "prompts/images", "prompts/masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kinds = [KINDS[i % len(KINDS)] for i in range(images)]
    for kind in dict.fromkeys(kinds):
        img, mask = synthetic.make_prompt_pair(kind, seed=seed + 1000, size=(size, size))
        (root / f"prompts/images/{kind}.png").write_bytes(encode_png(img))
        (root / f"prompts/masks/{kind}.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    for i, kind in enumerate(kinds):
        scene = synthetic.make_scene(kind, seed=seed + i, size=(size, size + 64 * (i % 3)))
        name = f"scene_{i:02d}_{kind}"
        (root / f"images/{name}.png").write_bytes(encode_png(scene.image))
        (root / f"truth/{name}.png").write_bytes(encode_png(scene.mask.astype(np.uint8) * 255))
        (root / f"skeletons/{name}.png").write_bytes(encode_png(scene.skeleton.astype(np.uint8) * 255))
    return kinds


def score(out_dir: Path, data: Path) -> dict[str, float]:
    """Mean IoU, boundary IoU and thin-structure recall of ``out_dir/masks`` against ``data/truth`` and
    ``data/skeletons``, plus the mean encoder passes per image from the run's manifest."""
    from job import io as jio
    from job import manifest as jm

    rows = []
    for truth_file in sorted((data / "truth").glob("*.png")):
        gt = decode_mask(truth_file.read_bytes())
        skel = decode_mask((data / "skeletons" / truth_file.name).read_bytes())
        pred = decode_mask((out_dir / "masks" / truth_file.name).read_bytes())
        rows.append((metrics.iou(pred, gt), metrics.boundary_iou(pred, gt), metrics.thin_recall(pred, skel)))
    arr = np.array(rows)
    latest = jm.latest_rows(jm.read_manifest(jio.open_storage(str(out_dir))[0]))
    passes = [r["encoder_passes"] or 0 for r in latest.values() if r["status"] == "ok"]
    return {"iou": float(arr[:, 0].mean()), "boundary_iou": float(arr[:, 1].mean()),
            "thin_recall": float(arr[:, 2].mean()), "passes": float(np.mean(passes)) if passes else 0.0}


def quickstart(*, workdir: str, images: int = 6, size: int = 768, address: str | None = None,
               quiet: bool = False) -> int:
    """Write the example data under ``workdir``, run both jobs, print the table; returns the exit status.

    ``address`` None starts a local Ray for the run (a Ray named by ``RAY_ADDRESS`` or left by ``ray start`` is not
    joined: the quickstart is a local first run); pass one to run it on a cluster that can read ``workdir``.
    ``quiet``: Ray's own logs at WARNING (`job.logs`)."""
    from job.config import job_config_from_dict
    from job.run import run_job

    if images < 1 or size < 64:
        raise ValueError(f"need images >= 1 and size >= 64 px, got {images=}, {size=}")
    root = Path(workdir).resolve()
    data = root / "data"
    kinds = write_examples(data, images=images, size=size)
    options = backend_options(size)
    base = {"input": str(data / "images"), "prompts": str(data / "prompts"), "backend": "classical",
            "backend_options": options, "resources": {"max_actors": 1}}
    outs = {"single pass": (root / "out-single", SINGLE_PASS), "fine detail": (root / "out-finedetail", FINE_DETAIL)}
    results = {}
    for name, (out, method) in outs.items():
        cfg = job_config_from_dict({**base, **method, "output": str(out)})
        print(f"\n== {name}: classical backend, scales {list(cfg.pipeline.scales)}, "
              f"crops {'on' if cfg.pipeline.crop.enabled else 'off'}, ensemble {cfg.pipeline.ensemble.rule} "
              f"-> {out}", flush=True)
        run_job(cfg, address=address or "local", quiet=quiet)
        results[name] = score(out, data)
    print(f"\nagainst the exact masks, mean over {images} scenes ({', '.join(dict.fromkeys(kinds))}; {size} px),\n"
          f"classical backend at {options['coarse_input_size']} px (coarse) and {options['refiner_input_size']} px "
          "(GrabCut input; larger images are tiled) working resolution:")
    print(f"{'':14s}{'IoU':>8s}{'BoundaryIoU':>13s}{'thin recall':>13s}{'passes/image':>14s}")
    for name, r in results.items():
        print(f"{name:14s}{r['iou']:8.3f}{r['boundary_iou']:13.3f}{r['thin_recall']:13.3f}{r['passes']:14.1f}")
    fine = outs["fine detail"][0]
    print(f"\nmasks:    {fine / 'masks'}\noverlays: {fine / 'overlays'}\n(single pass: {outs['single pass'][0]})")
    print("With real weights: python -m job run --backend seggpt-sam --input DIR --prompts DIR --output DIR "
          "(README, 'Running it on your images').")
    return 0


if __name__ == "__main__":
    sys.exit(quickstart(workdir=os.environ.get("FINEDETAIL_QUICKSTART", "finedetail-quickstart")))
