"""The weight-free backend (``--backend classical``): deterministic, CPU only, pure numpy + OpenCV.

Lower quality than SegGPT + SAM, and meant as such: it needs no checkpoint and no GPU, so the whole method
(coarse -> multi-prompt refinement -> crops -> multiscale -> TTA -> fuse) runs anywhere.

``ColourTextureSegmenter`` (CoarseSegmenter)
    Learns *what* to segment from the prompt pairs with a per-pixel classifier, and predicts at a fixed working
    resolution (long side exactly ``input_size``, default 512, in the role of SegGPT's 448 canvas: larger images are
    shrunk with INTER_AREA, smaller ones enlarged with INTER_LINEAR), resizing its *probabilities* back to the image
    size (bilinear when enlarging). Features, all computed at the working resolution:

    - colour: the pixel's bin in a joint quantised CIE Lab histogram (``l_bins`` x ``ab_bins`` x ``ab_bins``), turned
      into the log-likelihood ratio ``log p_fg(bin) - log p_bg(bin)``. ``d_fg``, ``d_bg`` are the prompts' colour
      densities (bin counts smoothed with a [1, 2, 1] / 4 kernel along each Lab axis, so nearby colours share
      evidence, divided by the class's pixel count); each is mixed with a uniform floor over the K bins (additive,
      Laplace-style smoothing): ``p_fg = (1 - fg_floor) d_fg + fg_floor / K`` and ``p_bg = (1 - bg_floor) d_bg +
      bg_floor / K``. The floors are asymmetric on purpose: the prompts define the object, while a target's
      background may show colours no prompt did, so a colour never seen scores ``log(fg_floor / bg_floor)``
      (-3.9 by default): background;
    - texture: local mean and standard deviation of the luminance in square windows of each ``texture_scales`` side,
      and the box-smoothed Sobel gradient magnitude.

    A small L2-regularised logistic regression (Newton / IRLS, classes weighted to equal total weight so the prompts'
    object fraction does not bias the target) combines the colour log-ratio with the standardised texture features.
    Training pixels are a deterministic subsample (``max_samples`` per class, ``seed``); their colour log-ratio is
    computed leave-one-out so the colour term is not over-trusted. Prompt images go through the same working
    resolution; their masks are resized as float maps (area averaging when shrinking) and pixels with a resized value
    in (0.25, 0.75) (mixed boundary pixels) are not used for training.
    With ``num_classes > 1`` prompt masks are class-index maps (0 = background, 1..C) and each class gets its own
    one-vs-rest classifier.

``GrabCutRefiner`` (PromptedRefiner)
    ``encode`` shrinks the image so its long side is at most ``input_size`` (1024, like SAM; never enlarged) and
    keeps it. ``refine`` runs ``cv2.grabCut`` (``GC_INIT_WITH_MASK``, ``iterations`` rounds) per component on a region
    of interest = the box expanded by ``margin = max(min_margin, box_margin * long side of the box)`` on each side,
    plus a ``ring`` of px around it. Seeds, later rules overriding earlier ones:

    1. the ring outside the expanded box, and inside it every pixel farther than ``band = max(min_band, band_frac *
       long side of the box)`` px from the coarse mask and the positive points: definite background (GrabCut's
       background samples; the band bounds how far GrabCut may grow the component). The band is a fraction of the
       box, not of the coarse area, so it is scale-covariant: the same object seen at 2x or zoomed in a crop gets
       the same reach relative to its size, and a thin component (a vessel tree, a wire, whose area is tiny for
       its extent) reaches its own thin parts that the coarse mask missed;
    2. inside the expanded box, within the band: probable background;
    3. the component's coarse mask (resized to the working resolution, area value >= 0.25) inside the expanded box:
       probable foreground;
    4. positive points: definite foreground disks of ``point_radius`` px, clipped to the expanded box (foreground
       outside the expanded box is impossible, up to the final bilinear resize's reach of one working pixel: the
       box wins over a point outside it);
    5. negative points: definite background disks of ``point_radius`` px.

    The result is 1 where GrabCut labels ``GC_FGD`` or ``GC_PR_FGD``, else 0, in the working resolution; it is
    resized bilinearly to the image frame, which is its only softness (no extra smoothing). When the seeds leave
    fewer than ``min_samples`` pixels on either side (GrabCut cannot fit its colour models), or GrabCut raises, the
    component's coarse mask is returned instead. ``prompt.logits`` are not used (GrabCut has no mask-logit input;
    the coarse mask comes from ``prompt.mask``). ``cv2.setRNGSeed(seed)`` before every call makes it deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from finedetail.types import ComponentPrompt, PromptPair, check_image

__all__ = [
    "ColourTextureConfig",
    "ColourTextureModel",
    "ColourTextureSegmenter",
    "PixelClassifierSegmenter",
    "GrabCutConfig",
    "GrabCutEmbedding",
    "GrabCutRefiner",
    "colour_index",
    "fit_colour_texture",
    "grabcut_component",
    "predict_colour_texture",
    "texture_features",
    "working_size",
]


# ---------------------------------------------------------------------------------------------------------------
# shared helpers


def working_size(hw: tuple[int, int], long_side: int, *, allow_upscale: bool) -> tuple[int, int]:
    """(h, w) scaled so the long side is ``long_side`` (rounded half up); unchanged when it is already at most
    ``long_side`` and ``allow_upscale`` is False."""
    h, w = hw
    if max(h, w) <= long_side and not allow_upscale:
        return int(h), int(w)
    s = long_side / max(h, w)
    return max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """INTER_AREA when shrinking, INTER_LINEAR when growing, a copy when the size matches."""
    if a.shape[:2] == tuple(hw):
        return a.copy()
    flag = cv2.INTER_AREA if hw[0] <= a.shape[0] and hw[1] <= a.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(a, (hw[1], hw[0]), interpolation=flag)


# ---------------------------------------------------------------------------------------------------------------
# ColourTextureSegmenter: pure functions


@dataclass(frozen=True)
class ColourTextureConfig:
    """Knobs of the colour + texture coarse model (module docstring). Sizes are working-resolution pixels."""

    input_size: int = 512
    l_bins: int = 8
    ab_bins: int = 16
    fg_floor: float = 0.01
    bg_floor: float = 0.5
    smooth_colours: bool = True
    texture_scales: tuple[int, ...] = (5, 11)
    max_samples: int = 20_000
    l2: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16 px, got {self.input_size=}")
        if not (1 <= self.l_bins <= 64 and 1 <= self.ab_bins <= 64):
            raise ValueError(f"l_bins and ab_bins must lie in [1, 64], got {self.l_bins=}, {self.ab_bins=}")
        if not (0 < self.fg_floor < 1 and 0 < self.bg_floor < 1):
            raise ValueError(f"fg_floor and bg_floor must lie in (0, 1), got {self.fg_floor=}, {self.bg_floor=}")
        if not self.texture_scales or any(s < 3 or s % 2 == 0 for s in self.texture_scales):
            raise ValueError(f"texture_scales must be odd window sides >= 3, got {self.texture_scales=}")
        if self.max_samples < 10:
            raise ValueError(f"max_samples must be >= 10, got {self.max_samples=}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2=}")


def colour_index(image: np.ndarray, *, l_bins: int, ab_bins: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 joint Lab bin in [0, l_bins * ab_bins**2)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)  # 8-bit Lab: every channel 0..255
    l = (lab[..., 0].astype(np.int64) * l_bins) >> 8
    a = (lab[..., 1].astype(np.int64) * ab_bins) >> 8
    b = (lab[..., 2].astype(np.int64) * ab_bins) >> 8
    return (l * ab_bins + a) * ab_bins + b


def texture_features(image: np.ndarray, *, scales: Sequence[int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 2 * len(scales) + 1) float32: per scale the local mean and std of the
    luminance (0..1) in an s x s window (reflected border), then the Sobel gradient magnitude box-smoothed over the
    smallest window."""
    lum = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    feats = []
    for s in scales:
        mean = cv2.boxFilter(lum, -1, (s, s), borderType=cv2.BORDER_REFLECT)
        sq = cv2.boxFilter(lum * lum, -1, (s, s), borderType=cv2.BORDER_REFLECT)
        feats += [mean, np.sqrt(np.maximum(sq - mean * mean, 0.0))]
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3)
    s0 = min(scales)
    feats.append(cv2.boxFilter(np.sqrt(gx * gx + gy * gy), -1, (s0, s0), borderType=cv2.BORDER_REFLECT))
    return np.stack(feats, axis=-1).astype(np.float32)


