"""The steps of the hybrid method as functions on arrays, built only on the model protocol (pure: no torch, no ray).

Which of them run, in which order and on what is the plan's business (``finedetail.plan``); ``finedetail.execute``
calls them for ``run_image`` and for the Ray job alike:

1. ``coarse_views``: the in-context segmenter on every distinct TTA view of the image (scale variants share the
   identity view: SegGPT resizes to its 448 canvas whatever the scale, so running it again would spend an encoder
   pass on the same pixels). Returns maps in the ORIGINAL frame.
2. ``refine_variants_batch``: per variant (a scale or a TTA view), the refiner on the transformed image, tiled into
   refiner-sized windows when the transformed image is larger than the refiner's input; per connected component of
   the coarse mask, multi-prompts (box, boundary points in/out, coarse mask as low-res logits), all components of a
   window in one batched decoder call against one encoding; split-then-merge (max over components) and union with
   the coarse map; with several classes, the class hand-off (``finedetail.classes.handoff``: the class-agnostic
   refiner's growth into a pixel another class claims with a higher coarse probability is dropped); mapped back to
   the original frame.
3. ``refine_crops``: per object of the provisional ensemble, a padded crop zoomed to fill the refiner's input.
4. ``fuse``: ensemble of every map + edge-aware post-processing.

All maps are ``(C, H, W) float32`` in [0, 1], original image frame, C = number of classes (1 for a binary task).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import numpy as np

from finedetail import crops, ensemble, prompts, tiling
from finedetail.classes import handoff
from finedetail.config import PipelineConfig
from finedetail.ensemble import ensemble
from finedetail.frames import Scale
from finedetail.models.base import CoarseSegmenter, PromptedRefiner
from finedetail.plan import Variant, view_names, variants
from finedetail.postprocess import one_class_per_pixel, postprocess
from finedetail.prompts import components, prompts_from_mask, tight_box
from finedetail.selective import cover_windows, detail_map, has_prompts, object_needs_crop, window_has_detail
from finedetail.state import Stats
from finedetail.transforms import Compose, parse_tta
from finedetail.types import ComponentPrompt, check_image

__all__ = [
    "coarse_views",
    "fuse",
    "provisional",
    "refine_crops",
    "refine_variants",
    "refine_variants_batch",
    "variant_transform",
]


def variant_transform(variant: Variant, hw: tuple[int, int]):
    """Transform from the original frame of an (h, w) image to the variant's frame: TTA view, then scale."""
    view = parse_tta(variant.view)
    if variant.scale == 1.0:
        return view
    view_hw = view.out_size(hw)
    return Compose((view, Scale.by_factor(view_hw, variant.scale)))


def coarse_views(images: Sequence[np.ndarray], model: CoarseSegmenter, cfg: PipelineConfig
                    ) -> tuple[list[dict[str, np.ndarray]], list[Stats]]:
    """Coarse maps of every distinct TTA view of every image, one batched ``predict`` call.

    Returns per image a dict view name -> (C, H, W) float32 in the ORIGINAL frame, and per image its Stats (the one
    ``predict`` call's passes and seconds split by the image's share of the views in it: equal shares, since every
    image has the same views and the model works on a fixed-size canvas).
    """
    names = view_names(cfg)
    batch, index = [], []
    for i, image in enumerate(images):
        check_image(image)
        for name in names:
            batch.append(parse_tta(name).apply_image(image))
            index.append((i, name))
    t0 = time.perf_counter()
    before = model.encoder_passes
    maps = model.predict(batch)
    passes = model.encoder_passes - before
    elapsed = time.perf_counter() - t0
    out: list[dict[str, np.ndarray]] = [{} for _ in images]
    for (i, name), m in zip(index, maps):
        view = parse_tta(name)
        out[i][name] = np.stack([view.invert_image(c) for c in m]).astype(np.float32, copy=False)
    stats = []
    for i in range(len(images)):
        share = len(names) / max(1, len(batch))
        stats.append(Stats(coarse_passes=round(passes * share), seconds={"coarse": elapsed * share}))
    return out, stats


