"""The weight-free backend's thin-structure models (``--backend classical``): CPU only, deterministic, no weights.

Not SegGPT + SAM: a per-pixel classifier fitted on the prompt pairs, and a refiner that grows each prompted component
along what looks like it in the window. Good for thin, contrasted structures (vessels, cracks, wires) and colour-
keyed objects; it knows nothing about object shape or semantics.

``PixelSegmenter`` (CoarseSegmenter)
    Working resolution: the image itself, shrunk (INTER_AREA) when its long side exceeds ``input_size`` (never
    enlarged: enlarging adds no information and blurs what the ridge filters measure). Features:
    ``finedetail.ridges.thin_features`` (colour, local contrast normalisation, multi-scale Hessian eigenvalues and
    Sato-style lineness for dark and bright lines, gradient magnitude, oriented line filters) plus the
    orientation-coherent ridge evidence ``coherent_lines`` over ``coherent_length`` = 31 px at sigmas 1 and 2: ten
    to thirty times the widths of the thin objects it is for, so a wire, crack or vessel trunk sums its ridge along
    itself while foliage, gravel and fundus texture (ridges of every orientation, each a few px long) do not. Added
    because the ridge filters alone confused power lines with leaf edges and cracks with pavement grain (2 prompt
    pairs, 8 inputs, in-process single pass: CrackForest F1 0.535 -> 0.551, PLDU tol F 0.512 -> 0.522, DRIVE F1
    0.738 -> 0.754; +0.25 s CPU per 0.32 MP DRIVE image).

    Size: ``iterations`` = 100 trees at ``learning_rate`` 0.15 (was 150 at 0.1): predicting every pixel through the
    trees is ~2/3 of a single pass, and the smaller model scored the same (CrackForest 0.551 / 0.551, DRIVE 0.754 /
    0.751, PLDU tol F 0.522 / 0.542) at ~3/4 of the CPU time.

    Classifier: scikit-learn's ``HistGradientBoostingClassifier``, one binary model per class (one-vs-rest). Chosen
    over a random forest because it is fast on ~10^5 training pixels and ~20 features (binned features, one core in a
    second or two), small (``max_iter`` trees of ``max_leaf_nodes`` leaves) and fast to predict on a whole image,
    needs no feature scaling, and is deterministic for a fixed ``random_state`` with early stopping off; OpenCV's
    ``ml`` module has no histogram boosting and its random trees are slower to predict per pixel.

    Training pixels: per prompt image and class up to ``max_samples / len(prompts)`` foreground pixels and as many
    background pixels, ``near_frac`` of them from the band within ``near_px`` px of the foreground (the hard
    negatives that decide where a thin object ends) and the rest uniformly (``seed``). Pixels whose resized mask value
    lies in (0.25, 0.75) (mixed at the working resolution) are not used. Sample weights make both classes weigh the
    same, so the prompts' object fraction does not bias the model.

    Operating point (``calibrate``): balanced weights over-predict a rare object, so the decision threshold is chosen
    on held-out prompt pixels: each prompt is predicted by a model fitted on the others (two halves of the image when
    there is one prompt), and the logit threshold that maximises the pooled pixel F1 is subtracted from the final
    model's logits, so ``p >= 0.5`` is that operating point. Costs one extra fit per fold, once per prompt set.

``GrowRefiner`` (PromptedRefiner)
    ``encode``: the same ``thin_features`` on the window (long side shrunk to ``input_size`` if larger), at the
    window's own resolution, plus the pixels' joint Lab bins (``l_bins`` x ``ab_bins`` x ``ab_bins``).
    ``refine`` (all components of a window in one call): a linear discriminant (LDA, shared covariance shrunk toward
    its diagonal by ``shrinkage``, equal priors) is fitted on the window's features plus a colour log-ratio (the
    positives' and negatives' Lab-bin histograms, as GrabCut's colour models): positives = the components' masks and
    positive points, negatives = pixels farther than ``gap = max(min_gap, gap_width * mean width of the components)``
    px from them (scale-covariant: a window zoomed 2x doubles the gap) and negative points. Hysteresis growth: a
    candidate pixel has LDA probability >= ``grow_p``, a positive colour log-ratio, and lies within ``reach =
    max(min_reach, reach_frac * long side of the largest component's box)`` px of a component; each component's
    result is its mask plus every 8-connected region of candidates it touches. So a tip or a gap the coarse mask
    missed is added only where the window shows the same kind of structure, connected to it; nothing is removed
    (the coarse pixel model is the better judge of what it found). Degenerate seeds (fewer than ``min_samples``
    pixels on a side) return the masks unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from finedetail.frames import LongestSide
from finedetail.models.classical import colour_index
from finedetail.models.weightfree import PixelClassifierSegmenter, WorkingFrameRefiner
from finedetail.ridges import thin_features
from finedetail.types import ComponentPrompt

__all__ = [
    "GrowConfig",
    "GrowEmbedding",
    "GrowRefiner",
    "PixelConfig",
    "PixelModel",
    "PixelSegmenter",
    "best_threshold",
    "fit_pixel_model",
    "grow_window",
    "lda_fit",
    "sample_pixels",
]


@dataclass(frozen=True)
class FeatureConfig:
    """``thin_features`` knobs shared by both models (working-resolution px)."""

    sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)
    norm_sigma: float = 8.0
    line_length: int = 15
    line_angles: int = 12
    coherent_length: int = 0
    coherent_sigmas: tuple[float, ...] = (1.0, 2.0)

    def _check_features(self) -> None:
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        if not self.sigmas or any(not (s > 0) for s in self.sigmas):
            raise ValueError(f"sigmas must be positive px, got {self.sigmas=}")
        if not (self.norm_sigma > 0):
            raise ValueError(f"norm_sigma must be > 0 px, got {self.norm_sigma=}")
        if self.line_length != 0 and (self.line_length < 3 or self.line_length % 2 == 0):
            raise ValueError(f"line_length must be 0 (off) or an odd number of px >= 3, got {self.line_length=}")
        object.__setattr__(self, "coherent_sigmas", tuple(float(s) for s in self.coherent_sigmas))
        if any(not (s > 0) for s in self.coherent_sigmas):
            raise ValueError(f"coherent_sigmas must be positive px, got {self.coherent_sigmas=}")
        if self.coherent_length != 0 and (self.coherent_length < 3 or self.coherent_length % 2 == 0):
            raise ValueError(f"coherent_length must be 0 (off) or an odd number of px >= 3, got "
                             f"{self.coherent_length=}")
        if self.line_angles < 1:
            raise ValueError(f"line_angles must be >= 1, got {self.line_angles=}")

    def features(self, image: np.ndarray) -> np.ndarray:
        return thin_features(image, sigmas=self.sigmas, norm_sigma=self.norm_sigma, line_length=self.line_length,
                             line_angles=self.line_angles, coherent_length=self.coherent_length,
                             coherent_sigmas=self.coherent_sigmas)


# ---------------------------------------------------------------------------------------------------------------
# PixelSegmenter


@dataclass(frozen=True)
class PixelConfig(FeatureConfig):
    """Knobs of the in-context pixel model (module docstring). Sizes in working-resolution px."""

    input_size: int = 1024
    coherent_length: int = 31
    max_samples: int = 40_000
    near_px: int = 4
    near_frac: float = 0.5
    iterations: int = 100
    learning_rate: float = 0.15
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2: float = 1.0
    calibrate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_features()
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16 px, got {self.input_size=}")
        if self.max_samples < 10:
            raise ValueError(f"max_samples must be >= 10, got {self.max_samples=}")
        if self.near_px < 1 or not (0.0 <= self.near_frac <= 1.0):
            raise ValueError(f"near_px must be >= 1 px and near_frac in [0, 1], got {self.near_px=}, {self.near_frac=}")
        if self.iterations < 1 or not (self.learning_rate > 0) or self.max_leaf_nodes < 2 or self.min_samples_leaf < 1:
            raise ValueError(f"need iterations >= 1, learning_rate > 0, max_leaf_nodes >= 2, min_samples_leaf >= 1, got "
                             f"{self.iterations=}, {self.learning_rate=}, {self.max_leaf_nodes=}, {self.min_samples_leaf=}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2=}")


def sample_pixels(labels: np.ndarray, n: int, *, near_px: int, near_frac: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Training pixels of one image. labels: (H, W) int8, 1 fg, 0 bg, -1 unused. Returns (flat indices (m,) int64
    sorted, y (m,) int8): up to ``n`` fg and ``n`` bg pixels, ``near_frac`` of the bg ones (as far as there are) from
    the band within ``near_px`` px of the fg, the rest from all bg pixels (disjoint from the band picks)."""
    fg = labels == 1
    bg = labels == 0
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * near_px + 1, 2 * near_px + 1))
    near = cv2.dilate(fg.view(np.uint8), disc).astype(bool) & bg

    def pick(where: np.ndarray, k: int) -> np.ndarray:
        return where if where.size <= k else rng.choice(where, k, replace=False)

    f = pick(np.flatnonzero(fg), n)
    b_near = pick(np.flatnonzero(near), int(round(n * near_frac)))
    rest = np.flatnonzero(bg)
    rest = rest[~np.isin(rest, b_near, assume_unique=True)]
    b = np.concatenate([b_near, pick(rest, n - b_near.size)])
    idx = np.concatenate([f, b]).astype(np.int64)
    y = np.concatenate([np.ones(f.size, np.int8), np.zeros(b.size, np.int8)])
    order = np.argsort(idx, kind="stable")
    return idx[order], y[order]


