"""SamRefiner on a tiny random-weight SAM (real 1024 frames) on CPU.

What the model receives is checked with hooks on SAM's own modules, not through the wrapper's bookkeeping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from finedetail.models.base import PromptedRefiner
from finedetail.models.sam import (
    SamRefiner,
    coarse_low_res,
    pad_points,
    select_multimask,
    to_sam_boxes,
    to_sam_points,
)
from finedetail.models.tiny import build_tiny_sam
from finedetail.frames import LongestSide
from finedetail.types import ComponentPrompt

H, W = 96, 160  # non-square: ResizeLongestSide -> (614, 1024)
SX, SY = 1024 / 160, 614 / 96


@pytest.fixture(scope="module")
def sam():
    return build_tiny_sam(seed=0)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def refiner(sam):
    return SamRefiner(sam, device="cpu")


@pytest.fixture(scope="module")
def embedding(refiner, image):
    return refiner.encode([image])[0]


def rect_mask(y0, x0, y1, x1, hw=(H, W)):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def make_prompts(*, logits=True):
    lg = np.full((256, 256), -20.0, np.float32)
    lg[10:40, 30:80] = 20.0
    a = ComponentPrompt(
        mask=rect_mask(10, 20, 30, 60),
        box=np.array([20.0, 10.0, 60.0, 30.0]),
        points=np.array([[10.5, 20.5], [100.25, 50.75]]),
        labels=np.array([1, 0], np.int32),
        logits=lg if logits else None,
    )
    b = ComponentPrompt(
        mask=rect_mask(0, 0, 1, 1),
        box=np.array([0.0, 0.0, 1.0, 1.0]),
        points=np.array([[0.5, 0.5]]),
        labels=np.array([1], np.int32),
        logits=-lg if logits else None,
    )
    return [a, b]


class Recorder:
    """Forward (pre-)hooks on a module: the kwargs/args it was called with and what it returned."""

    def __init__(self, module):
        self.calls, self.outputs = [], []
        self._h = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True),
            module.register_forward_hook(lambda m, a, out: self.outputs.append(out)),
        ]

    def _pre(self, module, args, kwargs):
        self.calls.append((args, kwargs))

    def remove(self):
        for h in self._h:
            h.remove()


@pytest.fixture
def record(sam):
    made = []

    def attach(name):
        r = Recorder(getattr(sam, name))
        made.append(r)
        return r

    yield attach
    for r in made:
        r.remove()


def test_is_a_prompted_refiner(refiner):
    assert isinstance(refiner, PromptedRefiner)
    assert refiner.input_size == 1024 and refiner.name == "sam"


def test_embedding_frames_for_a_non_square_image(embedding):
    assert embedding.hw == (H, W)
    assert embedding.input_hw == (614, 1024)
    assert tuple(embedding.features.shape) == (1, 32, 64, 64)
    assert embedding.features.dtype == torch.float32


def test_encode_matches_sam_predictor_exactly(sam, refiner, image):
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    ours = refiner.encode([image])[0]
    assert predictor.input_size == ours.input_hw and predictor.original_size == ours.hw
    assert torch.equal(predictor.features, ours.features)


def test_refine_output_shape_dtype_range(refiner, embedding):
    out = refiner.refine(embedding, make_prompts())
    assert out.shape == (2, H, W) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))


def test_prompt_encoder_receives_exactly_the_transformed_points_boxes_and_masks(refiner, embedding, record):
    rec = record("prompt_encoder")
    prompts = make_prompts()
    refiner.refine(embedding, prompts)
    assert len(rec.calls) == 1
    kw = rec.calls[0][1]
    coords, labels = kw["points"]
    # our continuous point p lands at p * scale in the input frame; SAM adds 0.5 itself, so it must get p*scale - 0.5
    expected_coords = np.array(
        [
            [[10.5 * SX - 0.5, 20.5 * SY - 0.5], [100.25 * SX - 0.5, 50.75 * SY - 0.5]],
            [[0.5 * SX - 0.5, 0.5 * SY - 0.5], [0.0, 0.0]],  # padded row
        ]
    )
    np.testing.assert_allclose(coords.numpy(), expected_coords, rtol=0, atol=1e-4)
    assert labels.tolist() == [[1, 0], [1, -1]]
    # boxes: continuous (outer edges) * scale, then inclusive pixel-index max corner (-1), clamped to the min corner
    expected_boxes = np.array([[20 * SX, 10 * SY, 60 * SX - 1, 30 * SY - 1], [0, 0, SX - 1, SY - 1]])
    np.testing.assert_allclose(kw["boxes"].numpy(), expected_boxes, rtol=0, atol=1e-4)
    masks = kw["masks"].numpy()
    assert masks.shape == (2, 1, 256, 256)
    np.testing.assert_array_equal(masks[:, 0], np.stack([p.logits for p in prompts]))


def test_disabled_prompt_parts_do_not_reach_sam(sam, embedding, record):
    rec = record("prompt_encoder")
    boxes_only = SamRefiner(sam, device="cpu", use_points=False, use_mask_input=False)
    boxes_only.refine(embedding, make_prompts())  # same Sam module: its embeddings are shared
    kw = rec.calls[-1][1]
    assert kw["points"] is None and kw["masks"] is None and kw["boxes"].shape == (2, 4)


def test_image_is_encoded_once_whatever_the_number_of_components(sam, image, record):
    enc = record("image_encoder")
    dec = record("mask_decoder")
    r = SamRefiner(sam, device="cpu")
    emb = r.encode([image])[0]
    many = make_prompts() * 3
    assert r.refine(emb, many).shape == (6, H, W)
    assert r.refine(emb, many[:1]).shape == (1, H, W)
    assert len(enc.calls) == 1 and r.encoder_passes == 1
    # one batched decoder call per refine: the whole image's components in one batch
    assert [c[1]["sparse_prompt_embeddings"].shape[0] for c in dec.calls] == [6, 1]


def test_decode_batch_chunks_decoder_calls(sam, embedding, record):
    dec = record("mask_decoder")
    r = SamRefiner(sam, device="cpu", decode_batch=4)
    r.refine(embedding, make_prompts() * 5)
    assert [c[1]["sparse_prompt_embeddings"].shape[0] for c in dec.calls] == [4, 4, 2]


@pytest.mark.parametrize(("n_images", "batches"), [(4, [4]), (5, [4, 1]), (1, [1])])
def test_encode_batching(sam, record, n_images, batches):
    enc = record("image_encoder")
    r = SamRefiner(sam, device="cpu", encode_batch=4)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (H + 8 * i, W, 3), dtype=np.uint8) for i in range(n_images)]
    embs = r.encode(images)
    assert [c[0][0].shape[0] for c in enc.calls] == batches
    assert r.encoder_passes == n_images
    assert [e.hw for e in embs] == [im.shape[:2] for im in images]


def test_batched_encode_equals_single_encode(sam):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)]
    batched = SamRefiner(sam, device="cpu", encode_batch=2).encode(images)
    alone = SamRefiner(sam, device="cpu").encode(images[1:])[0]  # the second image, batched with nothing
    torch.testing.assert_close(batched[1].features, alone.features, rtol=1e-4, atol=1e-5)


def _expected_from_decoder(sam, output, choice, emb):
    low_res = output[0]
    chosen = low_res[torch.arange(low_res.shape[0]), torch.as_tensor(choice)][:, None]
    return torch.sigmoid(sam.postprocess_masks(chosen, emb.input_hw, emb.hw)[:, 0]).numpy()


@pytest.mark.parametrize("mode", ["iou", "coarse"])
def test_multimask_choice_through_the_refiner(sam, embedding, record, mode):
    dec = record("mask_decoder")
    r = SamRefiner(sam, device="cpu", multimask=mode)
    emb = embedding
    prompts = make_prompts()
    out = r.refine(emb, prompts)
    assert dec.calls[0][1]["multimask_output"] is True
    low_res, iou = (t.numpy() for t in dec.outputs[0])
    assert low_res.shape == (2, 3, 256, 256)
    if mode == "iou":
        choice = iou.argmax(1)
    else:
        coarse = np.stack([coarse_low_res(p.mask, emb.frame) for p in prompts])
        pred = low_res > 0
        overlap = [[(pred[i, k] & coarse[i]).sum() / max(1, (pred[i, k] | coarse[i]).sum()) for k in range(3)]
                   for i in range(2)]
        choice = [int(np.argmax(np.where(np.isclose(o, max(o)), iou[i], -np.inf))) for i, o in enumerate(overlap)]
    np.testing.assert_allclose(out, _expected_from_decoder(sam, dec.outputs[0], choice, emb), atol=1e-6)


def test_single_mode_asks_for_one_mask(sam, embedding, record):
    dec = record("mask_decoder")
    r = SamRefiner(sam, device="cpu", multimask="single")
    emb = embedding
    out = r.refine(emb, make_prompts())
    assert dec.calls[0][1]["multimask_output"] is False
    assert dec.outputs[0][0].shape == (2, 1, 256, 256)
    np.testing.assert_allclose(out, _expected_from_decoder(sam, dec.outputs[0], [0, 0], emb), atol=1e-6)


def test_components_without_logits_go_in_their_own_call(refiner, embedding, record):
    rec = record("prompt_encoder")
    with_l, without = make_prompts(), make_prompts(logits=False)
    out = refiner.refine(embedding, [with_l[0], without[0], with_l[1]])
    assert out.shape == (3, H, W)
    assert [c[1]["masks"] is None for c in rec.calls] == [False, True]
    assert rec.calls[0][1]["masks"].shape[0] == 2
    # order is kept: output i belongs to prompt i
    np.testing.assert_array_equal(out[1], refiner.refine(embedding, [without[0]])[0])


def test_zero_prompts_returns_empty_without_the_model(refiner, embedding, record):
    dec = record("mask_decoder")
    pe = record("prompt_encoder")
    out = refiner.refine(embedding, [])
    assert out.shape == (0, H, W) and out.dtype == np.float32
    assert dec.calls == [] and pe.calls == []


def test_foreign_embeddings_are_refused(sam, refiner, embedding):
    other = SamRefiner(build_tiny_sam(seed=1), device="cpu")
    with pytest.raises(RuntimeError, match=r"another SAM model.*encode\(\[image\]\)"):
        other.refine(embedding, make_prompts())
    with pytest.raises(RuntimeError, match="got Tensor"):
        refiner.refine(embedding.features, make_prompts())


def test_prompt_frame_mismatch_is_refused(refiner, embedding):
    bad = ComponentPrompt(mask=np.ones((10, 10), bool), box=np.array([0.0, 0, 10, 10]))
    with pytest.raises(ValueError, match="frame of the image"):
        refiner.refine(embedding, [bad])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(multimask="best"), "multimask"),
        (dict(encode_batch=0), "batch"),
        (dict(use_box=False, use_points=False, use_mask_input=False), "at least one"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_bad_settings_are_refused(sam, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamRefiner(sam, device="cpu", **kwargs)


def test_default_device_and_dtype(sam):
    r = SamRefiner(sam)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert r.device.type == expected
    assert r.dtype == (torch.bfloat16 if expected == "cuda" else torch.float32)


# ---------------------------------------------------------------- pure helpers, literal arrays


def test_to_sam_points_literal():
    got = to_sam_points(np.array([[0.5, 0.5], [10.0, 4.0]]), LongestSide((8, 20), 1024))
    np.testing.assert_allclose(got, [[0.5 * 51.2 - 0.5, 0.5 * 51.25 - 0.5], [511.5, 204.5]])


def test_to_sam_boxes_clamps_degenerate_boxes():
    # at scale 0.5 a 1-px wide box is half an input pixel wide: the max corner may not pass the min corner
    got = to_sam_boxes(np.array([[4.0, 2.0, 5.0, 10.0]]), LongestSide((2048, 2048), 1024))
    np.testing.assert_allclose(got, [[2.0, 1.0, 2.0, 4.0]])


def test_pad_points_uses_label_minus_one():
    coords, labels = pad_points([np.array([[1.0, 2.0]]), np.zeros((0, 2)), np.array([[3.0, 4.0], [5.0, 6.0]])],
                                [np.array([1]), np.zeros(0, int), np.array([0, 1])])
    assert coords.shape == (3, 2, 2)
    assert labels.tolist() == [[1, -1], [-1, -1], [0, 1]]
    np.testing.assert_array_equal(coords[0], [[1, 2], [0, 0]])


def test_select_multimask_modes_on_literal_candidates():
    logits = -np.ones((2, 3, 2, 2))
    logits[0, 0, 0, 0] = 1.0  # candidate 0 = top-left pixel
    logits[0, 1] = 1.0  # candidate 1 = everything
    logits[1, 2, :, 0] = 1.0  # candidate 2 = left column
    iou = np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    coarse = np.array([[[True, False], [False, False]], [[True, False], [True, False]]])
    assert select_multimask(logits, iou, mode="iou").tolist() == [1, 0]
    assert select_multimask(logits, iou, mode="coarse", coarse=coarse).tolist() == [0, 2]
    assert select_multimask(logits, iou, mode="single").tolist() == [0, 0]
    # all candidates tie on overlap -> the predicted IoU decides
    assert select_multimask(-np.ones((1, 3, 2, 2)), np.array([[0.1, 0.3, 0.2]]), mode="coarse",
                            coarse=coarse[:1]).tolist() == [1]


def test_coarse_low_res_frame():
    # the right half of a 96x160 image -> input frame cols 512..1024, rows 0..614 -> low-res cols 128..256, rows ..153
    low = coarse_low_res(rect_mask(0, 80, 96, 160), LongestSide((96, 160), 1024))
    assert low.shape == (256, 256)
    assert low[:150, 130:].all() and not low[:, :126].any() and not low[156:].any()


@pytest.mark.parametrize("hw", [(96, 160), (8, 20), (301, 517), (1301, 611), (1024, 1024), (3, 2000)])
def test_frame_size_is_segment_anythings(hw):
    from segment_anything.utils.transforms import ResizeLongestSide

    assert LongestSide(hw, 1024).size == ResizeLongestSide.get_preprocess_shape(*hw, 1024)
