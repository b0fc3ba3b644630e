"""The method as a plan: which steps run, in which order, on what (pure: no torch, no ray).

``build_plan(cfg)`` turns a `PipelineConfig` into an ordered tuple of `Step` s::

    coarse            image -> coarse          in-context segmenter on each view          (model: coarse)
    refine-<variant>  image, coarse -> <variant>  the refiner on one variant (view x scale) (model: refiner)
    crop              image, <variants> -> crop   zoomed crops of the provisional ensemble (model: refiner)
    fuse              image, <variants>, crop -> prob, mask   ensemble + post-processing  (CPU)

Every step reads and writes entries of one per-image state (``finedetail.state.ImageState``) and every map it writes
is in the ORIGINAL image frame, whatever frame the step computes in (``Step.frame``). ``finedetail.execute`` runs a
step (or one group of ``Plan.groups``) on a batch of states; ``run_image`` runs the whole plan in one process and
the Ray job runs the steps in one operator per model (``job.operators``: coarse, refiner), or all of them in one
chained actor, through that same executor.

Words (README, Architecture, Frames): a *view* is a test-time augmentation of the image (identity, hflip, rot90,
shift:...; ``PipelineConfig.tta`` lists them); a *variant* is a view at a scale (``Variant``), the unit the hybrid
runs on and the ensemble votes over.

Selective compute (README, The method, step 6) is decided here, per image, from what the state already holds: ``skip_variant``
(a view not worth its pass) and ``reference_for`` (the lower-scale result a >1x variant compares its windows
with); which crops run is decided inside the crop step (``finedetail.pipeline.refine_crops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from finedetail.config import PipelineConfig
from finedetail.selective import detail_map, variants_agree

__all__ = ["KINDS", "Plan", "Step", "Variant", "build_plan", "reference_for", "skip_variant", "view_names",
           "variants"]

#: step kinds: "copy" is a variant step with refinement off (its map is its view's coarse map, no model)
KINDS = ("coarse", "refine", "copy", "crop", "fuse")


@dataclass(frozen=True)
class Variant:
    """What the whole hybrid runs on: a view of the image at a scale (a scale with the identity view, or a
    non-identity view at 1x). ``view``: a ``finedetail.transforms.parse_tta`` name."""

    name: str
    scale: float = 1.0
    view: str = "identity"


def variants(cfg: PipelineConfig) -> list[Variant]:
    """Scale variants (identity view, ascending scale, so a lower scale's result exists when a higher one runs)
    then the non-identity views at 1x in config order."""
    out = [Variant(f"scale{s:g}", s, "identity") for s in sorted(cfg.scales)]
    out += [Variant(t, 1.0, t) for t in cfg.tta if t != "identity"]
    return out


def view_names(cfg: PipelineConfig) -> list[str]:
    """Distinct view names the coarse step runs, identity first.

    With selective compute only the identity view: other views may be skipped later, so their refine step maps the
    identity coarse map into its view instead of spending a coarse pass up front."""
    if cfg.selective.enabled:
        return ["identity"]
    names = ["identity"] + [v.view for v in variants(cfg) if v.view != "identity"]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Step:
    """One step of the plan.

    name: unique, also the step's name in the job's attempt notes ("coarse", "refine-scale2", "crop", "fuse").
    kind: one of ``KINDS``. stage: the manifest's ``seconds_<stage>`` it is timed under (coarse/refine/crop/fuse).
    inputs / outputs: state entries read / written ("image", "coarse", a variant name, "crop", "prob", "mask").
    frame: where the step computes (its outputs are always in the original frame). model: "coarse", "refiner" or
    None (CPU only). variant: the `Variant` of a refine/copy step, else None.
    """

    name: str
    kind: str
    stage: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    frame: str
    model: str | None = None
    variant: Variant | None = None


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step {name!r} in this plan; it has {self.names}")

    def groups(self) -> list[tuple[Step, ...]]:
        """The steps in order, consecutive refine steps that read none of each other's outputs joined into one
        group: a group runs as one batched call (every window of every variant through one ``encode``), with
        exactly the values its steps give one by one. With selective compute each refine step reads the earlier
        variants (``skip_variant``, ``reference_for``), so each is its own group."""
        out: list[tuple[Step, ...]] = []
        for s in self.steps:
            prev = out[-1] if out else ()
            if (s.kind == "refine" and prev and prev[-1].kind == "refine"
                    and not set(s.inputs) & {o for p in prev for o in p.outputs}):
                out[-1] = (*prev, s)
            else:
                out.append((s,))
        return out


def build_plan(cfg: PipelineConfig, *, coarse_given: bool = False) -> Plan:
    """The steps of ``cfg`` in execution order. ``coarse_given``: coarse maps are made elsewhere (``--coarse``),
    so the state starts with them and there is no coarse step."""
    steps = []
    if not coarse_given:
        views = ", ".join(view_names(cfg))
        steps.append(Step("coarse", "coarse", "coarse", ("image",), ("coarse",),
                          f"each view ({views}) at the segmenter's canvas", model="coarse"))
    names = []
    for v in variants(cfg):
        if cfg.refine.enabled:
            after = tuple(names) if cfg.selective.enabled else ()
            frame = f"{v.view} view at {v.scale:g}x, tiled into refiner-input windows when larger"
            steps.append(Step(f"refine-{v.name}", "refine", "refine", ("image", "coarse", *after), (v.name,), frame,
                              model="refiner", variant=v))
        else:
            steps.append(Step(f"refine-{v.name}", "copy", "refine", ("coarse",), (v.name,), "original",
                              variant=v))
        names.append(v.name)
    fused = tuple(names)
    if cfg.crop.enabled:
        steps.append(Step("crop", "crop", "crop", ("image", *names), ("crop",),
                          "padded object windows zoomed to the refiner input", model="refiner"))
        fused += ("crop",)
    steps.append(Step("fuse", "fuse", "fuse", ("image", *fused), ("prob", "mask"), "original"))
    return Plan(tuple(steps))


def skip_variant(variant: Variant, done: Mapping[str, np.ndarray], cfg: PipelineConfig) -> bool:
    """Selective compute: skip a non-identity view (``done``: variant name -> (C, H, W), the variants already run)
    when those agree (pairwise mask IoU >= ``agree_iou``) or when the 1x result shows less than ``detail_px`` detail pixels
    (``finedetail.selective.detail_map``): a re-sampled view of an image without fine detail has nothing to fix."""
    sel = cfg.selective
    if not sel.enabled or variant.view == "identity":
        return False
    if variants_agree(list(done.values()), min_iou=sel.agree_iou):
        return True
    if not sel.tta_after_multiscale and any(v.scale > 1.0 and v.name in done for v in variants(cfg)):
        return True
    base = done.get(next((v.name for v in variants(cfg) if v.view == "identity" and v.scale == 1.0), ""))
    return base is not None and np.count_nonzero(detail_map(base, thin_radius=sel.thin_radius)) < sel.detail_px


def reference_for(variant: Variant, done: Mapping[str, np.ndarray], cfg: PipelineConfig) -> np.ndarray | None:
    """Selective compute: the result a >1x variant compares its tiles with (the largest done scale <= 1)."""
    if not cfg.selective.enabled or variant.scale <= 1.0:
        return None
    lower = [v for v in variants(cfg) if v.view == "identity" and v.scale <= 1.0 and v.name in done]
    return done[max(lower, key=lambda v: v.scale).name] if lower else None
