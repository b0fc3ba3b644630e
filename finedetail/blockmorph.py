"""Post-processing morphology of a mask too large to hold, block by block (pure: numpy + OpenCV; no ray, no torch).

``morphology_blocks`` gives exactly ``postprocess.postprocess``'s morphology (closing, hole filling, plain opening,
island removal and opening by reconstruction, in that order, with the same ``PostprocessConfig``) on a mask that is
only ever read and written one block, plus a few pixels of halo, at a time. ``job.raster`` runs it on stitched raster
scenes, so a windowed raster gets the post-processing the image path gives a whole image (tests/test_blockmorph.py
checks equality with the whole-image functions on scenes whose components cross many block borders).

Why block by block equals the whole image:

- **Local operations** (the closing with a disc of radius s, the plain opening, the erosion that opening by
  reconstruction tests) are computed on the block grown by a halo (2s for a closing or an opening, s for an erosion)
  and cropped back. A value inside the block depends only on pixels within that halo, and where the grown block
  meets the image border the library's own functions apply the image border's convention, so the block equals the
  same block of the whole-image result.
- **Component operations** (hole filling: 4-connected background components not touching the image border with
  area <= ``hole_area``; island removal and opening by reconstruction: 8-connected foreground components with area
  <= ``island_area``, or with no pixel left after the erosion) decide per component, and one component may cross any
  number of blocks, so no finite halo can decide it. Two passes over the blocks, row-major:

  1. each block is labelled on its own. A piece that touches no inner block edge is a whole component and is decided
     in its block. A piece that does gets an id in a union-find and is joined with the pieces it touches across the
     seams above and to the left (with the operation's 8- or 4-neighbourhood, diagonals across corners included: the
     seam above is one full image row of ids). Each root sums its pieces' areas and ORs their flags (touches the
     image border; has a pixel that survives the erosion).
  2. each block is labelled again (the same labels) and every piece takes the decision of its component.

  Memory: a few blocks, two image rows of ids and one entry per piece touching an inner edge: it grows with the
  objects that cross block borders, never with the pixel count.

The hole-filled mask, which later local operations need around each block, goes to a ``scratch`` store between the
two component operations; the result goes to ``write``, block by block.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from finedetail.rasters import block_grid
from finedetail.morphology import close, disk, open_plain
from finedetail.postprocess import PostprocessConfig
from finedetail.tiling import Window
from finedetail.transforms import check_hw

__all__ = ["ArrayStore", "MaskStore", "morphology_blocks"]

#: reads a window of a mask: (win.h, win.w) bool
Reader = Callable[[Window], np.ndarray]


class MaskStore(Protocol):
    """Where an intermediate mask goes: written block by block, then read by window (halos cross block edges)."""

    def write(self, block: Window, mask: np.ndarray) -> None:
        """Store ``mask`` ((block.h, block.w) bool) at ``block``."""

    def finish(self) -> Reader:
        """Called after the last ``write``; returns a reader of any window inside the mask."""


class ArrayStore:
    """A ``MaskStore`` holding the whole mask in memory (tests, small scenes)."""

    def __init__(self, hw: Sequence[int]) -> None:
        self.array = np.zeros(check_hw(hw), bool)

    def write(self, block: Window, mask: np.ndarray) -> None:
        self.array[block.slices] = mask

    def finish(self) -> Reader:
        return lambda win: self.array[win.slices].copy()


def _grow(win: Window, hw: tuple[int, int], halo: int) -> Window:
    return Window(max(0, win.y0 - halo), max(0, win.x0 - halo), min(hw[0], win.y1 + halo), min(hw[1], win.x1 + halo))


def _crop(a: np.ndarray, ext: Window, win: Window) -> np.ndarray:
    return a[win.y0 - ext.y0: win.y1 - ext.y0, win.x0 - ext.x0: win.x1 - ext.x0]


def _local(read: Reader, hw: tuple[int, int], halo: int, fn: Callable[[np.ndarray], np.ndarray]) -> Reader:
    """A reader of ``fn`` applied to the mask ``read`` gives, exact inside each window when ``fn`` looks no further
    than ``halo`` px (module docstring)."""
    def reader(win: Window) -> np.ndarray:
        ext = _grow(win, hw, halo)
        return np.ascontiguousarray(_crop(fn(read(ext)), ext, win))

    return reader


class _UnionFind:
    """Components made of pieces: parent links, and per root the summed area and OR-ed flag."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.area: list[int] = []
        self.flag: list[bool] = []

    def add(self, areas: np.ndarray, flags: np.ndarray) -> int:
        first = len(self.parent)
        self.parent += range(first, first + len(areas))
        self.area += [int(a) for a in areas]
        self.flag += [bool(f) for f in flags]
        return first

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.area[ra] += self.area[rb]
            self.flag[ra] = self.flag[ra] or self.flag[rb]


