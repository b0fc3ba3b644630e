"""finedetail.blockmorph: the post-processing morphology block by block equals postprocess's on the whole mask."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from finedetail.blockmorph import ArrayStore, morphology_blocks
from finedetail.postprocess import PostprocessConfig, _morphology
from finedetail.presets import PRESETS, preset_dict
from finedetail.tiling import Window

CONFIGS = {
    "default": PostprocessConfig(),
    "plain": PostprocessConfig(opening="plain", opening_size=2, close_size=2, hole_area=30, island_area=5),
    "holes-only": PostprocessConfig(close_size=0, opening="none", island_area=0, hole_area=40),
    "islands-only": PostprocessConfig(close_size=0, opening="none", hole_area=0, island_area=25),
    "reconstruction-3": PostprocessConfig(close_size=3, opening_size=3, hole_area=200, island_area=0),
    "off": PostprocessConfig(close_size=0, opening="none", hole_area=0, island_area=0),
    **{f"preset-{name}": PostprocessConfig(**{**dataclasses.asdict(PostprocessConfig()),
                                              **preset_dict(name).get("post", {})}) for name in PRESETS},
}


def _blocked(mask: np.ndarray, cfg: PostprocessConfig, block: int) -> tuple[np.ndarray, dict]:
    out = np.full(mask.shape, 2, np.uint8)  # 2 = never written
    reads: list[Window] = []

    def read(win: Window) -> np.ndarray:
        reads.append(win)
        return mask[win.slices].copy()

    def write(b: Window, m: np.ndarray) -> None:
        assert m.dtype == bool and m.shape == b.hw and (out[b.slices] == 2).all()  # each block once
        out[b.slices] = m

    stats = morphology_blocks(mask.shape, cfg, block=block, read=read, write=write,
                              scratch=lambda: ArrayStore(mask.shape))
    assert (out != 2).all()
    halo = max(r.h for r in reads) - block
    assert halo <= 4 * 3 + 3  # reads are blocks plus a small halo, never the mask
    return out.astype(bool), stats


def _structured(h: int = 90, w: int = 120) -> np.ndarray:
    """Components and holes that cross many 16-px blocks, touch across block corners only, or reach the border."""
    m = np.zeros((h, w), bool)
    m[40:60, 2:22] = True  # a body ...
    m[50, 22:115] = True  # ... with a 1-px wire through many blocks (kept by reconstruction: it hangs on the body)
    m[5, 30:110] = True  # a free-standing 1-px wire through many blocks (removed by reconstruction)
    m[70:88, 60:100] = True
    m[74:84, 64:96] = False  # a 10 x 32 hole spanning blocks (area 320)
    m[75:77, 70:72] = True  # an island inside it
    m[20:35, 40:75] = True
    m[24:31, 45:70] = False  # a hole of 7 x 25 = 175 px crossing the 48 / 64 block seams
    m[24:31, 45] = True
    for i in range(8):  # a diagonal chain through a block corner at (32, 32): 8-connected, 4-disconnected
        m[28 + i, 28 + i] = True
    m[0:12, 0:3] = True  # touches the image border
    m[1:4, 100:103] = True  # a 9-px speck
    m[86:90, 0:30] = True
    m[87:89, 3:6] = False  # a 6-px hole next to the bottom edge
    m[60:90, 110:112] = True  # a 2-px wide strip ending at the bottom border (erosion sees outside as object)
    for i in range(30):  # 1-px diagonals (8-connected only) crossing seams: 30 px > island_area, split they'd go
        m[60 + i, 25 + i] = True  # free-standing: kept by area alone, removed by reconstruction
        m[12 + i, 118 - i] = True  # anti-diagonal
    m[36:44, 26:34] = True  # a body ...
    for i in range(20):
        m[44 + i // 2 * 2 + i % 2, 34 + i] = True  # ... and a thin staircase off its corner
    return m


@pytest.mark.parametrize("block", [16, 23, 512])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_equals_the_whole_image_morphology_on_structured_masks(name, block):
    cfg = CONFIGS[name]
    mask = _structured()
    got, _ = _blocked(mask, cfg, block)
    np.testing.assert_array_equal(got, _morphology(mask, cfg))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", ["default", "plain", "holes-only", "reconstruction-3"])
def test_equals_the_whole_image_morphology_on_random_masks(name, seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(30, 80, size=2)
    density = (0.3, 0.5, 0.7)[seed % 3]
    mask = rng.random((h, w)) < density
    if seed % 2:  # blobs instead of salt and pepper
        import cv2

        mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0) > 0.45
    block = int(rng.integers(5, 20))
    got, _ = _blocked(mask, CONFIGS[name], block)
    np.testing.assert_array_equal(got, _morphology(mask, CONFIGS[name]))


def test_union_find_holds_only_pieces_on_block_edges():
    mask = np.zeros((64, 64), bool)
    mask[2:6:2, 2:60:2] = True  # 58 specks inside blocks of 16 (they touch no block edge)... mostly
    mask[30, :] = True  # one line across all 4 blocks of a row: 4 pieces
    _, stats = _blocked(mask, PostprocessConfig(close_size=0, hole_area=0, opening="none", island_area=1), 16)
    assert stats["pieces"] <= 4 + 8  # the line's pieces + specks that happen to lie on an edge, never all specks


def test_the_issue_example_hole_and_speck():
    """The issue's example: on the same map the image path fills a 16-px hole and removes a 9-px speck."""
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    mask[12:16, 12:16] = False  # 16-px hole
    mask[30:33, 30:33] = True  # 9-px speck
    got, _ = _blocked(mask, PostprocessConfig(), 8)
    assert got[12:16, 12:16].all() and not got[30:33, 30:33].any()
    np.testing.assert_array_equal(got, _morphology(mask, PostprocessConfig()))