@dataclass(frozen=True, eq=False)
class ColourTextureModel:
    """One fitted one-vs-rest classifier. log_ratio: (K,) float32 colour log-likelihood ratio per Lab bin;
    mean, std: (F,) texture standardisation; weights: (F + 2,) float64 = [bias, colour weight, texture weights]."""

    log_ratio: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray


def _logistic_fit(x: np.ndarray, y: np.ndarray, sw: np.ndarray, *, l2: float, iters: int = 30) -> np.ndarray:
    """Weighted L2-regularised logistic regression by Newton steps; x (n, d) has a leading column of ones (its
    weight is not regularised). Returns (d,) float64."""
    n, d = x.shape
    w = np.zeros(d)
    reg = np.full(d, l2 * sw.sum())
    reg[0] = 0.0
    for _ in range(iters):
        z = np.clip(x @ w, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = x.T @ (sw * (p - y)) + reg * w
        hess = (x * (sw * p * (1 - p))[:, None]).T @ x + np.diag(reg) + 1e-9 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w


def _smooth_bins(hist: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(K,) bin counts -> (K,) counts blurred by [1, 2, 1] / 4 along each of the three Lab axes (zero outside)."""
    a = hist.reshape(shape)
    for axis in range(3):
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        p = np.pad(a, pad)
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], mid[axis], hi[axis] = slice(0, -2), slice(1, -1), slice(2, None)
        a = 0.25 * p[tuple(lo)] + 0.5 * p[tuple(mid)] + 0.25 * p[tuple(hi)]
    return a.ravel()


def fit_colour_texture(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: ColourTextureConfig
                       ) -> ColourTextureModel:
    """Fit one classifier. samples: per working-resolution prompt image a tuple (colour index (H, W) int64,
    texture (H, W, F) float32, label (H, W) int8 with 1 = fg, 0 = bg, -1 = unused)."""
    k = cfg.l_bins * cfg.ab_bins**2
    idx = np.concatenate([c[lab >= 0] for c, _, lab in samples])
    tex = np.concatenate([t[lab >= 0] for _, t, lab in samples])
    y = np.concatenate([lab[lab >= 0] for _, _, lab in samples]).astype(np.float64)
    n_fg, n_bg = int(y.sum()), int((1 - y).sum())
    if n_fg == 0 or n_bg == 0:
        raise ValueError(f"the prompts give {n_fg} clean foreground and {n_bg} clean background pixels at the "
                         f"working resolution; both are needed: give a prompt whose mask has both, or raise input_size")
    shape = (cfg.l_bins, cfg.ab_bins, cfg.ab_bins)
    h_fg = np.bincount(idx[y == 1], minlength=k).astype(np.float64)
    h_bg = np.bincount(idx[y == 0], minlength=k).astype(np.float64)
    own = 1.0  # what one pixel adds to its own (smoothed) bin
    if cfg.smooth_colours:
        h_fg, h_bg = _smooth_bins(h_fg, shape), _smooth_bins(h_bg, shape)
        own = 0.5**3
    ef, eb = cfg.fg_floor, cfg.bg_floor
    log_ratio = (np.log((1 - ef) * h_fg / n_fg + ef / k) - np.log((1 - eb) * h_bg / n_bg + eb / k)).astype(np.float32)

    rng = np.random.default_rng(cfg.seed)
    pick = []
    for cls in (1, 0):
        where = np.flatnonzero(y == cls)
        if where.size > cfg.max_samples:
            where = np.sort(rng.choice(where, cfg.max_samples, replace=False))
        pick.append(where)
    sel = np.concatenate(pick)
    ys, cs, ts = y[sel], idx[sel], tex[sel].astype(np.float64)
    # leave-one-out: a training pixel's own count must not vouch for its colour
    own_fg = ys == 1
    f, b = own_fg.astype(np.float64), (~own_fg).astype(np.float64)
    d_fg = np.maximum(h_fg[cs] - own * f, 0.0) / np.maximum(n_fg - f, 1.0)
    d_bg = np.maximum(h_bg[cs] - own * b, 0.0) / np.maximum(n_bg - b, 1.0)
    loo = np.log((1 - ef) * d_fg + ef / k) - np.log((1 - eb) * d_bg + eb / k)
    mean, std = ts.mean(axis=0), ts.std(axis=0) + 1e-6
    x = np.column_stack([np.ones(len(sel)), loo, (ts - mean) / std])
    sw = np.where(own_fg, 0.5 / own_fg.sum(), 0.5 / (~own_fg).sum()) * len(sel)
    weights = _logistic_fit(x, ys, sw, l2=cfg.l2)
    return ColourTextureModel(log_ratio=log_ratio, mean=mean.astype(np.float32), std=std.astype(np.float32),
                              weights=weights)


def predict_colour_texture(model: ColourTextureModel, cidx: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Probability of foreground per pixel -> (H, W) float32 in [0, 1], same frame as the features."""
    w = model.weights
    z = w[0] + w[1] * model.log_ratio[cidx].astype(np.float64)
    z += ((tex - model.mean) / model.std) @ w[2:]
    return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)


def _prompt_labels(mask: np.ndarray, cls: int | None, hw: tuple[int, int]) -> np.ndarray:
    """Prompt mask (image frame) -> (h, w) int8 training labels at the working size: 1 fg, 0 bg, -1 mixed."""
    fg = (mask != 0) if cls is None else (mask == cls)
    m = _resize(fg.astype(np.float32), hw)
    lab = np.full(hw, -1, np.int8)
    lab[m >= 0.75] = 1
    lab[m <= 0.25] = 0
    return lab


class PixelClassifierSegmenter:
    """Shared shell of the in-context per-pixel segmenters (CoarseSegmenter): one model per class fitted on the
    prompts' working-resolution features and labels, probabilities resized back to each image's frame.

    Subclasses set ``name`` and ``config`` (with ``input_size``) and implement ``_features(image) -> (features,
    (h, w))``, ``_fit(features list, labels list) -> model`` (ValueError when a class lacks samples) and
    ``_prob(model, features) -> (h, w) float32``. ``predict`` counts one encoder pass per image.
    """

    name = "classical-pixel-classifier"

    def __init__(self, config: Any) -> None:
        self.config = config
        self.input_size = config.input_size
        self.num_classes = 1
        self.encoder_passes = 0
        self._models: list[Any] | None = None

    def _features(self, image: np.ndarray) -> tuple[Any, tuple[int, int]]:
        raise NotImplementedError

    def _fit(self, feats: list[Any], labels: list[np.ndarray]) -> Any:
        raise NotImplementedError

    def _prob(self, model: Any, feats: Any) -> np.ndarray:
        raise NotImplementedError

    def set_prompts(self, prompts: Sequence[PromptPair], *, num_classes: int = 1) -> None:
        """Fit the classifier(s) on the prompt pairs. Binary (``num_classes=1``): mask bool or any nonzero = fg.
        ``num_classes > 1``: masks are (H, W) integer class maps, 0 = background, 1..num_classes."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
        if len(prompts) == 0:
            raise ValueError("set_prompts needs at least one PromptPair (image + mask) saying what to segment, got 0")
        feats = [self._features(p.image) for p in prompts]
        classes: list[int | None] = [None] if num_classes == 1 else list(range(1, num_classes + 1))
        models = []
        for cls in classes:
            labels = [_prompt_labels(p.mask, cls, hw) for p, (_, hw) in zip(prompts, feats)]
            try:
                models.append(self._fit([f for f, _ in feats], labels))
            except ValueError as e:
                raise ValueError(f"class {cls or 1}: {e}") from None
        self._models = models
        self.num_classes = int(num_classes)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: (H, W, 3) uint8 each -> (num_classes, H, W) float32 in [0, 1], that image's frame."""
        if self._models is None:
            raise RuntimeError(f"{type(self).__name__}.predict called before set_prompts; "
                               "call set_prompts(prompts) with at least one PromptPair first")
        out = []
        for image in images:
            check_image(image)
            feats, _ = self._features(image)
            self.encoder_passes += 1
            maps = [np.clip(_resize(self._prob(m, feats), image.shape[:2]), 0.0, 1.0) for m in self._models]
            out.append(np.stack(maps).astype(np.float32))
        return out


class ColourTextureSegmenter(PixelClassifierSegmenter):
    """Weight-free in-context coarse segmenter (CoarseSegmenter); method in the module docstring.

    ``predict`` returns (num_classes, H, W) float32 in [0, 1] in each image's frame and counts one encoder pass per
    image.
    """

    name = "classical-colour-texture"

    def __init__(self, *, config: ColourTextureConfig | None = None) -> None:
        super().__init__(config or ColourTextureConfig())

    def _features(self, image: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[int, int]]:
        cfg = self.config
        hw = working_size(image.shape[:2], cfg.input_size, allow_upscale=True)
        small = _resize(image, hw)
        return (colour_index(small, l_bins=cfg.l_bins, ab_bins=cfg.ab_bins),
                texture_features(small, scales=cfg.texture_scales)), hw

    def _fit(self, feats, labels) -> ColourTextureModel:
        return fit_colour_texture([(c, t, lab) for (c, t), lab in zip(feats, labels)], self.config)

    def _prob(self, model: ColourTextureModel, feats) -> np.ndarray:
        return predict_colour_texture(model, *feats)


# ---------------------------------------------------------------------------------------------------------------
# GrabCutRefiner


@dataclass(frozen=True)
class GrabCutConfig:
    """Knobs of the GrabCut refiner (module docstring). Pixel sizes are working-resolution pixels."""

    input_size: int = 1024
    iterations: int = 3
    box_margin: float = 0.15
    min_margin: int = 8
    band_frac: float = 0.5
    min_band: int = 8
    ring: int = 16
    point_radius: int = 2
    min_samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16 px, got {self.input_size=}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations=}")
        if self.box_margin < 0 or self.min_margin < 0 or self.point_radius < 0:
            raise ValueError(f"box_margin, min_margin and point_radius must be >= 0, got {self.box_margin=}, "
                             f"{self.min_margin=}, {self.point_radius=}")
        if self.band_frac < 0 or self.min_band < 1:
            raise ValueError(f"band_frac must be >= 0 and min_band >= 1 px, got {self.band_frac=}, {self.min_band=}")
        if self.ring < 1:
            raise ValueError(f"ring must be >= 1 px (GrabCut needs definite background), got {self.ring=}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples=}")