def _seam_pairs(cur: np.ndarray, other: np.ndarray, start: int, offsets: Sequence[int]) -> np.ndarray:
    """(k, 2) pairs of ids (both >= 0) of neighbours across a seam: ``cur[i]`` next to ``other[start + i + d]``."""
    idx = np.arange(len(cur)) + start
    out = []
    for d in offsets:
        j = idx + d
        ok = (j >= 0) & (j < len(other))
        a, b = cur[ok], other[j[ok]]
        both = (a >= 0) & (b >= 0)
        out.append(np.stack([a[both], b[both]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


class _Pieces:
    """One block's labelled set: mask (the block of the operation's input), labels of the set, area and flag per
    label, and which labels touch an inner block edge."""

    def __init__(self, mask: np.ndarray, labelled: np.ndarray, connectivity: int, flag: np.ndarray | None,
                 block: Window, hw: tuple[int, int]) -> None:
        self.mask = mask
        self.n, self.labels = cv2.connectedComponents(labelled.view(np.uint8), connectivity=connectivity,
                                                      ltype=cv2.CV_32S)
        self.area = np.bincount(self.labels.ravel(), minlength=self.n)
        edges = {"top": self.labels[0], "bottom": self.labels[-1], "left": self.labels[:, 0],
                 "right": self.labels[:, -1]}
        inner = {"top": block.y0 > 0, "bottom": block.y1 < hw[0], "left": block.x0 > 0, "right": block.x1 < hw[1]}
        self.open = np.zeros(self.n, bool)
        self.border = np.zeros(self.n, bool)
        for name, labels in edges.items():
            (self.open if inner[name] else self.border)[labels] = True
        self.open[0] = self.border[0] = False  # label 0: pixels outside the set
        self.flag = self.border if flag is None else flag
        self.edges = edges


def _component_filter(hw: tuple[int, int], blocks: list[Window], pieces: Callable[[Window], _Pieces], *,
                      connectivity: int, decide: Callable[[np.ndarray, np.ndarray], np.ndarray],
                      apply: Callable[[np.ndarray, np.ndarray], np.ndarray],
                      write: Callable[[Window, np.ndarray], None]) -> int:
    """Two passes (module docstring): ``pieces(block)`` labels a block; ``decide(area, flag)`` -> bool per component
    (True: change it); ``apply(mask, change)`` -> the block's result. Returns the number of pieces held."""
    uf = _UnionFind()
    offsets: list[int] = []
    above = np.full(hw[1], -1, np.int64)  # ids of image row y0 - 1 (the seam above the current block row)
    below = np.full(hw[1], -1, np.int64)
    left = np.zeros(0, np.int64)
    diag = (-1, 0, 1) if connectivity == 8 else (0,)
    for block in blocks:
        if block.x0 == 0 and block.y0 > 0:
            above, below = below, above
        p = pieces(block)
        ids = np.flatnonzero(p.open)
        first = uf.add(p.area[ids], p.flag[ids])
        offsets.append(first)
        lut = np.full(p.n, -1, np.int64)
        lut[ids] = first + np.arange(len(ids))
        if block.y0 > 0:
            for a, b in _seam_pairs(lut[p.edges["top"]], above, block.x0, diag):
                uf.union(int(a), int(b))
        if block.x0 > 0:
            for a, b in _seam_pairs(lut[p.edges["left"]], left, 0, diag):
                uf.union(int(a), int(b))
        below[block.x0:block.x1] = lut[p.edges["bottom"]]
        left = lut[p.edges["right"]]
    total = len(uf.parent)
    roots = [uf.find(i) for i in range(total)]
    verdict = decide(np.array([uf.area[r] for r in roots], np.int64), np.array([uf.flag[r] for r in roots], bool))
    for block, first in zip(blocks, offsets):
        p = pieces(block)
        change = decide(p.area, p.flag)
        ids = np.flatnonzero(p.open)
        change[ids] = verdict[first: first + len(ids)]
        change[0] = False
        write(block, apply(p.mask, change[p.labels]))
    return total


def morphology_blocks(hw: Sequence[int], cfg: PostprocessConfig, *, block: int, read: Reader,
                      write: Callable[[Window, np.ndarray], None],
                      scratch: Callable[[], MaskStore] | None = None) -> dict[str, int]:
    """``postprocess``'s morphology (``cfg``: close_size, hole_area, opening, opening_size, island_area) on the mask
    of size ``hw`` that ``read(window)`` gives ((h, w) bool; e.g. the thresholded probability), block by block.

    Visits ``block_grid(hw, block=block)`` row-major and calls ``write(block, mask)`` once per block with the result
    ((block.h, block.w) bool), equal to the same block of the whole-image morphology. ``scratch()`` makes the store
    the hole-filled mask goes to (needed when ``hole_area`` > 0; default an in-memory ``ArrayStore``, which holds the
    whole mask: pass a disk-backed one for scenes larger than memory). Returns ``{"pieces": n}``, the union-find
    entries held (pieces of components that touch inner block edges; module docstring).
    """
    hw = check_hw(hw)
    blocks = block_grid(hw, block=block)
    src = read
    pieces_held = 0
    if cfg.close_size:
        src = _local(src, hw, 2 * cfg.close_size, lambda m: close(m, size=cfg.close_size))
    if cfg.hole_area:
        store = (scratch or (lambda: ArrayStore(hw)))()
        holes_of = src

        def hole_pieces(b: Window) -> _Pieces:
            m = holes_of(b)
            return _Pieces(m, ~m, 4, None, b, hw)  # flag: touches the image border (outside, not a hole)

        pieces_held += _component_filter(
            hw, blocks, hole_pieces, connectivity=4, write=store.write,
            decide=lambda area, border: (area <= cfg.hole_area) & ~border, apply=lambda m, fill: m | fill)
        src = store.finish()
    if cfg.opening == "plain":
        src = _local(src, hw, 2 * cfg.opening_size, lambda m: open_plain(m, size=cfg.opening_size))
    erode = cfg.opening_size if cfg.opening == "reconstruction" else 0
    if not (cfg.island_area or erode):
        for b in blocks:
            write(b, src(b))
        return {"pieces": pieces_held}
    islands_of = src

    def island_pieces(b: Window) -> _Pieces:
        ext = _grow(b, hw, erode)
        m_ext = islands_of(ext)
        m = np.ascontiguousarray(_crop(m_ext, ext, b))
        p = _Pieces(m, m, 8, np.zeros(0, bool), b, hw)
        if erode:  # flag: a pixel of the component survives the erosion (its default border: outside = object)
            core = _crop(cv2.erode(m_ext.view(np.uint8), disk(erode)), ext, b) > 0
            p.flag = np.bincount(p.labels[core], minlength=p.n) > 0
        else:
            p.flag = np.ones(p.n, bool)
        return p

    pieces_held += _component_filter(
        hw, blocks, island_pieces, connectivity=8, write=write,
        decide=lambda area, core: (area <= cfg.island_area) | ~core, apply=lambda m, drop: m & ~drop)
    return {"pieces": pieces_held}
