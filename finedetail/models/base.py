"""The model protocol every backend implements (pure: no torch).

Two roles, mirroring the method (README, The method, steps 1-2):

- ``CoarseSegmenter``: an in-context segmenter (SegGPT, the classical colour model, the resolution-limited proxy).
  It is told once what to segment (``set_prompts``) and then maps target images to coarse probability maps.
- ``PromptedRefiner``: a promptable segmenter (SAM, GrabCut, the proxy). ``encode`` runs the expensive image encoder
  once per image; ``refine`` answers any number of component prompts against one encoding, batched.

All maps are float32 probabilities in [0, 1] in the frame of the image that was passed in. Both roles count their
encoder passes in ``encoder_passes`` (the method's cost unit): the number of full encoder forwards they ran, one per
row of every batch the network saw (a refiner: one per image encoded; SegGPT: one per (prompt, target) pair, i.e. P per
target with P prompts).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from finedetail.types import ComponentPrompt, PromptPair

__all__ = ["CoarseSegmenter", "Embedding", "PromptedRefiner"]


class Embedding(Protocol):
    """Opaque result of ``PromptedRefiner.encode`` for one image. ``hw`` is that image's (h, w)."""

    hw: tuple[int, int]


@runtime_checkable
class CoarseSegmenter(Protocol):
    name: str
    #: foreground classes this prompt set names (1 for a binary task)
    num_classes: int
    #: long side of the canvas the model sees (448 for SegGPT); informational
    input_size: int
    encoder_passes: int

    def set_prompts(self, prompts: Sequence[PromptPair], *, num_classes: int = 1) -> None:
        """Load the in-context examples once; ``predict`` raises RuntimeError until this was called."""

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: (H, W, 3) uint8 each -> one (num_classes, H, W) float32 map each, in that image's frame."""


@runtime_checkable
class PromptedRefiner(Protocol):
    name: str
    #: long side the model resizes every input to (1024 for SAM): the pipeline tiles anything larger
    input_size: int
    encoder_passes: int

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Run the image encoder once per image (batched where the backend can); returns one Embedding each."""

    def refine(self, embedding: Any, prompts: Sequence[ComponentPrompt]) -> np.ndarray:
        """All prompts of one image against its embedding -> (N, H, W) float32, image frame, N = len(prompts).

        N == 0 returns an empty (0, H, W) array without touching the model."""