def _fit_hgb(x: np.ndarray, y: np.ndarray, cfg: PixelConfig) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    n1 = max(1, int(np.count_nonzero(y == 1)))
    n0 = max(1, int(np.count_nonzero(y == 0)))
    sw = np.where(y == 1, 0.5 / n1, 0.5 / n0) * len(y)
    clf = HistGradientBoostingClassifier(
        max_iter=cfg.iterations, learning_rate=cfg.learning_rate, max_leaf_nodes=cfg.max_leaf_nodes,
        min_samples_leaf=cfg.min_samples_leaf, l2_regularization=cfg.l2, early_stopping=False,
        random_state=cfg.seed)
    return clf.fit(x, y, sample_weight=sw)


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t maximising the F1 of ``scores >= t`` against ``truth`` (both (n,), truth bool). Ties go to
    the highest t. t lies midway between the lowest kept score and the next lower one, so ``scores >= t`` keeps
    exactly the chosen pixels. Empty input or no positive in ``truth``: 0.0 (the classifier's own decision)."""
    s = np.asarray(scores, np.float64).ravel()
    t = np.asarray(truth, bool).ravel()
    if s.size == 0 or not t.any():
        return 0.0
    order = np.argsort(-s, kind="stable")
    ss, tt = s[order], t[order]
    tp = np.cumsum(tt)
    k = np.arange(1, ss.size + 1)
    last = np.r_[ss[1:] != ss[:-1], True]  # only cut between distinct scores
    f1 = np.where(last, 2.0 * tp / (k + tt.sum()), -1.0)
    i = int(np.argmax(f1))
    return float(ss[i] if i + 1 == ss.size else 0.5 * (ss[i] + ss[i + 1]))


@dataclass(frozen=True, eq=False)
class PixelModel:
    """One fitted one-vs-rest model: the scikit-learn classifier and the logit threshold subtracted before the
    sigmoid (``calibrate``; 0.0 without)."""

    classifier: Any
    threshold: float

    def prob(self, feats: np.ndarray) -> np.ndarray:
        """(H, W, F) float32 features -> (H, W) float32 probability of the class."""
        z = self.classifier.decision_function(feats.reshape(-1, feats.shape[-1])) - self.threshold
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32).reshape(feats.shape[:2])


