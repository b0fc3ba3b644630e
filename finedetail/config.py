"""Pipeline configuration: frozen dataclasses checked in ``__post_init__`` (pure: no torch, no ray).

``PipelineConfig`` is everything that decides *what* the method computes (scales, TTA, prompts, crops, ensembling,
post-processing). It is hashed into ``config_hash`` so a resumed job can tell whether an existing output was made
with the same settings. Where the models come from (checkpoints, device, batch sizes) lives in the job's config.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from finedetail.knobs import knob
from finedetail.postprocess import PostprocessConfig

__all__ = [
    "MultiClassConfig",
    "CropConfig",
    "EnsembleConfig",
    "PipelineConfig",
    "PostprocessConfig",
    "REFINERS",
    "RefineConfig",
    "SelectiveConfig",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "unknown_key_error",
]

MULTIMASK_MODES = ("coarse", "iou", "single")
ENSEMBLE_RULES = ("union", "majority", "mean", "majority_or_confident")
PASTE_MODES = ("max", "replace")
#: the promptable refiners of the seggpt-sam backend: segment-anything's SAM (``models.sam``), HQ-SAM and SAM 2
#: through transformers (``models.hf_sam``); README, "Choosing the refiner"
REFINERS = ("sam", "sam-hq", "sam2")
THIN_MODELS = ("pixel", "none")


@dataclass(frozen=True)
class RefineConfig:
    """SAM multi-prompt refinement of each connected component of the coarse mask (README, The method, step 2).

    points: boundary points per component and sign (``points`` positive just inside + ``points`` negative just
    outside, ``point_offset`` px from the boundary); components with area < ``min_area`` px are dropped (counted).
    ``multimask``: "coarse" keeps SAM's candidate that best agrees (IoU) with the component's coarse mask, "iou" the
    one with the highest predicted IoU, "single" asks SAM for one mask. ``union``: refined ∪ coarse (recall first).
    ``skip_empty``: a refiner window (the whole image, or one tile of an upscaled variant) whose coarse map gives no
    prompt is not encoded; its map is what the refiner would return there anyway (the coarse map with ``union``, else
    zeros), so outputs are identical and only encoder passes are saved. Off only to measure the full compute with
    random weights (benchmarks), whose coarse maps are empty.
    """

    enabled: bool = knob(True, "run the refiner on each variant; off: a variant's map is its view's coarse map "
                         "(no refiner pass)")
    points: int = knob(8, "boundary points per component and sign: this many positive just inside and as many "
                          "negative just outside", range=">= 0")
    point_offset: float = knob(2.0, "distance of the boundary points from the component's outline (px)", range="> 0")
    use_box: bool = knob(True, "give SAM the component's tight box", backends="seggpt-sam")
    use_points: bool = knob(True, "give the refiner the boundary points")
    use_mask_input: bool = knob(True, "give the refiner the coarse component as its low-res mask input (SAM: "
                                      "256 x 256 logits)", backends="seggpt-sam, proxy")
    multimask: str = knob("coarse", "which of SAM's candidate masks to keep: 'coarse' the one that best agrees "
                                    "(IoU) with the coarse component, 'iou' the highest predicted IoU, 'single' asks "
                                    "SAM for one mask", range=f"one of: {', '.join(MULTIMASK_MODES)}",
                          backends="seggpt-sam")
    min_area: int = knob(16, "coarse components smaller than this many px are dropped (counted, not refined)",
                         range=">= 0")
    union: bool = knob(True, "a variant's map is refined ∪ coarse (recall first; later steps clean up)")
    skip_empty: bool = knob(True, "a refiner window whose coarse map gives no prompt is not encoded (same output, "
                                  "fewer passes); off only to measure full compute with random weights")

    def __post_init__(self) -> None:
        if self.points < 0:
            raise ValueError(f"refine.points must be >= 0, got {self.points=}")
        if self.point_offset <= 0:
            raise ValueError(f"refine.point_offset must be > 0 px, got {self.point_offset=}")
        if self.multimask not in MULTIMASK_MODES:
            raise ValueError(f"refine.multimask must be one of {MULTIMASK_MODES}, got {self.multimask=}")
        if self.min_area < 0:
            raise ValueError(f"refine.min_area must be >= 0, got {self.min_area=}")


@dataclass(frozen=True)
class CropConfig:
    """High-resolution crop refinement (README, The method, step 4): per object of the provisional ensemble, a padded crop is
    zoomed so its long side fills the refiner's input (at most ``max_zoom``). Objects whose crop would get a zoom below
    ``min_zoom`` are split into overlapping crops that each get ``min_zoom``. Objects with area < ``min_area`` px are
    skipped; at most ``max_crops`` crops per image and class (largest objects first)."""

    enabled: bool = knob(True, "run the high-resolution crop step")
    pad_frac: float = knob(0.25, "context added around each object's box, as a fraction of its side", range=">= 0")
    min_pad: int = knob(16, "at least this much context around each object's box (px)", range=">= 0")
    min_area: int = knob(64, "objects smaller than this many px get no crop", range=">= 0")
    min_zoom: float = knob(1.5, "an object whose crop would be zoomed less than this is split into overlapping "
                                "crops that each get this zoom", range="> 0 and <= max_zoom")
    max_zoom: float = knob(8.0, "the most a crop is zoomed to fill the refiner's input", range=">= min_zoom")
    max_crops: int = knob(16, "at most this many crops per image and class (largest objects first)", range=">= 1")
    paste: str = knob("max", "how a crop's map is pasted into the provisional map: 'max' keeps the higher value "
                             "(overlapping objects never erase each other), 'replace' overwrites the window",
                      range=f"one of: {', '.join(PASTE_MODES)}")
    weight: float = knob(1.0, "weight of the crop map in the ensemble (each variant weighs 1)", range=">= 0")

    def __post_init__(self) -> None:
        if self.pad_frac < 0:
            raise ValueError(f"crop.pad_frac must be >= 0, got {self.pad_frac=}")
        if self.min_pad < 0 or self.min_area < 0:
            raise ValueError(f"crop.min_pad and crop.min_area must be >= 0, got {self.min_pad=}, {self.min_area=}")
        if not (0 < self.min_zoom <= self.max_zoom):
            raise ValueError(f"crop zooms must satisfy 0 < min_zoom <= max_zoom, got {self.min_zoom=}, {self.max_zoom=}")
        if self.max_crops < 1:
            raise ValueError(f"crop.max_crops must be >= 1, got {self.max_crops=}")
        if self.paste not in PASTE_MODES:
            raise ValueError(f"crop.paste must be one of {PASTE_MODES}, got {self.paste=}")
        if self.weight < 0:
            raise ValueError(f"crop.weight must be >= 0, got {self.weight=}")


@dataclass(frozen=True)
class EnsembleConfig:
    """How the variants' maps (and the crop map) are combined (README, The method, step 5); see ``finedetail.ensemble``.
    ``k`` None means a strict majority (n // 2 + 1)."""

    rule: str = knob("majority_or_confident", "how the maps are combined: 'union', 'majority' (k of n), 'mean' "
                                              "(mean prob >= tau), 'majority_or_confident' (majority, or any map "
                                              ">= tau_high)", range=f"one of: {', '.join(ENSEMBLE_RULES)}")
    k: int | None = knob(None, "votes (maps >= 0.5) a pixel needs under 'majority' and 'majority_or_confident'; null: "
                              "a strict majority (n // 2 + 1)",
                         range=">= 1 or null")
    tau: float = knob(0.5, "under 'mean', a pixel whose weighted mean probability is at least this is kept (a "
                           "map votes where it is >= 0.5)", range="in [0, 1]")
    tau_high: float = knob(0.9, "under 'majority_or_confident', a pixel any map gives at least this is kept, "
                                "whatever the votes",
                           range="in [0, 1]")

    def __post_init__(self) -> None:
        if self.rule not in ENSEMBLE_RULES:
            raise ValueError(f"ensemble.rule must be one of {ENSEMBLE_RULES}, got {self.rule=}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"ensemble.k must be >= 1 (or null for a strict majority), got {self.k=}")
        if not (0.0 <= self.tau <= 1.0 and 0.0 <= self.tau_high <= 1.0):
            raise ValueError(f"ensemble.tau and tau_high must lie in [0, 1], got {self.tau=}, {self.tau_high=}")


@dataclass(frozen=True)
class SelectiveConfig:
    """Selective compute (README, The method, step 6; rules in ``finedetail.selective``, tuned with ``python -m job.bench
    quality``). "Detail" is the thin parts of a map's mask (mask minus its opening by a disc of radius
    ``thin_radius``: parts at most 2 * thin_radius px wide); pixel counts are in the ORIGINAL image frame. When
    enabled:

    - the coarse stage runs the identity view only (a TTA view that runs maps the identity coarse map into its frame);
    - a >1x scale variant that needs no tiling reuses the 1x result (the refiner resizes every untiled image to its
      input: it would see the same pixels at the same magnification); a tiled one runs a window only where the 1x
      result shows >= ``detail_px`` detail pixels AND the coarse map gives the window a prompt (a window without one
      returns its coarse input); skipped windows take the 1x values;
    - a TTA view is skipped when the variants already run agree (pairwise mask IoU >= ``agree_iou``), when the 1x
      result shows fewer than ``detail_px`` detail pixels (nothing for a re-sampled view to fix), or, unless
      ``tta_after_multiscale``, once a >1x variant has run (it re-sampled every detailed window at a higher
      magnification than a 1x view can);
    - crops only for objects whose outline is uncertain (share of 0.1 < p < 0.9 pixels in its band >=
      ``uncertain_frac``) or detailed (perimeter^2 / area >= ``detail_ratio``); the crop windows holding the most
      detail pixels of their object first, at most ``crops_per_input`` per refiner input's worth of image area per
      class (ceil(crops_per_input * max(1, H * W / input**2)): 2 for an image up to 1024 x 1024, 8 for
      2048 x 2048 with SAM) and never more than ``CropConfig.max_crops``.
    """

    enabled: bool = knob(False, "selective compute: skip TTA views, 2x tiles and crops that would not change the "
                                "result")
    agree_iou: float = knob(0.9, "a TTA view is skipped when the variants already run agree this well (pairwise "
                                 "mask IoU)", range="in (0, 1]")
    tta_after_multiscale: bool = knob(False, "still run TTA views after a >1x variant has run")
    detail_px: int = knob(64, "detail pixels (original frame) a 2x tile needs to run, and the 1x result needs "
                              "for TTA views to run", range=">= 0")
    thin_radius: int = knob(3, "detail = mask minus its opening by a disc of this radius (parts at most "
                               "2 * thin_radius px wide)", range=">= 1")
    uncertain_frac: float = knob(0.05, "an object whose outline band has at least this share of 0.1 < p < 0.9 "
                                       "pixels is uncertain and gets crops", range="in [0, 1]")
    detail_ratio: float = knob(60.0, "an object with perimeter^2 / area at least this is detailed and gets crops",
                               range=">= 0")
    crops_per_input: float = knob(2.0, "crops per refiner input's worth of image area per class (at most "
                                       "crop.max_crops)", range=">= 0")

    def __post_init__(self) -> None:
        if not (0.0 < self.agree_iou <= 1.0):
            raise ValueError(f"selective.agree_iou must lie in (0, 1], got {self.agree_iou=}")
        if self.detail_px < 0:
            raise ValueError(f"selective.detail_px must be >= 0 px, got {self.detail_px=}")
        if self.thin_radius < 1:
            raise ValueError(f"selective.thin_radius must be >= 1 px, got {self.thin_radius=}")
        if not (0.0 <= self.uncertain_frac <= 1.0):
            raise ValueError(f"selective.uncertain_frac must lie in [0, 1], got {self.uncertain_frac=}")
        if self.detail_ratio < 0:
            raise ValueError(f"selective.detail_ratio must be >= 0, got {self.detail_ratio=}")
        if self.crops_per_input < 0:
            raise ValueError(f"selective.crops_per_input must be >= 0, got {self.crops_per_input=}")


@dataclass(frozen=True)
class MultiClassConfig:
    """Multi-class runs (two or more classes; a binary task ignores this section): how a class made only of thin
    parts is found and kept apart from the others (``finedetail.classes``, which explains why).

    ``thin_width``: a class is thin-only when the widths of its prompt masks' parts (95th percentile along their
    centre lines), shrunk to the coarse model's canvas (448 px for SegGPT), stay below this many canvas px: narrower
    than half a 16-px patch, the coarse model cannot resolve it. ``thin_model``: what the coarse map of a thin-only
    class is complemented with: "pixel" a pixel-resolution model fitted on the same prompts
    (``finedetail.models.thin.PixelSegmenter``, the class against everything else), "none" the coarse model alone.
    ``thin_threshold``: the coarse probability that counts as 0.5 for a thin-only class (0.5: unchanged).
    ``handoff``: the refiner is class-agnostic, so what it adds to a class beyond that class's coarse map is dropped
    where another class claims the pixel (its coarse or refined map >= 0.5) with a higher coarse probability.
    """

    thin_width: float = knob(8.0, "a class whose prompt parts are narrower than this on the coarse model's canvas "
                                  "(px, 95th percentile along their centre lines) is thin-only", range="> 0")
    thin_model: str = knob("pixel", "what complements a thin-only class's coarse map: 'pixel' a pixel-resolution "
                                    "model fitted on the prompts (the class against everything else), 'none' the "
                                    "coarse model alone", range=f"one of: {', '.join(THIN_MODELS)}")
    thin_threshold: float = knob(0.5, "coarse probability that counts as 0.5 for a thin-only class (0.5: "
                                      "unchanged)", range="in (0, 1)")
    handoff: bool = knob(True, "what the refiner adds to a class beyond its coarse map is dropped where another "
                               "class claims the pixel (coarse or refined >= 0.5) with a higher coarse probability")

    def __post_init__(self) -> None:
        if not self.thin_width > 0:
            raise ValueError(f"multiclass.thin_width must be > 0 canvas px, got {self.thin_width=}")
        if self.thin_model not in THIN_MODELS:
            raise ValueError(f"multiclass.thin_model must be one of {THIN_MODELS}, got {self.thin_model=}")
        if not 0.0 < self.thin_threshold < 1.0:
            raise ValueError(f"multiclass.thin_threshold must lie in (0, 1), got {self.thin_threshold=}")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole method. Variants = one per scale (identity TTA) + one per non-identity TTA name (at scale 1).

    scales: factors applied to the image before the refiner sees it; a scaled image whose long side exceeds the
      refiner's input (1024 for SAM) is tiled into ``tile_overlap``-overlapping windows of that size, because SAM
      would silently shrink it back otherwise.
    tta: names understood by ``finedetail.transforms.parse_tta`` ("identity", "hflip", "vflip", "rot90", "rot180",
      "rot270", "shift:DY,DX").
    """

    scales: tuple[float, ...] = knob((1.0, 2.0), "one variant per scale: the image is resized by this factor "
                                                 "before the refiner sees it (a scaled image larger than the "
                                                 "refiner's input is tiled)", range="> 0, <= 8, no repeats")
    tta: tuple[str, ...] = knob(("identity", "hflip"), "test-time augmentation views; each but identity is a "
                                                       "variant at 1x, mapped back to the original frame",
                                range="identity, hflip, vflip, rot90, rot180, rot270, shift:DY,DX; no repeats")
    tile_overlap: int = knob(128, "overlap of the refiner-input windows an upscaled image is tiled into (px)",
                             range=">= 0")
    refine: RefineConfig = knob(factory=RefineConfig, doc="refiner step (section)")
    crop: CropConfig = knob(factory=CropConfig, doc="crop step (section)")
    ensemble: EnsembleConfig = knob(factory=EnsembleConfig, doc="how the maps are combined (section)")
    post: PostprocessConfig = knob(factory=PostprocessConfig, doc="post-processing of the fused map (section)")
    selective: SelectiveConfig = knob(factory=SelectiveConfig, doc="selective compute (section)")
    multiclass: MultiClassConfig = knob(factory=MultiClassConfig, doc="multi-class runs: thin-only classes (section)")

    def __post_init__(self) -> None:
        from finedetail.transforms import parse_tta

        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "tta", tuple(str(t) for t in self.tta))
        if not self.scales:
            raise ValueError("scales must name at least one scale, got scales=()")
        if any(not (s > 0) for s in self.scales):
            raise ValueError(f"scales must be positive, got scales={self.scales}")
        if any(s > 8 for s in self.scales):
            raise ValueError(f"scales above 8x are not supported, got scales={self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must not repeat, got scales={self.scales}")
        for name in self.tta:
            parse_tta(name)  # raises ValueError naming the valid names
        if len(set(self.tta)) != len(self.tta):
            raise ValueError(f"tta must not repeat, got tta={self.tta}")
        if self.tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0 px, got {self.tile_overlap=}")


_SECTIONS = {
    "refine": RefineConfig,
    "crop": CropConfig,
    "ensemble": EnsembleConfig,
    "post": PostprocessConfig,
    "selective": SelectiveConfig,
    "multiclass": MultiClassConfig,
}


def unknown_key_error(key: str, valid: Iterable[str], *, where: str = "") -> ValueError:
    """The error for an unknown config key: names it, the closest valid key if one is close ("did you mean"), and
    every valid key at that level."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {where}{close[0]!r}?)" if close else ""
    return ValueError(f"unknown config key {where}{key!r}{hint}; valid keys here: {valid}")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise unknown_key_error(unknown[0], names, where=where)
    kwargs = {}
    for key, value in values.items():
        if key in _SECTIONS and cls is PipelineConfig:
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {where}{key!r} must be a mapping, got {value!r}")
            value = _build(_SECTIONS[key], value, f"{where}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong value types surface as TypeError from comparisons
        raise ValueError(f"bad value in config section {where or 'top level'}: {exc}") from exc


def config_from_dict(values: Mapping[str, Any]) -> PipelineConfig:
    """Nested mapping (e.g. parsed YAML) -> PipelineConfig. Unknown keys raise ValueError naming the key."""
    return _build(PipelineConfig, dict(values), "")


def config_to_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """PipelineConfig -> plain JSON-able nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: PipelineConfig, *extra: Any) -> str:
    """Stable 16-hex-digit hash of the config (and of ``extra`` items such as model identities)."""
    blob = json.dumps([config_to_dict(cfg), *extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
