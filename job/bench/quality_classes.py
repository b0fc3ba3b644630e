"""Two-class quality benchmark: per-class thin-structure recall of the full method vs the coarse pass alone.

Scenes: ``finedetail.synthetic`` two-class scenes (``classes=2``): class 1 = the parts drawn 1-3 px wide (red),
class 2 = the wider "blob" parts (blue), for every ``--kinds`` kind, ``--seeds`` seeds, ``--size`` px square.
Models: the resolution-limited proxies (``finedetail.models.proxy``); ProxySegGPT gets one two-class prompt pair of the
same kind (seed 500 + seed). Methods:

- ``coarse``: the in-context segmenter alone, each class thresholded at 0.5, a pixel in several classes kept by the
  class of highest probability (the rule ``finedetail.pipeline.fuse`` applies);
- ``full``: ``finedetail.execute.run_image`` with ``PipelineConfig`` defaults, or ``--preset``.

Per class c and image:

- ``thin``: recall of class c's thin centre lines predicted AS class c. Class 1: ``Scene.skeleton`` (the centre
  lines of every thin part). Class 2: the centre line (``cv2.ximgproc.thinning``) of the class-2 parts at most
  ``--narrow`` px wide (distance to the background <= narrow / 2 on the centre line): poles, narrow rivers and roads,
  vessel roots — the fine detail of the blob class. Scenes without such parts are left out of that mean.
- ``other``: fraction of the same centre-line pixels predicted as the OTHER class (class confusion).
- ``iou``: IoU of class c's mask with its ground truth.

Means are over scenes. Usage: ``python -m job.bench quality_classes --size 512 --seeds 2 [--json]`` (or call
``main(argv)``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

import cv2
import numpy as np

from finedetail import metrics, synthetic
from finedetail.classes import ThinClassCoarse
from finedetail.config import config_from_dict
from finedetail.execute import run_image
from finedetail.models.proxy import ProxySAM, ProxySegGPT
from finedetail.postprocess import one_class_per_pixel
from finedetail.presets import preset_dict
from finedetail.types import PromptPair

__all__ = ["class_centrelines", "coarse_masks", "main", "run", "score_classes"]

METHODS = ("coarse", "full")
CLASS_NAMES = ("thin", "blob")


def class_centrelines(scene: synthetic.Scene, *, narrow: int = 6) -> list[np.ndarray]:
    """Per class (H, W) bool centre lines whose recall the benchmark measures (module docstring)."""
    blob = scene.labels == 2
    if not blob.any():
        return [scene.skeleton, blob]
    skel = cv2.ximgproc.thinning(blob.astype(np.uint8) * 255) > 0
    dist = cv2.distanceTransform(blob.astype(np.uint8), cv2.DIST_L2, 5)
    return [scene.skeleton, skel & (dist <= narrow / 2)]


def coarse_masks(coarse: np.ndarray) -> np.ndarray:
    """(C, H, W) coarse probabilities -> (C, H, W) bool: >= 0.5, one class per pixel (highest probability, ties to
    the lower class index)."""
    return one_class_per_pixel(coarse >= 0.5, coarse)


def score_classes(mask: np.ndarray, scene: synthetic.Scene, lines: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """(2, H, W) bool masks vs a two-class scene -> {"thin": [c1, c2], "other": [...], "iou": [...]} (NaN where a
    class has no centre line to measure)."""
    out: dict[str, list[float]] = {"thin": [], "other": [], "iou": []}
    for c in range(2):
        line = lines[c]
        if line.any():
            out["thin"].append(metrics.thin_recall(mask[c], line))
            out["other"].append(float((mask[1 - c] & line).sum() / line.sum()))
        else:
            out["thin"].append(float("nan"))
            out["other"].append(float("nan"))
        out["iou"].append(metrics.iou(mask[c], scene.labels == c + 1))
    return out


#: fitted coarse models by (kind, seed, size, thin-class knobs): the pixel model's fit is the costly part, and the
#: hand-off (a refine-step rule) does not change it
_FITTED: dict[tuple, ThinClassCoarse] = {}


def run(*, kinds: Sequence[str] = synthetic.KINDS, seeds: int = 2, size: int = 512, preset: str | None = None,
        narrow: int = 6, classes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {"config": ..., "scenes": [per-scene rows], "means": {method: {metric: [c1, c2]}}}.
    ``classes``: overrides of the ``multiclass`` config section (``MultiClassConfig``)."""
    base = preset_dict(preset) if preset else {}
    cfg = config_from_dict({**base, "multiclass": {**base.get("multiclass", {}), **(classes or {})}})
    sam = ProxySAM()
    scenes = []
    for kind in kinds:
        for seed in range(seeds):
            scene = synthetic.make_scene(kind, seed=seed, size=(size, size), classes=2)
            image, labels = synthetic.make_prompt_pair(kind, seed=500 + seed, size=(size, size), classes=2)
            mc = cfg.multiclass
            key = (kind, seed, size, mc.thin_model, mc.thin_width, mc.thin_threshold)  # what the coarse stage reads
            if key not in _FITTED:  # as job.models.build_coarse builds it; fitted once per scene across candidates
                seg = ThinClassCoarse(ProxySegGPT(), mc)
                seg.set_prompts([PromptPair(image=image, mask=labels, name="prompt")], num_classes=2)
                _FITTED[key] = seg
            seg = _FITTED[key]
            lines = class_centrelines(scene, narrow=narrow)
            t0 = time.perf_counter()
            res = run_image(scene.image, seg, sam, cfg)
            seconds = time.perf_counter() - t0
            row = {"kind": kind, "seed": seed, "seconds": round(seconds, 3),
                   "encoder_passes": res.stats.encoder_passes,
                   "coarse": score_classes(coarse_masks(res.maps["coarse"]), scene, lines),
                   "full": score_classes(res.mask, scene, lines)}
            scenes.append(row)
    means = {m: {k: [float(np.nanmean([s[m][k][c] for s in scenes])) if any(
        not np.isnan(s[m][k][c]) for s in scenes) else float("nan") for c in range(2)]
        for k in ("thin", "other", "iou")} for m in METHODS}
    return {"config": {"kinds": list(kinds), "seeds": seeds, "size": size, "preset": preset, "narrow": narrow,
                       "classes": list(CLASS_NAMES), "multiclass": dict(classes or {})},
            "scenes": scenes, "means": means}