def fit_pixel_model(feats: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: PixelConfig) -> PixelModel:
    """feats: per prompt (H, W, F) float32; labels: per prompt (H, W) int8 (1 fg, 0 bg, -1 unused)."""
    n_fg = sum(int(np.count_nonzero(lab == 1)) for lab in labels)
    n_bg = sum(int(np.count_nonzero(lab == 0)) for lab in labels)
    if n_fg == 0 or n_bg == 0:
        raise ValueError(f"the prompts give {n_fg} clean foreground and {n_bg} clean background pixels at the "
                         f"working resolution; both are needed: give a prompt whose mask has both, or raise input_size")
    rng = np.random.default_rng(cfg.seed)
    per = max(1, cfg.max_samples // len(feats))
    picks = [sample_pixels(lab, per, near_px=cfg.near_px, near_frac=cfg.near_frac, rng=rng) for lab in labels]

    def stack(ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([feats[i].reshape(-1, feats[i].shape[-1])[picks[i][0]] for i in ids])
        return x, np.concatenate([picks[i][1] for i in ids])

    x, y = stack(range(len(feats)))
    clf = _fit_hgb(x, y, cfg)
    threshold = 0.0
    if cfg.calibrate:
        threshold = _cross_fit_threshold(feats, labels, picks, cfg)
    return PixelModel(classifier=clf, threshold=threshold)


def _cross_fit_threshold(feats, labels, picks, cfg: PixelConfig) -> float:
    """Held-out logits of every prompt pixel (a model fitted without that prompt; with one prompt, without that
    half of the image) -> ``best_threshold`` of their pooled F1. Folds without both classes are skipped; no usable
    fold: 0.0."""
    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (train x, train y, test f, test lab)
    if len(feats) > 1:
        for k in range(len(feats)):
            rest = [i for i in range(len(feats)) if i != k]
            x = np.concatenate([feats[i].reshape(-1, feats[i].shape[-1])[picks[i][0]] for i in rest])
            y = np.concatenate([picks[i][1] for i in rest])
            folds.append((x, y, feats[k], labels[k]))
    else:
        f, lab = feats[0], labels[0]
        w = f.shape[1]
        idx, y = picks[0]
        left = (idx % w) < w // 2
        for train, half in ((left, slice(w // 2, None)), (~left, slice(0, w // 2))):
            folds.append((f.reshape(-1, f.shape[-1])[idx[train]], y[train], f[:, half], lab[:, half]))
    scores, truth = [], []
    for x, y, f, lab in folds:
        if not (np.any(y == 1) and np.any(y == 0)) or not np.any(lab == 1):
            continue
        clf = _fit_hgb(x, y, cfg)
        keep = lab >= 0
        scores.append(clf.decision_function(f[keep]))
        truth.append(lab[keep] == 1)
    if not scores:
        return 0.0
    return best_threshold(np.concatenate(scores), np.concatenate(truth))


class PixelSegmenter(PixelClassifierSegmenter):
    """Weight-free in-context coarse segmenter (CoarseSegmenter); method in the module docstring.

    ``predict`` returns (num_classes, H, W) float32 in [0, 1] in each image's frame and counts one encoder pass per
    image.
    """

    name = "classical-thin-pixel"

    def __init__(self, *, config: PixelConfig | None = None) -> None:
        super().__init__(config or PixelConfig())

    def _features(self, image: np.ndarray) -> np.ndarray:
        return self.config.features(image)

    def _fit(self, feats: list[np.ndarray], labels: list[np.ndarray]) -> PixelModel:
        return fit_pixel_model(feats, labels, self.config)

    def _prob(self, model: PixelModel, feats: np.ndarray) -> np.ndarray:
        return model.prob(feats)


# ---------------------------------------------------------------------------------------------------------------
# GrowRefiner


@dataclass(frozen=True)
class GrowConfig(FeatureConfig):
    """Knobs of the growing refiner (module docstring). Pixel sizes are working-resolution px. No line filters by
    default (``line_length`` 0): they cost ~3/4 of the features' time and changed no refined pixel count that
    mattered on the development splits (single pass F1 0.577 / 0.736 on CrackForest / DRIVE with or without)."""

    line_length: int = 0
    input_size: int = 1024
    min_gap: float = 3.0
    gap_width: float = 1.5
    reach_frac: float = 0.25
    min_reach: float = 8.0
    grow_p: float = 0.9
    point_radius: int = 1
    l_bins: int = 8
    ab_bins: int = 16
    max_samples: int = 20_000
    min_samples: int = 8
    shrinkage: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_features()
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16 px, got {self.input_size=}")
        if self.point_radius < 0:
            raise ValueError(f"point_radius must be >= 0, got {self.point_radius=}")
        if self.min_gap < 1 or self.gap_width < 0:
            raise ValueError(f"min_gap must be >= 1 px and gap_width >= 0, got {self.min_gap=}, {self.gap_width=}")
        if self.reach_frac < 0 or self.min_reach < 0:
            raise ValueError(f"reach_frac and min_reach must be >= 0, got {self.reach_frac=}, {self.min_reach=}")
        if not (0.0 < self.grow_p <= 1.0):
            raise ValueError(f"grow_p must lie in (0, 1], got {self.grow_p=}")
        if not (0 <= self.l_bins <= 64 and 1 <= self.ab_bins <= 64):
            raise ValueError(f"l_bins must lie in [0, 64] (0: no colour model) and ab_bins in [1, 64], got "
                             f"{self.l_bins=}, {self.ab_bins=}")
        if self.max_samples < 10 or self.min_samples < 1:
            raise ValueError(f"need max_samples >= 10 and min_samples >= 1, got {self.max_samples=}, "
                             f"{self.min_samples=}")
        if not (0.0 <= self.shrinkage < 1.0):
            raise ValueError(f"shrinkage must lie in [0, 1), got {self.shrinkage=}")


def lda_fit(x: np.ndarray, y: np.ndarray, *, shrinkage: float) -> tuple[np.ndarray, float]:
    """Fisher's linear discriminant with equal priors: (w (F,), b) such that ``x @ w + b`` is the log-likelihood
    ratio fg / bg of two Gaussians with a shared covariance (shrunk toward its diagonal by ``shrinkage``)."""
    x = np.asarray(x, np.float64)
    pos, neg = x[y == 1], x[y == 0]
    m1, m0 = pos.mean(axis=0), neg.mean(axis=0)
    d = np.concatenate([pos - m1, neg - m0])
    cov = d.T @ d / max(1, len(d) - 2)
    diag = np.diag(np.diag(cov)) + 1e-6 * np.eye(len(cov))
    cov = (1.0 - shrinkage) * cov + shrinkage * diag + 1e-9 * np.eye(len(cov))
    w = np.linalg.solve(cov, m1 - m0)
    return w, float(-0.5 * (m1 + m0) @ w)


@dataclass(frozen=True, eq=False)
class GrowEmbedding:
    """GrowRefiner's encoding of one image. frame: its working frame (``frame.src`` the image's (h, w),
    ``frame.size`` = (h', w'), long side <= input_size). feats: (h', w', F) float32 and colours: (h', w') int64 Lab
    bins, in that frame."""

    frame: LongestSide
    feats: np.ndarray
    colours: np.ndarray

    @property
    def hw(self) -> tuple[int, int]:
        return self.frame.src


def _disc_mask(shape: tuple[int, int], pts: np.ndarray, radius: int) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for x, y in pts:
        cv2.circle(out, (int(np.floor(x)), int(np.floor(y))), radius, 1, thickness=-1)
    return out.astype(bool)


def _mean_width(mask: np.ndarray) -> float:
    """2 x the mean distance of the mask's pixels to its outside (the frame counts as outside): ~ the mean width of
    a thin structure, ~ 2/3 of a disc's diameter."""
    inner = cv2.distanceTransform(np.pad(mask, 1).view(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    return 2.0 * float(inner[mask].mean()) if mask.any() else 0.0


def grow_window(feats: np.ndarray, colours: np.ndarray, masks: Sequence[np.ndarray], boxes: np.ndarray,
                points: np.ndarray, labels: np.ndarray, cfg: GrowConfig) -> list[np.ndarray] | None:
    """Refine every component of one window at the working resolution (module docstring).

    feats: (h, w, F) float32; colours: (h, w) int64 Lab bins; masks: per component (h, w) bool; boxes (N, 4) XYXY,
    points (P, 2) xy and labels (P,) (1 positive, 0 negative; every component's points together) in the working
    frame. Returns per component (h, w) bool (its mask and every grown region connected to it), or None when the
    seeds are degenerate (fewer than ``min_samples`` pixels on a side)."""
    h, w = feats.shape[:2]
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    labs = np.asarray(labels).reshape(-1)
    union = np.zeros((h, w), bool)
    for m in masks:
        union |= m
    pos = union | _disc_mask((h, w), pts[labs == 1], cfg.point_radius)
    neg_pts = _disc_mask((h, w), pts[labs == 0], cfg.point_radius)
    dist = cv2.distanceTransform((~pos).view(np.uint8), cv2.DIST_L2, 3)
    gap = max(cfg.min_gap, cfg.gap_width * _mean_width(union))
    neg = ((dist > gap) | neg_pts) & ~pos
    if np.count_nonzero(pos) < cfg.min_samples or np.count_nonzero(neg) < cfg.min_samples:
        return None
    rng = np.random.default_rng(cfg.seed)
    ids = []
    for where in (np.flatnonzero(pos), np.flatnonzero(neg)):
        ids.append(where if where.size <= cfg.max_samples else np.sort(rng.choice(where, cfg.max_samples, False)))
    flat = feats.reshape(-1, feats.shape[-1])
    colour_ok = np.ones((h, w), bool)
    if cfg.l_bins:  # the components' own colour model, as GrabCut's: log-ratio of Lab-bin densities
        k = cfg.l_bins * cfg.ab_bins ** 2
        c = colours.ravel()
        h_pos = np.bincount(c[ids[0]], minlength=k) + 0.5
        h_neg = np.bincount(c[ids[1]], minlength=k) + 0.5
        llr = (np.log(h_pos / h_pos.sum()) - np.log(h_neg / h_neg.sum())).astype(np.float32)[c]
        flat = np.concatenate([flat, llr[:, None]], axis=1)
        colour_ok = (llr > 0).reshape(h, w)
    x = np.concatenate([flat[ids[0]], flat[ids[1]]])
    y = np.r_[np.ones(ids[0].size, np.int8), np.zeros(ids[1].size, np.int8)]
    wv, b = lda_fit(x, y, shrinkage=cfg.shrinkage)
    z = (flat @ wv.astype(np.float32) + np.float32(b)).reshape(h, w)
    p_ok = z >= np.log(cfg.grow_p / (1.0 - cfg.grow_p)) if cfg.grow_p < 1.0 else np.zeros((h, w), bool)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(1)
    reach = max(cfg.min_reach, cfg.reach_frac * float(sides.max()))
    cand = ((p_ok & colour_ok & (dist <= reach)) | pos) & ~neg_pts
    n, lab, stats, _ = cv2.connectedComponentsWithStats(cand.view(np.uint8), connectivity=8)
    out = []
    for m in masks:
        grown = m.copy()
        for r in np.unique(lab[m]):
            if r == 0:
                continue
            x0, y0, bw, bh = (int(v) for v in stats[r, :4])
            sl = (slice(y0, y0 + bh), slice(x0, x0 + bw))
            grown[sl] |= lab[sl] == r
        out.append(grown)
    return out


class GrowRefiner(WorkingFrameRefiner):
    """Weight-free prompted refiner (PromptedRefiner): LDA-guided hysteresis growth; method in the module docstring.

    ``encode`` counts one encoder pass per image; ``refine`` returns (N, H, W) float32 in [0, 1], image frame.
    """

    name = "classical-grow"
    embedding_type = GrowEmbedding

    def __init__(self, *, config: GrowConfig | None = None) -> None:
        super().__init__(config or GrowConfig())

    def _embed(self, image: np.ndarray, frame: LongestSide) -> GrowEmbedding:
        cfg = self.config
        return GrowEmbedding(frame=frame, feats=cfg.features(image),
                             colours=colour_index(image, l_bins=cfg.l_bins, ab_bins=cfg.ab_bins))

    def refine(self, embedding: GrowEmbedding, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All prompts of one image (image frame) -> (N, H, W) float32 in [0, 1], image frame."""
        frame = self._frame_of(embedding, prompts)
        out = np.zeros((len(prompts), *frame.src), np.float32)
        if not prompts:
            return out
        same = frame.size == frame.src
        masks = [p.mask if same else frame.apply_image(p.mask.astype(np.float32)) >= 0.5 for p in prompts]
        boxes = frame.apply_boxes(np.array([p.box for p in prompts], np.float64).reshape(-1, 4))
        pts = frame.apply_coords(np.concatenate([np.asarray(p.points, np.float64).reshape(-1, 2) for p in prompts]))
        labs = np.concatenate([np.asarray(p.labels).reshape(-1) for p in prompts])
        grown = grow_window(embedding.feats, embedding.colours, masks, boxes, pts, labs, self.config)
        for i, p in enumerate(prompts):
            if grown is None:
                out[i] = p.mask
            elif same:
                out[i] = grown[i]
            else:
                out[i] = self.to_image(frame, grown[i])
        return out
