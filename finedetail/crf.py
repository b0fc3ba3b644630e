"""Dense CRF (Kraehenbuehl & Koltun 2011) on a two-label probability map, through pydensecrf (the 'crf' extra).

``dense_crf(image, prob)`` -> foreground marginals in the image frame; ``finedetail.postprocess`` runs it after the
guided filter when ``PostprocessConfig.crf`` is on. Importing this module needs no pydensecrf: the call does.
"""

from __future__ import annotations

import numpy as np

from finedetail.types import check_image, check_prob

__all__ = ["dense_crf"]

_CRF_HINT = "dense CRF needs the 'crf' extra: pip install 'finedetail[crf]' (pydensecrf2)"


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    *,
    iters: int = 5,
    sxy_gaussian: float = 3,
    compat_gaussian: float = 3,
    sxy_bilateral: float = 50,
    srgb: float = 5,
    compat_bilateral: float = 5,
) -> np.ndarray:
    """Fully connected CRF (Kraehenbuehl & Koltun 2011) on a two-label (background / foreground) problem.

    image: (H, W, 3) uint8 RGB; prob: (H, W) float32 foreground probability in [0, 1] (the unary is -log p,
    p clipped to [1e-6, 1 - 1e-6]). Pairwise terms: a Gaussian smoothness kernel (``sxy_gaussian`` px,
    ``compat_gaussian``) and a bilateral appearance kernel (``sxy_bilateral`` px, ``srgb`` intensity levels,
    ``compat_bilateral``); ``iters`` mean-field iterations. Returns (H, W) float32 foreground marginals.
    Needs pydensecrf (``pip install 'finedetail[crf]'``); raises ImportError with that hint when missing.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(_CRF_HINT) from e
    check_image(image)
    check_prob(prob)
    if prob.shape != image.shape[:2]:
        raise ValueError(f"prob is {prob.shape} but the image is {image.shape[:2]}; both must share one frame")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters=}")
    h, w = prob.shape
    p = np.clip(prob, 1e-6, 1.0 - 1e-6)
    unary = np.ascontiguousarray(-np.log(np.stack([1.0 - p, p]).reshape(2, -1)), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    crf.addPairwiseBilateral(
        sxy=sxy_bilateral, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=compat_bilateral
    )
    q = np.asarray(crf.inference(int(iters)), dtype=np.float32).reshape(2, h, w)
    return np.ascontiguousarray(q[1])
