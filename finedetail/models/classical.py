"""The weight-free backend's colour + texture coarse model (``--backend classical``, ``coarse_model:
colour-texture``): deterministic, CPU only, pure numpy + OpenCV.

Lower quality than SegGPT + SAM, and meant as such: it needs no checkpoint and no GPU, so the whole method
(coarse -> multi-prompt refinement -> crops -> multiscale -> TTA -> fuse) runs anywhere. Its refiner is
``finedetail.models.grabcut``; the shell both share with the thin-structure models is ``finedetail.models.weightfree``.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from finedetail.models.weightfree import PixelClassifierSegmenter

__all__ = [
    "ColourTextureConfig",
    "ColourTextureModel",
    "ColourTextureSegmenter",
    "colour_index",
    "fit_colour_texture",
    "predict_colour_texture",
    "texture_features",
]


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


class ColourTextureSegmenter(PixelClassifierSegmenter):
    """Weight-free in-context coarse segmenter (CoarseSegmenter); method in the module docstring.

    ``predict`` returns (num_classes, H, W) float32 in [0, 1] in each image's frame and counts one encoder pass per
    image.
    """

    name = "classical-colour-texture"
    allow_upscale = True  # a fixed working resolution, in the role of SegGPT's 448 canvas

    def __init__(self, *, config: ColourTextureConfig | None = None) -> None:
        super().__init__(config or ColourTextureConfig())

    def _features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        return (colour_index(image, l_bins=cfg.l_bins, ab_bins=cfg.ab_bins),
                texture_features(image, scales=cfg.texture_scales))

    def _fit(self, feats, labels) -> ColourTextureModel:
        return fit_colour_texture([(c, t, lab) for (c, t), lab in zip(feats, labels)], self.config)

    def _prob(self, model: ColourTextureModel, feats) -> np.ndarray:
        return predict_colour_texture(model, *feats)
