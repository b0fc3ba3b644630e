"""Domain presets (finedetail.presets): valid keys, a valid JobConfig each, explicit options win, and each runs the
whole method on the generated scenes (proxy models, small sizes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from finedetail import metrics, synthetic
from finedetail.config import (CropConfig, EnsembleConfig, PipelineConfig, RefineConfig, SelectiveConfig,
                               config_from_dict)
from finedetail.postprocess import PostprocessConfig, postprocess
from finedetail.presets import PRESETS, preset_dict

NAMES = sorted(PRESETS)
DOMAIN = {"wildlife": "fur", "satellite": "roads", "medical": "vessels", "technical": "wires"}
SIZE = (96, 128)
BASE = {"input": "in", "output": "out", "prompts": "prompts"}
SECTIONS = {"refine": RefineConfig, "crop": CropConfig, "ensemble": EnsembleConfig, "post": PostprocessConfig,
            "selective": SelectiveConfig}


def _job(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict({**BASE, **values})


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_is_a_cli_choice(name):
    from job.__main__ import build_parser

    assert sorted(DOMAIN) == NAMES
    assert build_parser().parse_args(["run", "--preset", name]).preset == name


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_key_is_a_config_field(name):
    top = {f.name for f in dataclasses.fields(PipelineConfig)}
    for key, value in PRESETS[name].items():
        assert key in top, f"{name}: {key!r} is no PipelineConfig key"
        if key in SECTIONS:
            fields = {f.name for f in dataclasses.fields(SECTIONS[key])}
            assert set(value) <= fields, f"{name}: {sorted(set(value) - fields)} not in {SECTIONS[key].__name__}"


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_builds_a_job_config_with_its_values(name):
    cfg = _job(preset=name)
    p = cfg.pipeline
    assert cfg.preset == name
    assert p.scales == tuple(float(s) for s in PRESETS[name]["scales"])
    assert p.tta == tuple(PRESETS[name]["tta"])
    for section in ("crop", "post", "ensemble"):
        for key, value in PRESETS[name].get(section, {}).items():
            assert getattr(getattr(p, section), key) == value, f"{name}: {section}.{key}"


def test_preset_dict_is_a_copy_and_refuses_unknown_names():
    d = preset_dict("wildlife")
    d["post"]["radius"] = 99
    assert PRESETS["wildlife"]["post"]["radius"] != 99
    with pytest.raises(ValueError, match="unknown preset 'forest'.*satellite"):
        preset_dict("forest")


def test_explicit_options_override_a_preset_key_by_key():
    cfg = _job(preset="satellite", scales=[1.0], post={"radius": 8}, crop={"enabled": True})
    p = cfg.pipeline
    assert p.scales == (1.0,) and p.crop.enabled
    assert p.post.radius == 8
    assert p.post.eps == PRESETS["satellite"]["post"]["eps"]  # the preset's other post keys stay
    assert p.post.opening == "none"
    assert p.tta == tuple(PRESETS["satellite"]["tta"])


def test_command_line_overrides_config_file_overrides_preset(tmp_path):
    from job.__main__ import build_parser, config_from_args

    path = tmp_path / "job.yaml"
    path.write_text("scales: [1, 4]\npost: {eps: 0.05}\nensemble: {rule: union}\n")
    args = build_parser().parse_args(["run", "--config", str(path), "--preset", "technical", "--input", "in",
                                      "--output", "out", "--prompts", "p", "--scales", "1", "--no-crop",
                                      "--set", "post.radius=6"])
    p = config_from_args(args).pipeline
    assert p.scales == (1.0,)  # command line over file
    assert p.post.eps == 0.05 and p.ensemble.rule == "union"  # file over preset
    assert p.post.radius == 6 and not p.crop.enabled
    assert p.tta == tuple(PRESETS["technical"]["tta"])  # preset where nothing else says


def test_unknown_key_in_a_preset_would_be_refused():
    with pytest.raises(ValueError, match=r"unknown config key post\.'radious'"):
        config_from_dict({**PRESETS["medical"], "post": {**PRESETS["medical"]["post"], "radious": 2}})


# ----------------------------------------------------------------------------------------------- behaviour


def _line_and_body():
    """A free-standing 1-px line (row 5) and a 1-px line attached to a 6x6 body (row 20), on a 32x48 image."""
    soft = np.zeros((32, 48), np.float32)
    soft[5, 4:44] = 1.0
    soft[17:23, 4:10] = 1.0
    soft[20, 10:44] = 1.0
    image = np.full((32, 48, 3), 90, np.uint8)
    image[soft > 0] = (220, 40, 40)
    return soft, image


@pytest.mark.parametrize("name", NAMES)
def test_preset_post_keeps_thin_parts_its_domain_has(name):
    soft, image = _line_and_body()
    _, mask = postprocess(soft, image, PostprocessConfig(**PRESETS[name]["post"]))
    assert mask[20, 10:44].all(), "a 1-px part attached to a body is always kept"
    free = mask[5, 4:44].all()
    # wildlife: strands hang on a body, a free-standing 1-px line is debris; roads, vessels, wires stand free
    assert free == (name != "wildlife")


@pytest.fixture(scope="module")
def models():
    from finedetail.models.proxy import ProxySAM, ProxySegGPT
    from finedetail.types import PromptPair

    out = {}
    for kind in synthetic.KINDS:
        for classes in (1, 2):
            image, mask = synthetic.make_prompt_pair(kind, seed=500, size=SIZE, classes=classes)
            seg = ProxySegGPT()
            seg.set_prompts([PromptPair(image=image, mask=mask, name="p")], num_classes=classes)
            out[kind, classes] = seg
    return out, ProxySAM()


@pytest.mark.parametrize("kind", synthetic.KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_preset_runs_end_to_end_on_every_scene(name, kind, models):
    from finedetail.execute import run_image

    segs, sam = models
    scene = synthetic.make_scene(kind, seed=0, size=SIZE)
    res = run_image(scene.image, segs[kind, 1], sam, _job(preset=name).pipeline)
    assert res.prob.shape == (1, *SIZE) and res.prob.dtype == np.float32 and res.mask.dtype == bool
    assert 0.0 <= res.prob.min() and res.prob.max() <= 1.0
    coarse = res.maps["coarse"][0] >= 0.5
    full_thin = metrics.thin_recall(res.mask[0], scene.skeleton)
    coarse_thin = metrics.thin_recall(coarse, scene.skeleton)
    assert full_thin >= coarse_thin, f"{name} on {kind}: thin recall {full_thin:.3f} < coarse {coarse_thin:.3f}"
    assert metrics.iou(res.mask[0], scene.mask) >= metrics.iou(coarse, scene.mask)
    if DOMAIN[name] == kind:  # on its own domain the preset recovers most thin structure the coarse pass lost
        assert full_thin >= 0.9 and full_thin >= coarse_thin + 0.3


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_runs_two_classes(name, models):
    from finedetail.execute import run_image

    segs, sam = models
    scene = synthetic.make_scene("roads", seed=0, size=SIZE, classes=2)
    res = run_image(scene.image, segs["roads", 2], sam, _job(preset=name).pipeline)
    assert res.mask.shape == (2, *SIZE)
    assert res.mask.sum(axis=0).max() <= 1, "a pixel in two classes"
    assert res.mask[0].any() and res.mask[1].any()


def test_backend_defaults_sit_under_preset_yaml_and_cli():
    """seggpt-sam drops the coarse mask as SAM logits by default (evidence in BACKEND_DEFAULTS); anything explicit wins."""
    from job.config import job_config_from_dict

    base = {"input": "in", "output": "out", "prompts": "p"}
    assert job_config_from_dict({**base, "backend": "seggpt-sam"}).pipeline.refine.use_mask_input is False
    assert job_config_from_dict(base).pipeline.refine.use_mask_input is False  # seggpt-sam is the default backend
    assert job_config_from_dict({**base, "backend": "proxy"}).pipeline.refine.use_mask_input is True
    on = job_config_from_dict({**base, "refine": {"use_mask_input": True}})
    assert on.pipeline.refine.use_mask_input is True
    with_preset = job_config_from_dict({**base, "preset": "technical"})
    assert with_preset.pipeline.refine.use_mask_input is False and with_preset.pipeline.post.radius == 2