def _select_parts(prompt: ComponentPrompt, cfg: PipelineConfig) -> ComponentPrompt:
    """Keep only the prompt parts the config asks for (points, low-res mask logits); the box is the refiner's
    own switch (``use_box``) since a prompt always carries its box."""
    r = cfg.refine
    points, labels = (prompt.points, prompt.labels) if r.use_points else (prompt.points[:0], prompt.labels[:0])
    return dataclasses.replace(prompt, points=points, labels=labels,
                               logits=prompt.logits if r.use_mask_input else None)


def _prompts_for(prob: np.ndarray, cfg: PipelineConfig) -> tuple[list[ComponentPrompt], int]:
    r = cfg.refine
    found, dropped = prompts_from_mask(prob, k=r.points, offset=r.point_offset, min_area=r.min_area,
                                          logits=r.use_mask_input)
    return [_select_parts(p, cfg) for p in found], dropped


def _refine_window(refiner: PromptedRefiner, embedding: Any, coarse: np.ndarray, cfg: PipelineConfig,
                   stats: Stats) -> np.ndarray:
    """Split-then-merge on one window: one batched refine call per class; (C, h, w) float32."""
    out = np.empty_like(coarse)
    for c in range(coarse.shape[0]):
        prompts, dropped = _prompts_for(coarse[c], cfg)
        stats.components += len(prompts)
        stats.dropped_components += dropped
        merged = np.zeros(coarse.shape[1:], np.float32)
        if prompts:
            refined = refiner.refine(embedding, prompts)
            merged = refined.max(axis=0)
        if cfg.refine.union:
            merged = np.maximum(merged, coarse[c])
        out[c] = merged
    # the refiner is class-agnostic: another class's stronger coarse claim wins over its growth (finedetail.classes)
    return handoff(out, coarse) if cfg.multiclass.handoff else out


def _windows(hw: tuple[int, int], refiner: PromptedRefiner, cfg: PipelineConfig) -> list[tiling.Window]:
    if max(hw) <= refiner.input_size:
        return [tiling.Window(0, 0, hw[0], hw[1])]
    return tiling.tile_grid(hw, tile=refiner.input_size, overlap=cfg.tile_overlap)


def _skipped_windows(ref_t: np.ndarray, coarse_t: np.ndarray, detail_t: np.ndarray, wins: list[tiling.Window],
                     *, scale: float, cfg: PipelineConfig) -> list[np.ndarray | None]:
    """Selective compute for the windows of a >1x variant (maps (C, H', W') and detail (H', W') bool in the
    variant's frame): per window None when it needs an encoder pass, else the map it takes instead,
    (C, win.h, win.w) float32, the reference's values (the best map at hand):

    - the variant needs no tiling: the refiner resizes the whole upscaled image to its input, i.e. it would see the
      pixels the reference's pass saw at the same magnification;
    - a window the coarse map gives no prompt (its pass would return the coarse map: the refiner adds nothing) or
      where the reference shows less than ``detail_px`` detail pixels (nothing fine to grow);
    - of the rest, a window whose detail the other chosen windows already own (``selective.cover_windows``).
    """
    sel = cfg.selective
    refs = [ref_t[(slice(None), *w.slices)] for w in wins]
    if len(wins) == 1:
        return refs
    cand = [k for k, w in enumerate(wins)
            if has_prompts(coarse_t[(slice(None), *w.slices)], min_area=cfg.refine.min_area)
            and window_has_detail(refs[k], min_px=sel.detail_px, detail=detail_t[w.slices], px_scale=scale ** 2)]
    chosen = {cand[k] for k in cover_windows(detail_t, [wins[k] for k in cand], min_px=sel.detail_px,
                                             overlap=cfg.tile_overlap, px_scale=scale ** 2)}
    return [None if k in chosen else refs[k] for k in range(len(wins))]


