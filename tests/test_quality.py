"""Each fine-detail stage earns its place: turning it off loses what it exists to recover (proxy models, real pipeline).

Scenes are hand-built so the answer can be counted: a green-noise background (colour key 0) and pure red (255, 0, 0)
structures (key 1). A 48-px red square is the blob ProxySegGPT sees on its 448 canvas (its 16-px patches are 36.6
image px at 1024); lines 1-2 px wide hang from it, too thin for SegGPT and, depending on the stage, for ProxySAM's
4-px decision cells (``finedetail.models.proxy``: a cell is object iff >= 0.34 of it is red).
Images are 256 x 1024 (h, w): long side 1024, so ProxySAM sees them pixel for pixel at 1x and a 2x image
(512 x 2048) is tiled into three 1024-wide windows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from finedetail import pipeline as fp, plan, selective, tiling
from finedetail.config import config_from_dict
from finedetail.execute import run_image
from finedetail.models.proxy import ProxySAM, ProxySegGPT
from finedetail.types import PromptPair

RED = (255, 0, 0)
HW = (256, 1024)
BLOB = (slice(100, 148), slice(100, 148))  # rows 100..147, cols 100..147

# every stage off: one scale, no TTA, no crops, no post-processing; tests switch on what they need
BASE = {
    "scales": [1.0],
    "tta": ["identity"],
    "refine": {"union": True},
    "crop": {"enabled": False},
    "post": {"guided": False, "close_size": 0, "hole_area": 0, "opening": "none", "island_area": 0},
}


def cfg(**change):
    values = json.loads(json.dumps(BASE))
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key].update(value)
        else:
            values[key] = value
    return config_from_dict(values)


def background(hw=HW, seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((*hw, 3), np.uint8)
    img[..., 0] = rng.integers(0, 80, hw)
    img[..., 1] = rng.integers(100, 200, hw)
    img[..., 2] = rng.integers(0, 80, hw)
    return img


def scene(lines):
    """Red blob at BLOB plus red ``lines`` (each a (rows, cols) index pair); -> (image, blob mask, line mask)."""
    img = background()
    blob = np.zeros(HW, bool)
    blob[BLOB] = True
    line = np.zeros(HW, bool)
    for idx in lines:
        line[idx] = True
    line &= ~blob
    img[blob | line] = RED
    return img, blob, line


def seggpt():
    seg = ProxySegGPT()
    seg.set_prompts([PromptPair(image=background((64, 64)), mask=np.ones((64, 64), bool))])
    return seg


def recall(prob, where):
    return float((prob >= 0.5)[where].mean())


def run(image, config, *, coarse=None):
    res = run_image(image, None if coarse is not None else seggpt(), ProxySAM(), config, coarse=coarse)
    return res


# ------------------------------------------------------------------------------------------------ multiscale


class WholeImageSAM:
    """ProxySAM behind a refiner that claims a 4096-px input, so the pipeline never tiles: the 2x image is handed
    whole to the model, which (like SAM's ResizeLongestSide) shrinks it back to 1024 itself."""

    input_size = 4096

    def __init__(self):
        self.sam = ProxySAM()

    @property
    def encoder_passes(self):
        return self.sam.encoder_passes

    def encode(self, images):
        return self.sam.encode(images)

    def refine(self, embedding, prompts):
        return self.sam.refine(embedding, prompts)


@pytest.fixture(scope="module")
def one_px_line():
    """A 1-px horizontal line on an odd row (131: rows 262-263 at 2x, one 4-px cell), attached to the blob and ending
    inside the first 2x window (cols 148..399 -> 296..799 at 2x)."""
    return scene([(131, slice(148, 400))])


def test_2x_tiles_recover_a_1px_line_the_1x_pass_loses(one_px_line):
    image, blob, line = one_px_line
    coarse_views, _ = fp.coarse_views([image], seggpt(), cfg())
    coarse = coarse_views[0]
    # SegGPT sees the blob (one whole patch of it at least), never the line
    assert recall(coarse["identity"][0], blob) > 0.3 and recall(coarse["identity"][0], line) == 0.0
    one, st1 = fp.refine_variants(image, coarse, ProxySAM(), cfg(scales=[1.0]))
    two, st2 = fp.refine_variants(image, coarse, ProxySAM(), cfg(scales=[2.0]))
    # 512 x 2048 in three 1024 windows; the ones without a coarse prompt are not encoded (refine.skip_empty)
    assert st1.encoded_windows == 1 and st2.encoded_windows + st2.empty_windows == 3 and st2.encoded_windows >= 1
    assert recall(one["scale1"][0], line) < 0.05
    assert recall(two["scale2"][0], line) > 0.95
    assert recall(two["scale2"][0], blob) > 0.95
    # the same 2x image handed whole: the model shrinks it back to 1024 and the line is 1 px again
    whole, stw = fp.refine_variants(image, coarse, WholeImageSAM(), cfg(scales=[2.0]))
    assert stw.encoded_windows == 1
    assert recall(whole["scale2"][0], line) < 0.05


def test_multiscale_off_loses_thin_recall(one_px_line):
    image, _, line = one_px_line
    on = run(image, cfg(scales=[1.0, 2.0]))
    off = run(image, cfg(scales=[1.0]))
    assert recall(on.mask[0], line) > 0.95 and recall(off.mask[0], line) < 0.05
    assert on.stats.encoder_passes > off.stats.encoder_passes


# ------------------------------------------------------------------------------------------------ TTA


def test_shift_tta_recovers_a_2px_line_straddling_the_refiner_cells():
    # vertical 2-px line on cols 123-124 hanging from the blob: cells 30 (120..123) and 31 (124..127) each get a
    # quarter of red (< 0.34); circularly shifted by 2 px it sits on cols 125-126, half of cell 31: kept, then
    # shifted back
    image, _, line = scene([(slice(147, 240), slice(123, 125))])
    on = run(image, cfg(tta=["identity", "shift:2,2"]))
    off = run(image, cfg(tta=["identity"]))
    assert recall(off.mask[0], line) < 0.05
    assert recall(on.maps["shift:2,2"][0], line) > 0.95
    assert recall(on.mask[0], line) > 0.95


# ------------------------------------------------------------------------------------------------ crops


def test_crop_recovers_what_only_a_zoom_shows():
    # a short 1-px stub under the blob: lost at 1x, inside the blob's crop window (padding 16 px), 4-px wide and
    # more in the crop (zoom 1024 / 80 capped at 8)
    image, blob, line = scene([(slice(148, 160), 123)])
    on = run(image, cfg(crop={"enabled": True}))
    off = run(image, cfg())
    assert recall(off.mask[0], line) < 0.05
    assert on.stats.crops == 1
    assert recall(on.maps["crop"][0], line) > 0.95
    assert recall(on.mask[0], line) > 0.9  # the ensemble keeps the crop's confident (>= 0.9) pixels: all but the tip
    assert recall(on.mask[0], blob) > 0.95


# ------------------------------------------------------------------------------------------------ union, post


def coarse_with_speck():
    """The blob plus a 3 x 3 coarse-only speck (on background): too small to be prompted (area 9 < min_area 16),
    so only the union with the coarse map keeps it."""
    image, blob, _ = scene([])
    coarse = np.zeros((1, *HW), np.float32)
    coarse[0][BLOB] = 1.0
    speck = np.zeros(HW, bool)
    speck[40:43, 700:703] = True
    coarse[0][speck] = 1.0
    return image, blob, speck, coarse


def test_union_off_drops_coarse_only_pixels():
    image, blob, speck, coarse = coarse_with_speck()
    on = run(image, cfg(refine={"union": True}), coarse=coarse)
    off = run(image, cfg(refine={"union": False}), coarse=coarse)
    assert on.stats.components == 1 and on.stats.dropped_components == 1
    assert recall(on.mask[0], speck) == 1.0 and recall(off.mask[0], speck) == 0.0
    assert recall(on.mask[0], blob) > 0.95 and recall(off.mask[0], blob) > 0.95


def test_post_processing_removes_isolated_specks():
    image, blob, speck, coarse = coarse_with_speck()
    post = {"guided": True, "close_size": 1, "hole_area": 64, "opening": "reconstruction", "island_area": 16}
    on = run(image, cfg(post=post), coarse=coarse)
    off = run(image, cfg(), coarse=coarse)
    assert recall(off.mask[0], speck) == 1.0 and recall(on.mask[0], speck) == 0.0
    assert recall(on.mask[0], blob) > 0.95


# ------------------------------------------------------------------------------------------------ selective


def test_selective_spends_fewer_passes_and_keeps_the_detail():
    # a fringe of 2-px hairs along the blob's right side (1x shows them: the 2x window with the blob runs) and
    # nothing elsewhere (the other 2x windows have no prompt and no detail: skipped); a hflip view (1x and 2x agree)
    hairs = [(slice(r, r + 2), slice(148, 170)) for r in range(101, 146, 6)]
    image, blob, line = scene(hairs)
    full = {"scales": [1.0, 2.0], "tta": ["identity", "hflip"], "crop": {"enabled": True}}
    on = run(image, cfg(**full, selective={"enabled": True}))
    off = run(image, cfg(**full))
    assert on.stats.encoder_passes < off.stats.encoder_passes
    assert "hflip" not in on.maps and "hflip" in off.maps
    assert on.stats.encoded_windows < off.stats.encoded_windows
    assert recall(on.mask[0], line) > 0.95 and recall(off.mask[0], line) > 0.95


# ------------------------------------------------------------------------------------------------ the bench


def test_quality_bench_quick_json(capsys):
    from job.bench import quality

    assert quality.main(["--quick", "--json", "--jobs", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["coarse", "+sam", "+union", "+crop", "+multiscale", "+tta", "+post",
                                         "full", "full+selective"]
    for r in rows:
        for field in ("iou", "boundary_iou", "boundary_f_tol", "mba", "thin_recall"):
            assert 0.0 <= r[field] <= 1.0, (r["name"], field, r[field])
        assert r["encoder_passes"] >= 1.0
    by = {r["name"]: r for r in rows}
    assert by["coarse"]["encoder_passes"] == 1.0
    assert by["full+selective"]["encoder_passes"] < by["full"]["encoder_passes"]


# ------------------------------------------------------------------------------------------------ selective rules


def test_detail_map_marks_thin_parts_not_blob_edges():
    m = np.zeros((40, 60), np.float32)
    m[10:30, 10:30] = 1.0  # 20 x 20 block: no detail, edges included
    m[19:21, 30:50] = 1.0  # 2-px line attached to it: detail
    m[5:11, 40:46] = 1.0  # 6 x 6 square: at most 2 * 3 px wide, detail too
    d = selective.detail_map(m, thin_radius=3)
    assert d.dtype == bool and d.shape == m.shape
    assert d[19:21, 31:50].all() and not d[13:27, 10:30].any() and not d[10:30, 13:27].any()
    assert d[10:30, 10:30].sum() <= 4 * 6  # an opening by a disc only rounds the block's corners off
    assert d[5:11, 40:46].all()
    assert not selective.detail_map(m[None] * 0.4).any()  # below 0.5: no mask, no detail


@pytest.mark.parametrize(("area", "expected"), [(15, False), (16, True)])
def test_has_prompts_edge_is_min_area(area, expected):
    c = np.zeros((1, 20, 20), np.float32)
    c[0].flat[:area] = 1.0  # one row-run of `area` pixels (rows of 20)
    assert selective.has_prompts(c, min_area=16) is expected


def test_cover_windows_skips_a_window_whose_detail_others_own():
    # three windows along x with overlap 4: A [0, 16), M [12, 28), C [24, 40); blend weight >= 1/2 at x <= 13 (A),
    # 14..25 (M), x >= 26 (C)
    wins = tiling.tile_grid((8, 40), tile=16, overlap=4)
    assert [(w.x0, w.x1) for w in wins] == [(0, 16), (12, 28), (24, 40)]
    detail = np.zeros((8, 40), bool)
    detail[:, 2:11] = True
    detail[:, 28:39] = True
    assert selective.cover_windows(detail, wins, min_px=1, overlap=4) == [0, 2]
    detail[:, 20] = True  # M's own detail
    assert selective.cover_windows(detail, wins, min_px=1, overlap=4) == [0, 1, 2]
    assert selective.cover_windows(detail, wins, min_px=9, overlap=4) == [0, 2]  # 8 px < 9
    assert selective.cover_windows(detail, wins, min_px=3, overlap=4, px_scale=4.0) == [0, 2]  # 8 / 4 < 3


def test_skip_variant_rules():
    full = {"scales": [1.0, 2.0], "tta": ["identity", "hflip"]}
    on = cfg(**full, selective={"enabled": True})
    hflip = next(v for v in plan.variants(on) if v.view == "hflip")
    scale1 = next(v for v in plan.variants(on) if v.name == "scale1")
    blob = np.zeros((1, 64, 64), np.float32)
    blob[0, 10:40, 10:40] = 1.0
    hairy = blob.copy()
    hairy[0, 20:22, 40:60] = 1.0
    hairy[0, 30:32, 40:60] = 1.0  # 2 x 40 = 80 detail px >= detail_px 64
    assert not plan.skip_variant(scale1, {}, on)  # identity views always run
    assert not plan.skip_variant(hflip, {"scale1": hairy}, on)  # detailed, nothing to agree with yet
    assert plan.skip_variant(hflip, {"scale1": blob}, on)  # no detail at 1x
    assert plan.skip_variant(hflip, {"scale1": hairy, "scale2": hairy}, on)  # the views agree
    hairier = hairy.copy()
    hairier[0, 40:60, 20:22] = 1.0
    assert plan.skip_variant(hflip, {"scale1": hairy, "scale2": hairier}, on)  # a 2x pass looked closer already
    after = cfg(**full, selective={"enabled": True, "tta_after_multiscale": True, "agree_iou": 0.99})
    assert not plan.skip_variant(hflip, {"scale1": hairy, "scale2": hairier}, after)
    assert not plan.skip_variant(hflip, {"scale1": blob}, cfg(**full))  # selective off: never


def test_untiled_2x_reuses_the_1x_result_without_a_pass():
    # 256 x 512: 2x is 512 x 1024, one refiner window, which the refiner sees exactly like the 1x image
    image = background((256, 512))
    image[100:148, 100:148] = RED
    coarse = np.zeros((1, 256, 512), np.float32)
    coarse[0, 100:148, 100:148] = 1.0
    on = cfg(scales=[1.0, 2.0], selective={"enabled": True})
    sam = ProxySAM()
    one, _ = fp.refine_variants(image, coarse, sam, on, only=["scale1"])
    ref = plan.reference_for(plan.variants(on)[1], one, on)
    assert ref is one["scale1"]
    two, st = fp.refine_variants(image, coarse, sam, on, only=["scale2"], reference=ref)
    assert st.refiner_passes == 0 and st.encoded_windows == 0
    np.testing.assert_array_equal(two["scale2"] >= 0.5, ref >= 0.5)


def test_selective_crop_budget_scales_with_image_area():
    # 24 separate detailed objects (a blob with a 2-px hair each) in a 1024 x 1024 map: 2 crops (one refiner input's
    # worth of area, crops_per_input 2); without selective compute, crop.max_crops (16)
    prob = np.zeros((1024, 1024), np.float32)
    for k in range(24):
        y, x = 60 + 160 * (k // 6), 60 + 160 * (k % 6)
        prob[y:y + 30, x:x + 30] = 1.0
        prob[y + 10:y + 12, x + 30:x + 60] = 0.7  # an uncertain hair: the object needs a crop
    on = cfg(crop={"enabled": True}, selective={"enabled": True})
    off = cfg(crop={"enabled": True})
    assert len(fp._crop_windows(prob, prob.shape, ProxySAM(), on)) == 2
    assert len(fp._crop_windows(prob, prob.shape, ProxySAM(), off)) == 16
    wider = cfg(crop={"enabled": True}, selective={"enabled": True, "crops_per_input": 4.0})
    assert len(fp._crop_windows(prob, prob.shape, ProxySAM(), wider)) == 4


def test_wires_scenes_give_the_coarse_model_poles_to_grow_from():
    # the poles' transformer boxes (3.5-5 % of the short side) fill SegGPT patches: never an empty coarse map
    from finedetail.synthetic import make_scene

    for seed, size in [(0, 512), (1, 1024), (2, 1024)]:
        sc = make_scene("wires", seed=seed, size=(size, size))
        (prob,) = seggpt().predict([sc.image])
        fg = prob[0] >= 0.5
        assert fg.sum() > 0.002 * size * size
        assert (fg & sc.mask).sum() >= 0.5 * fg.sum()  # it lands on the poles
