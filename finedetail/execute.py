"""Run the plan's steps on per-image states: the one executor of ``run_image`` and of every Ray operator of the job
(pure: no torch, no ray; models only through their protocol).

``run_steps(steps, states, models, cfg)`` runs one step (or one group of ``Plan.groups``) on a batch of
`ImageState` s, in place. ``run_image`` runs every group of the plan on one state; the job runs the same groups in
one Ray operator per model (``job.operators``) or in one chained actor, the fuse step in its write task, and moves
states between operators as ``ImageState.to_bytes``, which is lossless: the maps a step stores are quantised once,
in the state (``finedetail.state``), wherever it runs. So the job and ``run_image`` give the same bytes by
construction.

A step computes all its results before it stores any, so a step that raises leaves its states as they were (the job
then runs it again image by image to isolate the culprit).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from finedetail import pipeline
from finedetail.config import PipelineConfig
from finedetail.models.base import CoarseSegmenter, PromptedRefiner
from finedetail.plan import Step, build_plan, reference_for, skip_variant
from finedetail.state import ImageState, Stats
from finedetail.types import check_image

__all__ = ["ImageResult", "Models", "run_image", "run_steps"]


@dataclass
class Models:
    """The models a step may need (``Step.model``): None where no step of the caller needs it."""

    coarse: CoarseSegmenter | None = None
    refiner: PromptedRefiner | None = None

    def get(self, step: Step):
        model = getattr(self, step.model) if step.model else None
        if step.model and model is None:
            raise RuntimeError(f"step {step.name!r} needs the {step.model} model, but none was given; build it "
                               "for every step whose Step.model names it")
        return model


def run_steps(steps: Sequence[Step], states: Sequence[ImageState], models: Models, cfg: PipelineConfig) -> None:
    """Run ``steps`` (one step, or consecutive refine steps that read none of each other's outputs) on ``states``."""
    kinds = {s.kind for s in steps}
    if not steps or (len(steps) > 1 and kinds != {"refine"}):
        raise ValueError(f"run_steps takes one step or a group of refine steps, got {[s.name for s in steps]}")
    if states:
        _RUN[steps[0].kind](steps, states, models, cfg)


def _coarse(steps, states, models, cfg):
    views, stats = pipeline.coarse_views([s.image for s in states], models.get(steps[0]), cfg)
    for st, v, s in zip(states, views, stats):
        for name, m in v.items():
            st.put_coarse(name, m)
        st.stats = st.stats.merge(s)


def _done_variants(st: ImageState, step: Step) -> dict[str, np.ndarray]:
    """The variant maps a selective refine step decides from (its inputs after image and coarse), float32."""
    return {n: st.map(n) for n in step.inputs[2:] if n in st.maps}


def _refine(steps, states, models, cfg):
    """Selective compute per image (``skip_variant``, ``reference_for``), then one ``refine_variants_batch`` call
    per set of variants to run (all images share one set unless selective compute skipped a view for some)."""
    refiner = models.get(steps[0])
    by_names: dict[tuple[str, ...], list[tuple[ImageState, np.ndarray | None]]] = defaultdict(list)
    skipped: list[tuple[ImageState, str]] = []
    for st in states:
        run, ref = [], None
        for step in steps:
            done = _done_variants(st, step)
            if skip_variant(step.variant, done, cfg):
                skipped.append((st, step.variant.name))
                continue
            run.append(step.variant.name)
            ref = reference_for(step.variant, done, cfg) if ref is None else ref
        if run:
            by_names[tuple(run)].append((st, ref))
    results = []
    for names, todo in by_names.items():
        maps, stats = pipeline.refine_variants_batch([st.image for st, _ in todo], [st.coarse_views() for st, _ in todo],
                                               refiner, cfg, only=list(names), reference=[r for _, r in todo])
        results += [(st, m, s) for (st, _), m, s in zip(todo, maps, stats)]
    for st, m, s in results:
        for name, prob in m.items():
            st.put_map(name, prob)
        st.stats = st.stats.merge(s)
    for st, name in skipped:
        st.skipped.append(name)


def _copy(steps, states, models, cfg):
    """Refinement off: a variant's map is its view's coarse map."""
    (step,) = steps
    for st in states:
        st.put_map(step.variant.name, st.coarse_map(step.variant.view))


def _inputs(st: ImageState, step: Step) -> list[str]:
    """The maps of ``step.inputs`` this state holds (skipped variants left out), in plan order."""
    names = [n for n in step.inputs if n not in ("image", "coarse")]
    missing = [n for n in names if n not in st.maps and n not in st.skipped]
    if missing:
        raise RuntimeError(f"step {step.name!r} needs {missing}, which no earlier step made or skipped; run the "
                           "plan's steps in order")
    return [n for n in names if n in st.maps]


def _crop(steps, states, models, cfg):
    (step,) = steps
    refiner = models.get(step)
    results = []
    for st in states:
        t0 = time.perf_counter()
        prov = pipeline.provisional([st.map(n) for n in _inputs(st, step)], cfg)
        crop_map, s = pipeline.refine_crops(st.image, prov, refiner, cfg)
        s.seconds["crop"] = time.perf_counter() - t0  # the provisional ensemble included
        results.append((crop_map, s))
    for st, (crop_map, s) in zip(states, results):
        st.put_map("crop", crop_map)
        st.stats = st.stats.merge(s)


def _fuse(steps, states, models, cfg):
    (step,) = steps
    results = []
    for st in states:
        t0 = time.perf_counter()
        names = _inputs(st, step)
        weights = [cfg.crop.weight if n == "crop" else 1.0 for n in names]
        prob, mask = pipeline.fuse(st.image, [st.map(n) for n in names], cfg, weights=weights)
        results.append((prob, mask, time.perf_counter() - t0))
    for st, (prob, mask, seconds) in zip(states, results):
        st.put_fused(prob, mask)
        st.stats = st.stats.merge(Stats(seconds={"fuse": seconds}))


_RUN = {"coarse": _coarse, "refine": _refine, "copy": _copy, "crop": _crop, "fuse": _fuse}


@dataclass
class ImageResult:
    prob: np.ndarray  # (C, H, W) float32: the fused map as the state stores it (what the job writes)
    mask: np.ndarray  # (C, H, W) bool
    stats: Stats
    maps: dict[str, np.ndarray]  # every intermediate map by name ("coarse", variant names, "crop"), float32
    state: ImageState


def run_image(image: np.ndarray, coarse_model: CoarseSegmenter | None, refiner: PromptedRefiner | None,
              cfg: PipelineConfig, *, coarse: np.ndarray | None = None) -> ImageResult:
    """The whole plan on one image in this process (the job runs the same steps across its operators).

    ``coarse`` (C, H, W) float32 in [0, 1] replaces the coarse model (masks made elsewhere)."""
    check_image(image)
    if coarse is None and coarse_model is None:
        raise ValueError("run_image needs a coarse model or a coarse map; pass one of them")
    state = ImageState(image=image)
    if coarse is not None:
        state.put_coarse("identity", coarse)
    plan = build_plan(cfg, coarse_given=coarse is not None)
    models = Models(coarse=coarse_model, refiner=refiner)
    for group in plan.groups():
        run_steps(group, [state], models, cfg)
    maps = {"coarse": state.coarse_map(), **{n: state.map(n) for n in state.maps}}
    return ImageResult(prob=state.fused_prob(), mask=state.mask, stats=state.stats, maps=maps, state=state)