#: the candidate fixes ``--ablation`` measures against each other (``MultiClassConfig`` overrides; the default last)
ABLATION: dict[str, dict[str, Any]] = {
    "before (none)": {"thin_model": "none", "handoff": False},
    "threshold 0.1": {"thin_model": "none", "handoff": False, "thin_threshold": 0.1},
    "handoff": {"thin_model": "none", "handoff": True},
    "pixel": {"thin_model": "pixel", "handoff": False},
    "pixel+handoff": {"thin_model": "pixel", "handoff": True},
}


def ablation(**kwargs: Any) -> dict[str, dict[str, Any]]:
    """``run`` once per ``ABLATION`` candidate; returns candidate -> its ``means``."""
    return {name: run(classes=over, **kwargs)["means"] for name, over in ABLATION.items()}


def ablation_table(means: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'candidate':16s} {'method':7s} {'thin:recall':>11s} {'thin:other':>10s} {'thin:iou':>8s} "
             f"{'blob:recall':>11s} {'blob:other':>10s} {'blob:iou':>8s}"]
    for name, m in means.items():
        for method in METHODS:
            r = m[method]
            lines.append(f"{name:16s} {method:7s} {_fmt(r['thin'][0]):>11s} {_fmt(r['other'][0]):>10s} "
                         f"{_fmt(r['iou'][0]):>8s} {_fmt(r['thin'][1]):>11s} {_fmt(r['other'][1]):>10s} "
                         f"{_fmt(r['iou'][1]):>8s}")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "    -" if np.isnan(v) else f"{v:5.3f}"


def table(result: dict[str, Any]) -> str:
    lines = [f"{'kind':8s} {'seed':>4s} {'class':6s} {'method':7s} {'thin':>6s} {'other':>6s} {'iou':>6s}"]
    rows = [(s["kind"], str(s["seed"]), s) for s in result["scenes"]]
    rows.append(("mean", "", result["means"]))
    for kind, seed, src in rows:
        for c, name in enumerate(CLASS_NAMES):
            for m in METHODS:
                r = src[m]
                lines.append(f"{kind:8s} {seed:>4s} {name:6s} {m:7s} {_fmt(r['thin'][c]):>6s} "
                             f"{_fmt(r['other'][c]):>6s} {_fmt(r['iou'][c]):>6s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench quality_classes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="scene side in px (default 512)")
    p.add_argument("--seeds", type=int, default=2, help="scenes per kind (default 2)")
    p.add_argument("--kinds", default=",".join(synthetic.KINDS), help="comma-separated scene kinds")
    p.add_argument("--preset", choices=("wildlife", "satellite", "medical", "technical"),
                   help="run the full method with this preset (default: PipelineConfig defaults)")
    p.add_argument("--narrow", type=int, default=6, help="class-2 parts at most this wide (px) count as thin")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--ablation", action="store_true",
                   help="measure the thin-only-class candidates against each other (ABLATION) and print their means")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.ablation:
        means = ablation(kinds=kinds, seeds=args.seeds, size=args.size, preset=args.preset, narrow=args.narrow)
        print(json.dumps(means) if args.json else ablation_table(means))
        return 0
    result = run(kinds=kinds, seeds=args.seeds, size=args.size, preset=args.preset, narrow=args.narrow)
    if args.json:
        print(json.dumps(result, default=lambda v: None))
    else:
        from job.bench.quality import GEOMETRY_NOTE

        print(table(result))
        print(GEOMETRY_NOTE)
    return 0
