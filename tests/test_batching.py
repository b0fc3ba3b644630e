"""Batched encoder work, checked on SAM's own image encoder (a forward pre-hook records every batch it receives).

Contract (README, The method, step 2, and ``refine_variants_batch``): every window of every variant of every image
of a batch goes through ONE ``encode`` call, which runs the encoder in chunks of ``encode_batch``; no two inputs the
encoder sees are the same pixels; passes counted by the refiner and by the Stats equal what the encoder ran.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finedetail import tiling
from finedetail.config import PipelineConfig
from finedetail.execute import run_image
from finedetail.pipeline import refine_variants_batch
from finedetail.plan import variants
from finedetail.models.sam import SamRefiner
from finedetail.models.tiny import build_tiny_sam


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sam():
    # smaller than the default tiny model: only the frames (1024 input, 64 x 64 embedding) matter here
    return build_tiny_sam(embed_dim=16, depth=1, num_heads=1, prompt_embed_dim=16, seed=0)


@pytest.fixture
def encoder_batches(sam):
    """Every batch tensor (B, 3, 1024, 1024) that reaches ``sam.image_encoder.forward``, in call order."""
    seen: list[torch.Tensor] = []
    handle = sam.image_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    yield seen
    handle.remove()


def _image(seed, hw):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _coarse(hw, box):
    """(1, H, W) float32 coarse map with one rectangular component (y0, x0, y1, x1) at 0.9."""
    m = np.zeros((1, *hw), np.float32)
    y0, x0, y1, x1 = box
    m[0, y0:y1, x0:x1] = 0.9
    return m


def _assert_all_distinct(batches):
    samples = [s for b in batches for s in b]
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            assert not torch.equal(samples[i], samples[j]), f"encoder inputs {i} and {j} are the same pixels"


@pytest.mark.parametrize(("encode_batch", "sizes"), [(4, [4, 2]), (8, [6])])
def test_two_images_times_three_variants_share_encoder_batches(sam, encoder_batches, encode_batch, sizes):
    cfg = PipelineConfig()  # scales (1, 2) + hflip: 3 variants, each one window at these sizes
    assert len(variants(cfg)) == 3
    hws = [(96, 128), (80, 112)]
    images = [_image(i, hw) for i, hw in enumerate(hws)]
    coarse = [_coarse(hw, (20, 30, 60, 90)) for hw in hws]
    refiner = SamRefiner(sam, device="cpu", encode_batch=encode_batch)
    maps, stats = refine_variants_batch(images, coarse, refiner, cfg)
    assert [b.shape[0] for b in encoder_batches] == sizes  # 6 windows, in chunks of encode_batch
    _assert_all_distinct(encoder_batches)
    assert refiner.encoder_passes == 6 and [s.refiner_passes for s in stats] == [3, 3]
    assert [sorted(m) for m in maps] == [sorted(v.name for v in variants(cfg))] * 2


def test_tiled_variant_windows_join_the_same_encoder_batches(sam, encoder_batches):
    cfg = PipelineConfig()
    hw = (600, 700)  # 2x -> 1200 x 1400: tiled into 1024 windows
    n_tiles = len(tiling.tile_grid((1200, 1400), tile=1024, overlap=cfg.tile_overlap))
    assert n_tiles == 4
    refiner = SamRefiner(sam, device="cpu", encode_batch=4)
    _, (stats,) = refine_variants_batch([_image(7, hw)], [_coarse(hw, (100, 100, 400, 500))], refiner, cfg)
    total = n_tiles + 2  # + scale 1 + hflip
    assert [b.shape[0] for b in encoder_batches] == [4, total - 4]
    _assert_all_distinct(encoder_batches)
    assert refiner.encoder_passes == stats.refiner_passes == stats.encoded_windows == total


def test_run_image_runs_one_encode_per_refiner_stage(sam, encoder_batches):
    """Variants (all windows) in one encode call, crops in one more: ceil(n / encode_batch) forwards each."""
    hw = (96, 128)
    refiner = SamRefiner(sam, device="cpu", encode_batch=4)
    coarse = _coarse(hw, (10, 10, 40, 50)) + _coarse(hw, (55, 70, 90, 120))  # two objects
    result = run_image(_image(3, hw), None, refiner, PipelineConfig(), coarse=coarse)
    st = result.stats
    assert st.encoded_windows == 3 and st.crops >= 1
    assert len(encoder_batches) == math.ceil(st.encoded_windows / 4) + math.ceil(st.crops / 4)
    assert sum(b.shape[0] for b in encoder_batches) == refiner.encoder_passes == st.refiner_passes
    _assert_all_distinct(encoder_batches)


def test_prompt_less_windows_are_not_encoded_and_change_nothing(sam, encoder_batches):
    """refine.skip_empty: at 2x a 600 x 700 image is 4 windows; an object in one corner gives prompts to one of
    them only. The other three are not encoded, and every map is bit-identical to encoding them all."""
    import dataclasses

    hw = (600, 700)
    image = _image(3, hw)
    coarse = _coarse(hw, (10, 30, 60, 160))  # top-left only: at 2x (rows 20-120, cols 60-320) in one window
    maps, counts = {}, {}
    for skip in (True, False):
        cfg = PipelineConfig(scales=(2.0,), tta=("identity",))
        cfg = dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, skip_empty=skip))
        refiner = SamRefiner(sam, device="cpu", encode_batch=4)
        before = len(encoder_batches)
        out, stats = refine_variants_batch([image], [coarse], refiner, cfg)
        maps[skip] = out[0]
        counts[skip] = (sum(b.shape[0] for b in encoder_batches[before:]), refiner.encoder_passes, stats[0])
    assert counts[False][:2] == (4, 4) and counts[False][2].encoded_windows == 4 and counts[False][2].empty_windows == 0
    assert counts[True][:2] == (1, 1) and counts[True][2].encoded_windows == 1 and counts[True][2].empty_windows == 3
    assert counts[True][2].refiner_passes == 1 and counts[True][2].components == counts[False][2].components
    assert maps[True].keys() == maps[False].keys()
    for name in maps[True]:
        assert np.array_equal(maps[True][name], maps[False][name]), name
