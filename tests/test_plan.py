"""The plan (``finedetail.plan``), the per-image state (``finedetail.state``) and the executor
(``finedetail.execute``): one plan, run in one process or step by step through bytes, gives the same bytes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from finedetail import synthetic
from finedetail.config import PipelineConfig, config_from_dict
from finedetail.execute import Models, run_image, run_steps
from finedetail.models.proxy import ProxySAM, ProxySegGPT
from finedetail.plan import build_plan
from finedetail.state import ImageState, Stats
from finedetail.types import PromptPair


def _cfg(**values) -> PipelineConfig:
    return config_from_dict(values)


def test_default_plan_steps_inputs_and_groups():
    plan = build_plan(PipelineConfig())  # scales (1, 2) + hflip, crops on
    assert plan.names == ["coarse", "refine-scale1", "refine-scale2", "refine-hflip", "crop", "fuse"]
    assert [s.kind for s in plan.steps] == ["coarse", "refine", "refine", "refine", "crop", "fuse"]
    assert [s.model for s in plan.steps] == ["coarse", "refiner", "refiner", "refiner", "refiner", None]
    assert plan.step("refine-scale2").inputs == ("image", "coarse")
    assert plan.step("crop").inputs == ("image", "scale1", "scale2", "hflip")
    assert plan.step("fuse").inputs == ("image", "scale1", "scale2", "hflip", "crop")
    assert plan.step("fuse").outputs == ("prob", "mask")
    # independent refine steps form one group: one encode call for every window of every variant
    assert [[s.name for s in g] for g in plan.groups()] == [
        ["coarse"], ["refine-scale1", "refine-scale2", "refine-hflip"], ["crop"], ["fuse"]]


def test_selective_plan_chains_the_refine_steps():
    plan = build_plan(_cfg(scales=[0.5, 1.0, 2.0], tta=["identity", "hflip"], selective={"enabled": True}))
    assert plan.step("refine-scale2").inputs == ("image", "coarse", "scale0.5", "scale1")
    assert plan.step("refine-hflip").inputs == ("image", "coarse", "scale0.5", "scale1", "scale2")
    assert all(len(g) == 1 for g in plan.groups())  # each decides from the ones before it


def test_plan_without_coarse_step_refinement_or_crops():
    plan = build_plan(_cfg(refine={"enabled": False}, crop={"enabled": False}), coarse_given=True)
    assert plan.names == ["refine-scale1", "refine-scale2", "refine-hflip", "fuse"]
    assert {s.kind for s in plan.steps[:-1]} == {"copy"} and all(s.model is None for s in plan.steps)
    with pytest.raises(KeyError, match="no step 'crop'"):
        plan.step("crop")


def test_state_bytes_round_trip_is_exact():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    st = ImageState(image=image, skipped=["hflip"], stats=Stats(coarse_passes=2, seconds={"coarse": 0.5}))
    st.put_coarse("identity", np.array([[[0.0, 0.5, 1.0], [0.25, 0.75, 0.1]]], np.float32))
    st.put_map("shift:2,2", np.full((1, 2, 3), 0.3, np.float32))
    st.put_fused(np.full((1, 2, 3), 0.6, np.float32), np.eye(2, 3, dtype=bool)[None])
    back = ImageState.from_bytes(st.to_bytes())
    assert back.coarse["identity"].tolist() == [[[0, 128, 255], [64, 191, 26]]]  # round(p * 255)
    assert back.coarse_map("vflip").dtype == np.float32  # a view the coarse step did not run reads identity
    for name in ("image", "prob", "mask"):
        a, b = getattr(st, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.maps.keys() == st.maps.keys() and np.array_equal(back.maps["shift:2,2"], st.maps["shift:2,2"])
    assert back.skipped == ["hflip"] and back.stats == st.stats
    assert back.to_bytes() == st.to_bytes()


def test_state_refuses_foreign_bytes_and_maps_of_another_frame():
    with pytest.raises(ValueError, match="not an ImageState"):
        ImageState.from_bytes(b"\x93NUMPY...")
    st = ImageState(image=np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\) = the image's \(4, 5\), got \(1, 5, 4\)"):
        st.put_map("scale1", np.zeros((1, 5, 4), np.float32))
    with pytest.raises(RuntimeError, match="run the coarse step first"):
        st.coarse_map()


@pytest.fixture(scope="module")
def scenes():
    return [synthetic.make_scene(kind, seed=i, size=(72 + 8 * i, 96)) for i, kind in enumerate(("fur", "wires"))]


def _models(scenes):
    seg = ProxySegGPT()
    pair = synthetic.make_prompt_pair("fur", seed=500, size=(80, 112))
    seg.set_prompts([PromptPair(image=pair[0], mask=pair[1], name="p0")], num_classes=1)
    return Models(coarse=seg, refiner=ProxySAM())


@pytest.mark.parametrize("values", [
    {},
    {"scales": [0.5, 1.0, 2.0], "tta": ["identity", "hflip", "rot90"], "selective": {"enabled": True}},
    {"refine": {"enabled": False}, "crop": {"enabled": False}},
])
def test_step_by_step_through_bytes_equals_run_image(scenes, values):
    """What the job does (each step on a batch of states, bytes between steps) equals ``run_image`` bit for bit."""
    cfg = _cfg(**values)
    models = _models(scenes)
    states = [ImageState(image=s.image) for s in scenes]
    for step in build_plan(cfg).steps:
        run_steps([step], states, models, cfg)
        states = [ImageState.from_bytes(st.to_bytes()) for st in states]
    for scene, st in zip(scenes, states):
        res = run_image(scene.image, models.coarse, models.refiner, cfg)
        assert np.array_equal(st.prob, res.state.prob) and np.array_equal(st.mask, res.mask)
        assert st.maps.keys() == res.state.maps.keys() and st.skipped == res.state.skipped
        counts = {k: v for k, v in dataclasses.asdict(st.stats).items() if k != "seconds"}
        assert counts == {k: v for k, v in dataclasses.asdict(res.stats).items() if k != "seconds"}


def test_a_failing_step_leaves_its_states_unchanged(scenes):
    cfg = PipelineConfig()
    models = _models(scenes)
    states = [ImageState(image=s.image) for s in scenes]
    run_steps([build_plan(cfg).step("coarse")], states, models, cfg)
    before = [st.to_bytes() for st in states]
    with pytest.raises(RuntimeError, match="needs the refiner model"):
        run_steps([build_plan(cfg).step("crop")], states, Models(coarse=models.coarse), cfg)
    with pytest.raises(RuntimeError, match=r"needs \['scale1', 'scale2', 'hflip', 'crop'\], which no earlier"):
        run_steps([build_plan(cfg).step("fuse")], states, models, cfg)
    assert [st.to_bytes() for st in states] == before
