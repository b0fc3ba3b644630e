"""Resolution-limited proxy models for benchmarks and tests (pure: numpy + OpenCV). Never a user default.

The proxies answer *what* is foreground with a colour key (``key_of``: ``finedetail.synthetic.object_key`` on
one-class scenes, 1 on the synthetic scenes' object colour and 0 on their background; ``class_key_maps`` for the
classes of two-class scenes) but they *see* the image only the way the real model does: at the real model's input
resolution, through its patch / output grid. They are deterministic and CPU-cheap, so the method's resolution
story (README, The method, steps 3-4, and its variants) can be tested and benchmarked without weights:

``ProxySegGPT`` (CoarseSegmenter, ``input_size=448``)
    1. resize the image so its long side is 448 (``cv2.INTER_AREA`` down, ``cv2.INTER_LINEAR`` up; aspect kept,
       no padding);
    2. key = ``class_key_maps(resized, num_classes)``, i.e. the key of what the model sees, not a resized key;
    3. average-pool the key on the 16-px patch grid (28 x 28 patches on a square image; a partial patch at the
       bottom/right edge is the mean over its valid pixels);
    4. patch probability ``p = clip((mean - level / 2) / level, 0, 1)`` with ``level = 0.5`` by default, i.e.
       ``clip((mean - 0.25) / 0.5, 0, 1)``: ``p >= 0.5`` exactly when at least half of a patch is object (so blob
       boundaries land where they are). A lower ``ProxySegGPTConfig.level`` lets narrower parts through (and
       dilates blobs), for ablations;
    5. the patch map is upsampled bilinearly to the 448-side canvas (the model's output resolution) and then
       bilinearly to the input image size.
    A 16-px patch at 448 spans ``16 * long / 448`` input pixels (36.6 px at 1024): blobs survive, 1-3 px structures
    never fill half a patch and vanish (and so do 3-6 px poles: at 1024 they fill at most ~1/6 of a patch).

``ProxySAM`` (PromptedRefiner, ``input_size=1024``)
    ``encode``: resize the long side to 1024 like SAM's ``ResizeLongestSide`` (``INTER_AREA`` when shrinking,
    ``INTER_LINEAR`` when growing: SAM upsamples small images too), key the resized image (``key_of``: any object,
    whatever its class; the prompt says which one), zero-pad bottom/right to 1024 x 1024, and keep two pooled key
    maps: ``patches`` (64 x 64, 16-px mean, SAM's embedding grid; kept for inspection) and ``fine`` (256 x 256,
    4-px mean, SAM's low-res mask grid: the decoder's output resolution).
    ``refine``: each prompt is decided on the 256 x 256 grid (one cell = 4 x 4 px of the 1024 frame):

    - candidate cells: ``fine >= FINE_THRESHOLD`` (0.34: with an exact 0/1 key, at least 6 of a cell's 16 pixels
      are object; the slack below 6/16 = 0.375 keeps 2x-upscaled lines, whose bilinear blend with the background
      lowers their key to ~0.85 on the synthetic scenes);
    - region: the prompt box expanded by ``box_expand`` (10 %) of its width/height on each side, in whole cells
      (cells the expanded box touches), united with the mask input dilated by ``mask_dilate`` (2) cells;
    - result = (candidate AND region) OR mask input (``logits > 0``; no mask input when ``logits`` is None);
    - each positive point adds every 8-connected candidate component touching the 3 x 3 cells around it, also
      outside the region (like SAM, a point selects the whole object it lands on);
    - each negative point clears the cells within ``neg_radius`` cells (Chebyshev; default 0 = its own cell), last;
    - output: the decision becomes low-res logits ``+logit`` / ``-logit`` (``logit = 8``), which go through SAM's
      postprocessing chain: bilinear upsampling to 1024 x 1024, crop of the valid (unpadded) part, bilinear
      (``INTER_LINEAR``) resize to the image size, then a sigmoid. ``>= 0.5`` is exactly where the bilinearly
      interpolated decision is >= 1/2; like SAM's masks the map is confident (> 0.9) except within ~1 cell of an
      edge, so one-cell-wide structures are confident too. It is a decision, not a calibrated probability.

    Why the threshold is 0.34: a 1-px line in a 1024-px image fills 1 of a cell's 4 columns (pooled key 0.25) and is
    lost at 1x. Upscaled 2x (bilinear) the line is 2 px wide and, starting on an even column, both columns fall in
    one cell of a 1024 tile whose origin is a multiple of 4 (pooled 0.5, ~0.42 with blended synthetic colours;
    >= 0.34): kept. Handed whole, the 2048-px image is shrunk back to 1024 by
    the model (INTER_AREA) and the line is 1 px again: lost, the same as 1x. A crop zoomed 4x makes it 4 px: kept.
    Because the decision is made per grid cell, a 2-px line straddling a cell border (0.25 + 0.25) is lost on one
    grid and kept on a grid shifted by 1-2 px: circular-shift TTA recovers what a given grid loses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from finedetail.synthetic import class_keys
from finedetail.frames import LongestSide, resize
from finedetail.types import ComponentPrompt, PromptPair, check_image

__all__ = [
    "FINE_CELL",
    "FINE_THRESHOLD",
    "PATCH",
    "ProxySAM",
    "ProxySAMConfig",
    "ProxySAMEmbedding",
    "ProxySegGPT",
    "ProxySegGPTConfig",
    "cells_to_image",
    "class_key_maps",
    "key_of",
    "pool_mean",
    "proxy_sam_encode",
    "proxy_seggpt_maps",
    "seggpt_patch_prob",
    "segment_cells",
]

#: side of SAM's / SegGPT's ViT patch in model-input pixels
PATCH = 16
#: side of one cell of SAM's 256 x 256 low-res mask output in 1024-frame pixels
FINE_CELL = 4
#: a low-res cell is object iff its mean key >= this (above 5/16: a 1-px line has at most ~4-5 px in a cell; below
#: 6/16 and well below 2/4 = a 2-px line, which upscaling blends down to ~0.42)
FINE_THRESHOLD = 0.34


# ---------------------------------------------------------------------------------------------------------------
# pure functions


def key_of(image: np.ndarray) -> np.ndarray:
    """Any-object colour key of ``image`` (H, W, 3) uint8 -> (H, W) float32 in [0, 1]: the max of
    ``finedetail.synthetic.class_keys`` (red and blue keys). On one-class scenes the blue key is 0 everywhere, so this
    is exactly ``synthetic.object_key``: 1 on object pixels, 0 on background."""
    return class_key_maps(image, 1)[0]


def class_key_maps(image: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (num_classes, H, W) float32 keys. ``num_classes == 2``: ``synthetic.class_keys`` (class 1 =
    red = thin parts, class 2 = blue = blob parts of two-class scenes). Otherwise every channel is the any-object key
    (max of both keys): the proxies tell classes apart only where the synthetic scenes colour them apart."""
    keys = class_keys(image)
    if num_classes == 2:
        return keys
    return np.repeat(keys.max(axis=0)[None], num_classes, axis=0)