def refine_variants_batch(images: Sequence[np.ndarray], coarse: Sequence[dict[str, np.ndarray] | np.ndarray],
                          refiner: PromptedRefiner, cfg: PipelineConfig, *, only: Sequence[str] | None = None,
                          reference: Sequence[np.ndarray | None] | None = None
                          ) -> tuple[list[dict[str, np.ndarray]], list[Stats]]:
    """The refiner half of the hybrid for the variants (all named in ``only``, default all) of several images.

    images: (H, W, 3) uint8 each. coarse: per image, view name -> (C, H, W) float32 original frame (from
    ``coarse_views``), or one (C, H, W) map used for every view (coarse masks made elsewhere). Every window of
    every variant of every image goes through ONE ``refiner.encode`` call (the backend batches it to its encoder
    batch size); each window's components of one class go through one ``refine`` call against that encoding.
    A transformed image larger than the refiner's input is tiled into input-sized windows with
    ``cfg.tile_overlap`` and blended back (SAM would silently shrink it otherwise).
    With selective compute on, ``reference`` (per image, a lower-scale result (C, H, W) in the original frame, or
    None) lets a >1x variant skip windows (``_skipped_windows``: no tiling needed, no prompt or no fine detail in
    the reference there, or detail other windows own); a skipped window takes the reference's values instead of an
    encoder pass and blends at 1 % weight, so it only fills what no run window covers well.
    Returns per image: variant name -> (C, H, W) float32 in the ORIGINAL frame; and per image its Stats, whose
    ``seconds["refine"]`` is the time spent on that image: its own preparation, prompting and stitching, plus the
    shared encode call's time split by the windows it encoded for the image.
    """
    chosen = [v for v in variants(cfg) if only is None or v.name in only]
    unknown = set(only or ()) - {v.name for v in variants(cfg)}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; this config has {[v.name for v in variants(cfg)]}")
    all_stats = [Stats() for _ in images]
    jobs, tiles = [], []  # job: (image index, variant, transform, window, transformed coarse, transformed hw)
    own = [0.0] * len(images)  # seconds spent on each image alone (the shared encode call is split by tiles below)
    tile_owner: list[int] = []
    for i, image in enumerate(images):
        t_img = time.perf_counter()
        check_image(image)
        hw = image.shape[:2]
        for v in chosen:
            tr = variant_transform(v, hw)
            view_coarse = coarse[i] if not isinstance(coarse[i], dict) else coarse[i].get(v.view, coarse[i]["identity"])
            img_t = tr.apply_image(image)
            coarse_t = np.stack([np.clip(tr.apply_image(c), 0.0, 1.0) for c in view_coarse]).astype(np.float32)
            wins = _windows(img_t.shape[:2], refiner, cfg)
            ref_t = detail_t = None
            sel = cfg.selective
            if sel.enabled and v.scale > 1.0 and reference is not None and reference[i] is not None:
                ref_t = np.stack([np.clip(tr.apply_image(c), 0.0, 1.0) for c in reference[i]]).astype(np.float32)
                detail = detail_map(reference[i], thin_radius=sel.thin_radius).astype(np.float32)
                detail_t = tr.apply_image(detail) >= 0.5
            skipped = [None] * len(wins)
            if ref_t is not None:
                skipped = _skipped_windows(ref_t, coarse_t, detail_t, wins, scale=v.scale, cfg=cfg)
            for win, fixed in zip(wins, skipped):
                # refine.skip_empty: a window whose coarse map gives no prompt is not encoded; with no prompt the
                # refiner adds nothing there (``_refine_window`` returns the coarse map or zeros without the encoding)
                run = fixed is None and (not cfg.refine.skip_empty or has_prompts(
                    coarse_t[(slice(None), *win.slices)], min_area=cfg.refine.min_area))
                jobs.append((i, v, tr, win, coarse_t, img_t.shape[:2], fixed, run))
                if run:
                    tiles.append(np.ascontiguousarray(img_t[win.slices]))
                    tile_owner.append(i)
        own[i] += time.perf_counter() - t_img
    before = refiner.encoder_passes
    t_enc = time.perf_counter()
    embeddings = iter(refiner.encode(tiles) if tiles else [])
    t_enc = time.perf_counter() - t_enc
    for i in tile_owner:  # one batched encode for every image: each pays for its own windows
        own[i] += t_enc / len(tile_owner)
    passes = refiner.encoder_passes - before
    results: list[dict[str, Any]] = [{} for _ in images]
    for i, v, tr, win, coarse_t, hw_t, fixed, run in jobs:
        t_job = time.perf_counter()
        st = all_stats[i]
        if run:
            st.encoded_windows += 1
            st.refiner_passes += passes // max(1, len(tiles))
            window_map = _refine_window(refiner, next(embeddings), coarse_t[(slice(None), *win.slices)], cfg, st)
        elif fixed is None:  # prompt-less: exactly what a run would give, at full weight, without the encoder
            st.empty_windows += 1
            window_map = _refine_window(refiner, None, coarse_t[(slice(None), *win.slices)], cfg, st)
        else:
            window_map = fixed
        if v.name not in results[i]:
            stitchers = [tiling.Stitcher(hw_t, overlap=cfg.tile_overlap) for _ in range(coarse_t.shape[0])]
            results[i][v.name] = (tr, stitchers)
        # A skipped window's reference only fills what no run window covers well: at 1 % weight it loses to a run
        # window wherever that window's blend ramp is above ~0.01 (all but its outermost few pixels).
        weights = None if fixed is None else tiling.blend_weights(win, hw_t, overlap=cfg.tile_overlap) * 0.01
        for c, stitcher in enumerate(results[i][v.name][1]):
            stitcher.add(win, window_map[c], weights=weights)
        own[i] += time.perf_counter() - t_job
    outs = []
    for i, res in enumerate(results):
        t_img = time.perf_counter()
        out = {}
        for name, (tr, stitchers) in res.items():
            out[name] = np.stack([np.clip(tr.invert_image(st.result()), 0.0, 1.0) for st in stitchers]
                                 ).astype(np.float32)
        outs.append(out)
        all_stats[i].seconds["refine"] = own[i] + time.perf_counter() - t_img
    return outs, all_stats


