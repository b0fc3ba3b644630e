"""SegGptSegmenter on a tiny random-weight SegGPT (64 x 64 canvas) on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finedetail.decode import canvas_probabilities, pred_to_canvas
from finedetail.models.base import CoarseSegmenter
from finedetail.models.seggpt import SegGptSegmenter, prompt_label_map
from finedetail.models.tiny import build_tiny_seggpt
from finedetail.types import PromptPair

S = 64


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_seggpt(canvas=S, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(96, 160), (50, 70), (200, 40)]]


def pair(seed: int, hw=(80, 100), name="") -> PromptPair:
    rng = np.random.default_rng(seed)
    mask = np.zeros(hw, bool)
    mask[hw[0] // 4 : hw[0] // 2, hw[1] // 3 : hw[1] - 5] = True
    return PromptPair(rng.integers(0, 256, hw + (3,), dtype=np.uint8), mask, name=name)


class CallLog:
    """Records the kwargs of every model forward (a forward pre-hook on the real module)."""

    def __init__(self, model):
        self.kwargs = []
        self._h = model.register_forward_pre_hook(lambda m, a, kw: self.kwargs.append(kw), with_kwargs=True)

    def remove(self):
        self._h.remove()


@pytest.fixture
def calls(tiny):
    log = CallLog(tiny[0])
    yield log
    log.remove()


def make(tiny, **kw) -> SegGptSegmenter:
    return SegGptSegmenter(tiny[0], tiny[1], device="cpu", **kw)


def test_is_a_coarse_segmenter(tiny):
    seg = make(tiny)
    assert isinstance(seg, CoarseSegmenter)
    assert seg.input_size == S and seg.name == "seggpt" and seg.num_classes == 1


def test_predict_before_set_prompts_says_what_to_do(tiny, images):
    with pytest.raises(RuntimeError, match="set_prompts"):
        make(tiny).predict(images[:1])


def test_output_shapes_and_frames(tiny, images):
    seg = make(tiny)
    seg.set_prompts([pair(1)])
    out = seg.predict(images)
    assert [o.shape for o in out] == [(1,) + im.shape[:2] for im in images]
    for o in out:
        assert o.dtype == np.float32 and np.all((o >= 0) & (o <= 1))
    assert seg.predict([]) == []


def test_probabilities_come_from_the_target_half_of_the_canvas(tiny, images, calls):
    """Our decoding agrees with transformers' own arg-min post-processing on the raw prediction."""
    model, processor = tiny
    seg = make(tiny)
    seg.set_prompts([pair(1)])
    raw = []
    hook = model.register_forward_hook(lambda m, a, out: raw.append(out.pred_masks.detach().clone()))
    try:
        seg.predict(images[:1])
    finally:
        hook.remove()
    pred = raw[0]
    ours = canvas_probabilities(pred_to_canvas(pred[0].numpy(), image_mean=processor.image_mean,
                                               image_std=processor.image_std), palette=seg._palette)
    ours_cls = (ours[0] >= 0.5).astype(np.int64)

    class Out:
        pred_masks = pred

    ref = processor.post_process_semantic_segmentation(Out(), num_labels=1)[0].numpy()
    assert ours.shape == (1, S, S) and ref.shape == (S, S)
    assert np.mean(ours_cls == ref) > 0.99  # equal up to exact ties at the 50 % colour


def test_upsampling_is_bilinear_on_probabilities(tiny, images):
    seg = make(tiny)
    seg.set_prompts([pair(1)])
    out = seg.predict([images[0]])[0][0]
    # a nearest-neighbour resize of the 64x64 canvas to 160 px would repeat columns; bilinear makes them differ
    distinct_cols = len({out[:, j].tobytes() for j in range(out.shape[1])})
    assert distinct_cols > 120


def test_single_prompt_batches_targets_without_ensemble(tiny, images, calls):
    seg = make(tiny, batch=2)
    seg.set_prompts([pair(1)])
    seg.predict(images)
    assert [kw["pixel_values"].shape[0] for kw in calls.kwargs] == [2, 1]
    assert all(kw["feature_ensemble"] is False for kw in calls.kwargs)
    assert seg.encoder_passes == 3