def pool_mean(a: np.ndarray, cell: int) -> np.ndarray:
    """Mean of ``a`` (H, W) over a ``cell`` x ``cell`` grid anchored at (0, 0) -> (ceil(H/cell), ceil(W/cell))
    float32. A partial cell at the bottom/right is the mean over its valid pixels only."""
    if cell < 1:
        raise ValueError(f"cell must be >= 1 px, got {cell=}")
    h, w = a.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((gh * cell, gw * cell), np.float64)
    valid = np.zeros_like(padded)
    padded[:h, :w] = a
    valid[:h, :w] = 1.0
    total = padded.reshape(gh, cell, gw, cell).sum(axis=(1, 3))
    count = valid.reshape(gh, cell, gw, cell).sum(axis=(1, 3))
    return (total / count).astype(np.float32)


def seggpt_patch_prob(patch_mean: np.ndarray, *, level: float = 0.5) -> np.ndarray:
    """ProxySegGPT's patch rule: ``clip((mean - level / 2) / level, 0, 1)`` float32 (>= 0.5 iff mean >= level)."""
    m = np.asarray(patch_mean, np.float64)
    return np.clip((m - level / 2) / level, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# ProxySegGPT


@dataclass(frozen=True)
class ProxySegGPTConfig:
    """``level``: the patch mean key at which ProxySegGPT's probability is 0.5 (module docstring, step 4)."""

    level: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.level <= 1.0:
            raise ValueError(f"level must lie in (0, 1], got {self.level=}")


class ProxySegGPT:
    """Resolution-limited stand-in for SegGPT (CoarseSegmenter); rules in the module docstring.

    ``set_prompts`` only records ``num_classes``: the proxy knows the object from its colour key, not from the
    examples. Class channels come from ``class_key_maps``: with ``num_classes == 2`` the two-class synthetic scenes'
    red (1) and blue (2) keys, otherwise the any-object key repeated (multi-class plumbing, not class separation).
    ``predict`` counts encoder passes as SegGPT runs them: one per (prompt, target) pair, i.e. P per image with P
    prompts.
    """

    name = "proxy-seggpt"
    input_size = 448

    def __init__(self, *, config: ProxySegGPTConfig | None = None) -> None:
        self.config = config or ProxySegGPTConfig()
        self.num_classes = 1
        self.encoder_passes = 0
        self._prompts = 0
        self._ready = False

    def set_prompts(self, prompts: Sequence[PromptPair], *, num_classes: int = 1) -> None:
        """Record ``num_classes`` (the prompts themselves are not looked at; at least one is required, like SegGPT)."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
        if len(prompts) == 0:
            raise ValueError("set_prompts needs at least one PromptPair (image + mask) saying what to segment, got 0")
        self.num_classes = int(num_classes)
        self._prompts = len(prompts)
        self._ready = True

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: (H, W, 3) uint8 each -> (num_classes, H, W) float32 in [0, 1], that image's frame."""
        if not self._ready:
            raise RuntimeError("ProxySegGPT.predict called before set_prompts; call set_prompts(prompts) first")
        out = []
        for image in images:
            check_image(image)
            out.append(proxy_seggpt_maps(image, self.num_classes, level=self.config.level))
            self.encoder_passes += self._prompts
        return out


def proxy_seggpt_maps(image: np.ndarray, num_classes: int = 1, *, level: float = 0.5) -> np.ndarray:
    """ProxySegGPT on one image (H, W, 3) uint8 -> (num_classes, H, W) float32 in [0, 1], image frame."""
    frame = LongestSide(image.shape[:2], ProxySegGPT.input_size)
    small = frame.apply_image(image)
    out = np.empty((num_classes, *frame.src), np.float32)
    for c, key in enumerate(class_key_maps(small, num_classes)):
        patches = seggpt_patch_prob(pool_mean(key, PATCH), level=level)
        up = resize(patches, frame.size, interp="bilinear")
        out[c] = np.clip(frame.invert_image(up, interp="bilinear"), 0.0, 1.0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# ProxySAM


@dataclass(frozen=True)
class ProxySAMConfig:
    """Knobs of ProxySAM's decoder rule (module docstring). ``threshold``: a low-res cell is object iff its mean key
    >= threshold. ``box_expand``: fraction of the box's width/height added on each side. ``mask_dilate``: cells the
    mask input is dilated by to widen the region. ``neg_radius``: cells (Chebyshev) a negative point clears.
    ``logit``: magnitude of the low-res logits (sharpness of the output map).
    ``use_box=False`` ignores the prompt box (like SAM called without one): the region is then the dilated mask input
    alone, and without a mask input only positive points can select anything."""

    threshold: float = FINE_THRESHOLD
    box_expand: float = 0.1
    mask_dilate: int = 2
    neg_radius: int = 0
    logit: float = 8.0
    use_box: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold=}")
        if self.box_expand < 0:
            raise ValueError(f"box_expand must be >= 0, got {self.box_expand=}")
        if not self.logit > 0:
            raise ValueError(f"logit must be > 0, got {self.logit=}")
        if self.mask_dilate < 0 or self.neg_radius < 0:
            raise ValueError(
                f"mask_dilate and neg_radius must be >= 0 cells, got {self.mask_dilate=}, {self.neg_radius=}")


@dataclass(frozen=True, eq=False)
class ProxySAMEmbedding:
    """ProxySAM's encoding of one image.

    frame: the image's ``LongestSide`` frame (``frame.src`` = the image's (h, w), ``frame.size`` its size in the 1024
    frame). patches: (64, 64) float32 mean key per 16-px patch. fine: (256, 256) float32 mean key per 4-px cell. Both
    over the zero-padded 1024 x 1024 frame.
    """

    frame: LongestSide
    patches: np.ndarray
    fine: np.ndarray

    @property
    def hw(self) -> tuple[int, int]:
        return self.frame.src


def proxy_sam_encode(image: np.ndarray, *, input_size: int = 1024) -> ProxySAMEmbedding:
    """Encode one (H, W, 3) uint8 image the way SAM sees it (module docstring)."""
    check_image(image)
    frame = LongestSide(image.shape[:2], input_size)
    key = frame.pad(key_of(frame.apply_image(image)))
    return ProxySAMEmbedding(frame=frame, patches=pool_mean(key, PATCH), fine=pool_mean(key, FINE_CELL))


def _cell_index(xy: np.ndarray, n: int) -> tuple[int, int]:
    """Continuous (x, y) in the padded input frame -> (row, col) of the low-res cell holding it, clipped to the grid."""
    c = int(np.floor(xy[0] / FINE_CELL))
    r = int(np.floor(xy[1] / FINE_CELL))
    return min(max(r, 0), n - 1), min(max(c, 0), n - 1)


def segment_cells(fine: np.ndarray, prompt: ComponentPrompt, frame: LongestSide, *,
                  config: ProxySAMConfig | None = None) -> np.ndarray:
    """ProxySAM's decoder rule for one prompt on the low-res grid (module docstring).

    fine: (n, n) float32 pooled key (n = 256, ``ProxySAMEmbedding.fine``); prompt: in the image frame; frame: the
    image's ``LongestSide`` frame, which maps the prompt into the 1024 frame. Returns (n, n) bool, the cells decided
    object.
    """
    cfg = config or ProxySAMConfig()
    n = fine.shape[0]
    candidate = fine >= cfg.threshold
    region = np.zeros_like(candidate)
    x0, y0, x1, y1 = (float(v) for v in prompt.box)
    ex, ey = cfg.box_expand * (x1 - x0), cfg.box_expand * (y1 - y0)
    bx0, by0, bx1, by1 = frame.apply_boxes(np.array([[x0 - ex, y0 - ey, x1 + ex, y1 + ey]]))[0]
    c0, r0 = int(np.floor(bx0 / FINE_CELL)), int(np.floor(by0 / FINE_CELL))
    c1, r1 = int(np.ceil(bx1 / FINE_CELL)), int(np.ceil(by1 / FINE_CELL))
    if cfg.use_box:
        region[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)] = True
    mask_in = np.zeros_like(candidate)
    if prompt.logits is not None:
        if prompt.logits.shape != (n, n):
            raise ValueError(f"prompt logits must be ({n}, {n}) (SAM low-res frame), got {prompt.logits.shape}; "
                             f"build them with finedetail.prompts.mask_to_sam_logits")
        mask_in = np.asarray(prompt.logits) > 0
        if cfg.mask_dilate > 0 and mask_in.any():
            k = np.ones((2 * cfg.mask_dilate + 1,) * 2, np.uint8)
            region |= cv2.dilate(mask_in.astype(np.uint8), k) > 0
    out = (candidate & region) | mask_in
    labels = np.asarray(prompt.labels)
    points = frame.apply_coords(np.asarray(prompt.points, np.float64).reshape(-1, 2))
    pos = [p for p, lab in zip(points, labels) if lab == 1]
    if pos and candidate.any():
        _, comp = cv2.connectedComponents(candidate.astype(np.uint8), connectivity=8)
        for p in pos:
            r, c = _cell_index(p, n)
            touched = np.unique(comp[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2])
            touched = touched[touched > 0]
            if touched.size:
                out |= np.isin(comp, touched)
    for p, lab in zip(points, labels):
        if lab == 0:
            r, c = _cell_index(p, n)
            rad = cfg.neg_radius
            out[max(r - rad, 0):r + rad + 1, max(c - rad, 0):c + rad + 1] = False
    return out


