"""Model backends behind one protocol (``base``).

Heavy modules (torch, transformers, segment_anything) load only when one of their names is first used, so that
``import finedetail.models`` stays light::

    from finedetail.models import SamRefiner, SegGptSegmenter   # imports torch here, not before
"""

from __future__ import annotations

import importlib
from typing import Any

from finedetail.models.base import CoarseSegmenter, Embedding, PromptedRefiner

_LAZY = {
    "SamRefiner": "finedetail.models.sam",
    "SamHQRefiner": "finedetail.models.hf_sam",
    "Sam2Refiner": "finedetail.models.hf_sam",
    "load_hf_refiner": "finedetail.models.hf_sam",
    "build_tiny_hf_refiner": "finedetail.models.tiny",
    "save_tiny_hf_refiner": "finedetail.models.tiny",
    "SegGptSegmenter": "finedetail.models.seggpt",
    "load_sam": "finedetail.models.checkpoints",
    "load_seggpt": "finedetail.models.checkpoints",
    "resolve_checkpoint": "finedetail.models.weights",
    "SAM_URLS": "finedetail.models.weights",
    "DEFAULT_SEGGPT": "finedetail.models.weights",
    "CheckpointUnavailableError": "finedetail.models.weights",
    "build_tiny_sam": "finedetail.models.tiny",
    "save_tiny_sam": "finedetail.models.tiny",
    "build_tiny_seggpt": "finedetail.models.tiny",
    "save_tiny_seggpt": "finedetail.models.tiny",
    "ColourTextureSegmenter": "finedetail.models.classical",
    "GrabCutRefiner": "finedetail.models.grabcut",
    "PixelSegmenter": "finedetail.models.thin",
    "GrowRefiner": "finedetail.models.thin",
    "ProxySegGPT": "finedetail.models.proxy",
    "ProxySAM": "finedetail.models.proxy",
}

__all__ = ["CoarseSegmenter", "Embedding", "PromptedRefiner", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'finedetail.models' has no attribute {name!r}")
