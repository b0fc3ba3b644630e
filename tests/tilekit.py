"""Reference helpers for tiling tests: blend whole window sets with ``finedetail.tiling.Stitcher``."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from finedetail.tiling import Stitcher, Window, tile_grid


def stitch(hw: Sequence[int], windows: Sequence[Window], probs: Sequence[np.ndarray], *, overlap: int) -> np.ndarray:
    """Blend ``probs[i]`` ((windows[i].h, windows[i].w)) into an (H, W) float32 map with one ``Stitcher``."""
    assert len(probs) == len(windows), "one prediction per window"
    st = Stitcher(hw, overlap=overlap)
    for win, p in zip(windows, probs):
        st.add(win, p)
    return st.result()


def map_tiles(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *, tile: int, overlap: int,
              offset: Sequence[int] = (0, 0)) -> np.ndarray:
    """``fn`` on each ``tile_grid`` window of ``image`` ((H, W[, C])), stitched -> (H, W) float32."""
    hw = image.shape[:2]
    wins = tile_grid(hw, tile=tile, overlap=overlap, offset=offset)
    return stitch(hw, wins, [fn(image[w.slices]) for w in wins], overlap=overlap)