def cells_to_image(cells: np.ndarray, emb: ProxySAMEmbedding, *, logit: float = 8.0) -> np.ndarray:
    """Low-res (n, n) bool decision -> (H, W) float32 in [0, 1], image frame, via SAM's chain
    (``LongestSide.from_low_res``): logits ``±logit``, bilinear to the padded frame, crop the valid part, bilinear to
    the image size, sigmoid."""
    z = emb.frame.from_low_res(np.where(cells, np.float32(logit), np.float32(-logit)))
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class ProxySAM:
    """Resolution-limited stand-in for SAM (PromptedRefiner); rules in the module docstring.

    ``encode`` counts one encoder pass per image. ``refine`` ignores nothing of the prompt: box, points (positive and
    negative) and the low-res mask input all act, each by the documented rule.
    """

    name = "proxy-sam"
    input_size = 1024

    def __init__(self, *, config: ProxySAMConfig | None = None) -> None:
        self.config = config or ProxySAMConfig()
        self.encoder_passes = 0

    def encode(self, images: Sequence[np.ndarray]) -> list[ProxySAMEmbedding]:
        """images: (H, W, 3) uint8 each -> one ProxySAMEmbedding each."""
        out = []
        for image in images:
            out.append(proxy_sam_encode(image, input_size=self.input_size))
            self.encoder_passes += 1
        return out

    def refine(self, embedding: ProxySAMEmbedding, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All prompts of one image (image frame) -> (N, H, W) float32 in [0, 1], image frame."""
        if not isinstance(embedding, ProxySAMEmbedding):
            raise TypeError(f"embedding must come from ProxySAM.encode, got {type(embedding).__name__}; "
                            f"call refiner.encode([image]) first")
        h, w = embedding.hw
        out = np.zeros((len(prompts), h, w), np.float32)
        for i, prompt in enumerate(prompts):
            if prompt.mask.shape != (h, w):
                raise ValueError(f"prompt {i}: mask is {prompt.mask.shape} but the encoded image is {(h, w)}; "
                                 f"prompts must be in the frame of the image passed to encode")
            cells = segment_cells(embedding.fine, prompt, embedding.frame, config=self.config)
            out[i] = cells_to_image(cells, embedding, logit=self.config.logit)
        return out