def refine_variants(image: np.ndarray, coarse: dict[str, np.ndarray] | np.ndarray, refiner: PromptedRefiner,
                    cfg: PipelineConfig, *, only: Sequence[str] | None = None, reference: np.ndarray | None = None
                    ) -> tuple[dict[str, np.ndarray], Stats]:
    """``refine_variants_batch`` for one image: the whole hybrid on one image's variants."""
    outs, stats = refine_variants_batch([image], [coarse], refiner, cfg, only=only, reference=[reference])
    return outs[0], stats[0]


def provisional(maps: Sequence[np.ndarray], cfg: PipelineConfig) -> np.ndarray:
    """Ensemble of the variants' maps without post-processing: (C, H, W) soft map (>= 0.5 is the rule's decision)."""
    stack = np.stack(maps)  # (N, C, H, W)
    e = cfg.ensemble
    return np.stack([ensemble(stack[:, c], rule=e.rule, k=e.k, tau=e.tau, tau_high=e.tau_high)
                     for c in range(stack.shape[1])]).astype(np.float32)


def _crop_windows(prob: np.ndarray, hw: tuple[int, int], refiner: PromptedRefiner, cfg: PipelineConfig
                  ) -> list[tuple[tiling.Window, float]]:
    cc, sel = cfg.crop, cfg.selective
    comps, _ = components(prob >= 0.5, min_area=cc.min_area)
    comps.sort(key=lambda m: -int(m.sum()))
    detail = detail_map(prob, thin_radius=sel.thin_radius) if sel.enabled else None
    candidates: list[tuple[int, tiling.Window, float]] = []  # (detail pixels, window, zoom), largest objects first
    for mask in comps:
        if sel.enabled and not object_needs_crop(prob, mask, uncertain_frac=sel.uncertain_frac,
                                                 detail_ratio=sel.detail_ratio):
            continue
        win = crops.object_window(tight_box(mask), hw, pad_frac=cc.pad_frac, min_pad=cc.min_pad)
        zoom = crops.zoom_for(win, target_long=refiner.input_size, max_zoom=cc.max_zoom)
        parts = [(win, zoom)]
        if zoom < cc.min_zoom:
            side = max(1, int(refiner.input_size / cc.min_zoom))
            parts = [(w, crops.zoom_for(w, target_long=refiner.input_size, max_zoom=cc.max_zoom))
                     for w in crops.split_window(win, max_side=side)]
        for w, z in parts:
            n = 0 if detail is None else int(np.count_nonzero(detail[w.slices] & mask[w.slices]))
            candidates.append((n, w, z))
    limit = cc.max_crops
    if sel.enabled:  # the crops with the most of their object's detail first (stable: ties keep the size order)
        candidates.sort(key=lambda c: -c[0])
        area = max(1.0, hw[0] * hw[1] / refiner.input_size ** 2)
        limit = min(limit, math.ceil(sel.crops_per_input * area - 1e-9))
    return [(w, z) for _, w, z in candidates[:limit]]


