"""SegGPT output decoding (pure: numpy + OpenCV, no torch).

SegGPT "paints" its answer: ``pred_masks`` is a (3, 2S, S) image in the model's normalised colour space (ImageNet
mean/std), the prompt's mask reconstructed on top and the target's mask below (S = 448 for the real model). Each class
was painted in a palette colour (``SegGptImageProcessor.get_palette``: background black, class 1 white, ...), so a
pixel's class is the palette colour it is closest to. Instead of the arg-min (the reference post-processing, followed
by nearest-neighbour resizing) we keep soft probabilities::

    p_k(x) = softmax_k( -||rgb(x) - palette_k||^2 / (temperature * d_min^2) )

with colours in 0..255 and ``d_min`` the distance between the two closest palette colours, so ``temperature`` is
relative to the palette's spacing: with the default 0.2 a pixel painted exactly in a palette colour gets >= 0.96 for
its class (>= 0.993 for a binary palette), a pixel halfway between two colours gets 0.5/0.5, and a binary pixel
grey at 75 % white gets 0.92. The probabilities of the S x S canvas are then resized bilinearly to the image
(``resize_probs``), keeping soft edges for the later stages.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from finedetail.frames import resize

__all__ = [
    "DEFAULT_TEMPERATURE",
    "canvas_probabilities",
    "pred_to_canvas",
    "resize_probs",
    "seggpt_probabilities",
]

DEFAULT_TEMPERATURE = 0.2


def pred_to_canvas(pred: np.ndarray, *, image_mean: Sequence[float], image_std: Sequence[float]) -> np.ndarray:
    """SegGPT's raw (3, 2S, S) prediction (normalised colour space, prompt on top) -> the target half as an
    (S, S, 3) float32 RGB canvas in [0, 255] (``(x * std + mean) * 255``, clipped)."""
    pred = np.asarray(pred, np.float32)
    if pred.ndim != 3 or pred.shape[0] != 3 or pred.shape[1] % 2:
        raise ValueError(f"pred must be (3, 2S, S) (one item of pred_masks), got shape {pred.shape}")
    half = pred[:, pred.shape[1] // 2 :].transpose(1, 2, 0)
    mean = np.asarray(image_mean, np.float32).reshape(1, 1, 3)
    std = np.asarray(image_std, np.float32).reshape(1, 1, 3)
    return np.clip((half * std + mean) * 255.0, 0.0, 255.0)


def canvas_probabilities(canvas: np.ndarray, *, palette: Sequence[Sequence[float]],
                         temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """(h, w, 3) RGB canvas (float or uint8, 0..255) -> (K - 1, h, w) float32 per-class probabilities.

    palette: K colours (0..255); entry 0 is the background and is dropped from the output, so a binary palette
    [black, white] gives (1, h, w) = P(white). Softmax over negative squared distances, scaled by
    ``temperature * d_min^2`` (see module docstring); the K probabilities of a pixel sum to 1 (background included).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature=}")
    pal = np.asarray(palette, np.float64)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) < 2:
        raise ValueError(f"palette must be K >= 2 RGB colours (K, 3), got shape {pal.shape}")
    canvas = np.asarray(canvas, np.float64)
    if canvas.ndim != 3 or canvas.shape[2] != 3:
        raise ValueError(f"canvas must be (h, w, 3) RGB, got shape {canvas.shape}")
    pair = ((pal[:, None] - pal[None]) ** 2).sum(-1)
    d_min2 = pair[~np.eye(len(pal), dtype=bool)].min()
    if d_min2 <= 0:
        raise ValueError("palette has duplicate colours; classes would be indistinguishable")
    d2 = ((canvas[:, :, None, :] - pal[None, None]) ** 2).sum(-1)  # (h, w, K)
    z = -d2 / (temperature * d_min2)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=-1, keepdims=True)
    return np.ascontiguousarray(p[..., 1:].transpose(2, 0, 1), dtype=np.float32)


def resize_probs(probs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float probabilities -> (C, H, W) float32 in [0, 1] at ``hw`` = (H, W).

    ``frames.resize``: bilinear (``cv2.INTER_LINEAR``, pixel-centre aligned like ``align_corners=False``) whenever
    either side grows; area averaging when both shrink (bilinear would alias). Never nearest: soft edges survive.
    """
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C, h, w), got shape {probs.shape}")
    H, W = int(hw[0]), int(hw[1])
    c, h, w = probs.shape
    if (h, w) == (H, W):
        return probs.copy()
    out = np.empty((c, H, W), np.float32)
    for k in range(c):
        out[k] = resize(probs[k], (H, W))
    return np.clip(out, 0.0, 1.0, out=out)


def seggpt_probabilities(
    pred: np.ndarray,
    *,
    palette: Sequence[Sequence[float]],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    temperature: float = DEFAULT_TEMPERATURE,
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """One SegGPT prediction (3, 2S, S) -> (K - 1, S, S) float32 class probabilities of the target, or (K - 1, H, W)
    resized to the target image when ``out_hw`` = (H, W) is given. ``pred_to_canvas`` + ``canvas_probabilities`` +
    ``resize_probs``; image_mean / image_std are the processor's (ImageNet)."""
    canvas = pred_to_canvas(pred, image_mean=image_mean, image_std=image_std)
    probs = canvas_probabilities(canvas, palette=palette, temperature=temperature)
    return probs if out_hw is None else resize_probs(probs, out_hw)