@dataclass(frozen=True, eq=False)
class GrabCutEmbedding:
    """GrabCutRefiner's encoding of one image. hw: the image's (h, w). image: (h', w', 3) uint8 at the working
    resolution (long side <= input_size). scale_xy: (w' / w, h' / h), image frame -> working frame."""

    hw: tuple[int, int]
    image: np.ndarray
    scale_xy: tuple[float, float]


def _expanded_box(box: np.ndarray, scale_xy: tuple[float, float], hw: tuple[int, int], cfg: GrabCutConfig
                  ) -> tuple[int, int, int, int]:
    """Box (image frame XYXY) -> expanded integer box (x0, y0, x1, y1) in the working frame, clipped."""
    sx, sy = scale_xy
    x0, y0, x1, y1 = float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy
    m = max(cfg.min_margin, cfg.box_margin * max(x1 - x0, y1 - y0))
    h, w = hw
    return (max(0, int(np.floor(x0 - m))), max(0, int(np.floor(y0 - m))),
            min(w, int(np.ceil(x1 + m))), min(h, int(np.ceil(y1 + m))))


def grabcut_component(image: np.ndarray, mask: np.ndarray, box: np.ndarray, points: np.ndarray, labels: np.ndarray,
                      cfg: GrabCutConfig) -> np.ndarray | None:
    """GrabCut one component at the working resolution.

    image: (h, w, 3) uint8 working frame; mask: (h, w) bool coarse component (working frame); box: (4,) XYXY and
    points: (P, 2) xy, both already in the working frame; labels (P,) 1 = positive, 0 = negative.
    Returns (h, w) bool, or None when the seeds are degenerate or GrabCut fails (the caller falls back).
    """
    h, w = mask.shape
    bx0, by0, bx1, by1 = _expanded_box(box, (1.0, 1.0), (h, w), cfg)
    if bx1 <= bx0 or by1 <= by0:
        return None
    rx0, ry0 = max(0, bx0 - cfg.ring), max(0, by0 - cfg.ring)
    rx1, ry1 = min(w, bx1 + cfg.ring), min(h, by1 + cfg.ring)
    seeds = np.full((ry1 - ry0, rx1 - rx0), cv2.GC_BGD, np.uint8)
    inner = (slice(by0 - ry0, by1 - ry0), slice(bx0 - rx0, bx1 - rx0))
    in_box = np.zeros(seeds.shape, bool)
    in_box[inner] = True
    roi_mask = mask[ry0:ry1, rx0:rx1] & in_box
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    labs = np.asarray(labels).reshape(-1)
    centres = [(int(np.floor(x)) - rx0, int(np.floor(y)) - ry0) for x, y in pts]
    positive = np.zeros(seeds.shape, np.uint8)
    for c, lab in zip(centres, labs):
        if lab == 1:
            cv2.circle(positive, c, cfg.point_radius, 1, thickness=-1)
    positive = (positive > 0) & in_box
    source = roi_mask | positive
    band = max(float(cfg.min_band), cfg.band_frac * max(float(box[2] - box[0]), float(box[3] - box[1])))
    if source.any():
        dist = cv2.distanceTransform((~source).astype(np.uint8), cv2.DIST_L2, 3)
        seeds[in_box & (dist <= band)] = cv2.GC_PR_BGD
    seeds[roi_mask] = cv2.GC_PR_FGD
    seeds[positive] = cv2.GC_FGD
    for c, lab in zip(centres, labs):
        if lab == 0:
            cv2.circle(seeds, c, cfg.point_radius, int(cv2.GC_BGD), thickness=-1)
    fg = np.count_nonzero((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD))
    if fg < cfg.min_samples or seeds.size - fg < cfg.min_samples:
        return None
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(cfg.seed)
    try:
        cv2.grabCut(np.ascontiguousarray(image[ry0:ry1, rx0:rx1]), seeds, None, bgd, fgd, cfg.iterations,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    out = np.zeros((h, w), bool)
    out[ry0:ry1, rx0:rx1] = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    return out


class GrabCutRefiner:
    """Weight-free prompted refiner (PromptedRefiner) built on ``cv2.grabCut``; method in the module docstring.

    ``encode`` counts one encoder pass per image; ``refine`` returns (N, H, W) float32 in [0, 1], image frame.
    """

    name = "classical-grabcut"

    def __init__(self, *, config: GrabCutConfig | None = None) -> None:
        self.config = config or GrabCutConfig()
        self.input_size = self.config.input_size
        self.encoder_passes = 0

    def encode(self, images: Sequence[np.ndarray]) -> list[GrabCutEmbedding]:
        """images: (H, W, 3) uint8 each -> one GrabCutEmbedding each (working image: long side <= input_size)."""
        out = []
        for image in images:
            check_image(image)
            h, w = image.shape[:2]
            wh = working_size((h, w), self.config.input_size, allow_upscale=False)
            out.append(GrabCutEmbedding(hw=(h, w), image=np.ascontiguousarray(_resize(image, wh)),
                                        scale_xy=(wh[1] / w, wh[0] / h)))
            self.encoder_passes += 1
        return out

    def refine(self, embedding: GrabCutEmbedding, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All prompts of one image (image frame) -> (N, H, W) float32 in [0, 1], image frame."""
        if not isinstance(embedding, GrabCutEmbedding):
            raise TypeError(f"embedding must come from GrabCutRefiner.encode, got {type(embedding).__name__}; "
                            f"call refiner.encode([image]) first")
        h, w = embedding.hw
        wh = embedding.image.shape[:2]
        sx, sy = embedding.scale_xy
        out = np.zeros((len(prompts), h, w), np.float32)
        for i, p in enumerate(prompts):
            if p.mask.shape != (h, w):
                raise ValueError(f"prompt {i}: mask is {p.mask.shape} but the encoded image is {(h, w)}; "
                                 f"prompts must be in the frame of the image passed to encode")
            small = _resize(p.mask.astype(np.float32), wh) >= 0.25
            box = np.asarray(p.box, np.float64) * np.array([sx, sy, sx, sy])
            pts = np.asarray(p.points, np.float64).reshape(-1, 2) * np.array([sx, sy])
            cut = grabcut_component(embedding.image, small, box, pts, p.labels, self.config)
            if cut is None:
                out[i] = p.mask
            else:
                out[i] = np.clip(_resize(cut.astype(np.float32), (h, w)), 0.0, 1.0)
        return out