def refine_crops(image: np.ndarray, prov: np.ndarray, refiner: PromptedRefiner, cfg: PipelineConfig
                 ) -> tuple[np.ndarray, Stats]:
    """High-resolution crop refinement of every object of the provisional map ``prov`` (C, H, W).

    Each crop (padded object window, zoomed so its long side fills the refiner input) is re-prompted in crop
    coordinates, merged with the provisional crop, resized back and pasted (``cfg.crop.paste``) into a copy of
    ``prov``. All crops of the image are encoded in one ``encode`` call. Returns (C, H, W) float32, original frame.
    """
    check_image(image)
    hw = image.shape[:2]
    stats = Stats()
    t0 = time.perf_counter()
    out = prov.astype(np.float32, copy=True)
    jobs, tiles = [], []
    for c in range(prov.shape[0]):
        for win, zoom in _crop_windows(prov[c], hw, refiner, cfg):
            crop_img = crops.crop_image(image, win, zoom)
            jobs.append((c, win, zoom))
            tiles.append(crop_img)
    before = refiner.encoder_passes
    embeddings = refiner.encode(tiles) if tiles else []
    stats.refiner_passes += refiner.encoder_passes - before
    stats.crops += len(tiles)
    for (c, win, zoom), emb in zip(jobs, embeddings):
        coarse_crop = np.clip(crops.crop_image(prov[c], win, zoom), 0.0, 1.0)
        refined = _refine_window(refiner, emb, coarse_crop[None], cfg, stats)[0]
        if cfg.multiclass.handoff and prov.shape[0] > 1:  # the other classes' provisional maps arbitrate the growth
            claims = np.stack([coarse_crop if k == c else np.clip(crops.crop_image(prov[k], win, zoom), 0.0, 1.0)
                               for k in range(prov.shape[0])])
            refined = handoff(np.stack([refined if k == c else claims[k] for k in range(prov.shape[0])]),
                              claims)[c]
        back = crops.from_crop_image(refined, win)
        crops.paste(out[c], np.clip(back, 0.0, 1.0).astype(np.float32), win, mode=cfg.crop.paste)
    stats.seconds["crop"] = time.perf_counter() - t0
    return out, stats


def fuse(image: np.ndarray, maps: Sequence[np.ndarray], cfg: PipelineConfig, *,
         weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble every map ((C, H, W) each) and post-process per class with the image as guide.

    Returns (prob (C, H, W) float32, mask (C, H, W) bool). With several classes a pixel keeps only the class of
    highest fused probability (ties go to the lower class index).
    """
    stack = np.stack(maps)  # (N, C, H, W)
    e = cfg.ensemble
    probs, masks = [], []
    for c in range(stack.shape[1]):
        soft = ensemble(stack[:, c], rule=e.rule, k=e.k, tau=e.tau, tau_high=e.tau_high,
                            weights=weights if e.rule == "mean" else None)
        p, m = postprocess(soft.astype(np.float32), image, cfg.post)
        probs.append(p)
        masks.append(m)
    prob = np.stack(probs).astype(np.float32)
    return prob, one_class_per_pixel(np.stack(masks), prob)