def test_two_prompts_use_feature_ensemble_with_the_target_repeated(tiny, images, calls):
    seg = make(tiny, batch=4)
    seg.set_prompts([pair(1), pair(2, hw=(60, 90))])
    out = seg.predict(images[:2])
    assert len(calls.kwargs) == 2  # one forward per target
    for kw in calls.kwargs:
        assert kw["feature_ensemble"] is True
        px = kw["pixel_values"]
        assert px.shape == (2, 3, S, S)
        assert torch.equal(px[0], px[1])  # the same target once per prompt
        assert kw["prompt_pixel_values"].shape == (2, 3, S, S)
        assert not torch.equal(kw["prompt_pixel_values"][0], kw["prompt_pixel_values"][1])
    assert seg.encoder_passes == 4  # 2 targets x 2 prompts: every row is a full forward of the ViT
    assert [o.shape for o in out] == [(1, 96, 160), (1, 50, 70)]


@pytest.mark.parametrize(("n_prompts", "batch"), [(1, 2), (3, 4)])
def test_passes_count_the_rows_the_model_runs_and_the_pipeline_charges_them(tiny, images, calls, n_prompts, batch):
    """Cost accounting counts what runs: each row the model's forward receives is one pass, and coarse_views
    charges each image the rows run for it (P prompts x TTA views); before, P prompts were counted as 1 pass."""
    from finedetail import pipeline as fp
    from finedetail.config import PipelineConfig

    seg = make(tiny, batch=batch)
    seg.set_prompts([pair(s) for s in range(1, n_prompts + 1)])
    cfg = PipelineConfig(tta=("identity", "hflip"))
    _, stats = fp.coarse_views(images, seg, cfg)
    rows_run = sum(kw["pixel_values"].shape[0] for kw in calls.kwargs)
    assert rows_run == len(images) * 2 * n_prompts == seg.encoder_passes
    assert [s.coarse_passes for s in stats] == [2 * n_prompts] * len(images)


def test_prompts_are_preprocessed_once(tiny, images, monkeypatch):
    processor = tiny[1]
    seen = []
    original = processor.preprocess

    def counting(*args, **kwargs):
        seen.append("prompts" if kwargs.get("prompt_images") is not None else "targets")
        return original(*args, **kwargs)

    monkeypatch.setattr(processor, "preprocess", counting)
    seg = make(tiny)
    seg.set_prompts([pair(1), pair(2)])
    for _ in range(3):
        seg.predict(images[:2])
    assert seen == ["prompts"] + ["targets"] * 3


def test_prompt_masks_reach_the_model_in_palette_colours(tiny, calls):
    model, processor = tiny
    seg = make(tiny)
    p = pair(3)
    seg.set_prompts([p])
    seg.predict([p.image])
    masks = calls.kwargs[0]["prompt_masks"][0]  # (3, S, S), normalised
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    rgb = ((masks * std + mean) * 255).round()
    values = {tuple(int(v) for v in rgb[:, i, j]) for i in range(S) for j in range(S)}
    assert values == {(0, 0, 0), (255, 255, 255)}


def test_multiclass_prompts(tiny, images):
    model, processor = tiny
    seg = make(tiny)
    m = np.zeros((80, 100), np.uint8)
    m[:20] = 1
    m[50:] = 2
    seg.set_prompts([PromptPair(pair(1).image, m)], num_classes=2)
    assert seg.num_classes == 2
    assert seg._palette == [tuple(c) for c in processor.get_palette(2)]
    out = seg.predict(images[:1])[0]
    assert out.shape == (2, 96, 160) and np.all(out.sum(0) <= 1 + 1e-5)


@pytest.mark.parametrize(
    ("mask", "num_classes", "err", "match"),
    [
        (np.array([[0, 3]], np.uint8), 2, ValueError, "0..2"),
        (np.array([[0.0, 1.0]]), 1, TypeError, "bool or an integer"),
    ],
)
def test_prompt_label_map_rejects_bad_masks(mask, num_classes, err, match):
    with pytest.raises(err, match=match):
        prompt_label_map(mask, num_classes=num_classes)


def test_prompt_label_map_binary():
    assert prompt_label_map(np.array([[True, False]]), num_classes=1).tolist() == [[1, 0]]


@pytest.mark.parametrize(("kwargs", "match"),
                         [(dict(batch=0), "batch"), (dict(embedding_type="panoptic"), "embedding")])
def test_bad_settings_are_refused(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(tiny, **kwargs)


def test_set_prompts_needs_a_prompt(tiny):
    with pytest.raises(ValueError, match="at least one"):
        make(tiny).set_prompts([])
