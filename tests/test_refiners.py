"""The transformers refiners (``--refiner sam-hq|sam2``): tiny random-weight ``SamHQModel`` / ``Sam2Model`` saved with
``save_pretrained`` and loaded back through ``hf_sam.load_hf_refiner``; prompts checked where the model receives them
(forward hooks on its prompt encoder), one vision-encoder pass serving every component, maps in the image frame, the
checkpoint rules, and a whole job with each of the three refiners through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finedetail.models.weights import ChecksumMismatchError, file_sha256
from finedetail.models.hf_checkpoints import resolve_hf_checkpoint, weights_file
from finedetail.models.hf_sam import Sam2Refiner, SamHQRefiner, load_hf_refiner
from finedetail.models.tiny import build_tiny_hf_refiner, save_tiny_hf_refiner
from finedetail.prompts import mask_to_sam_logits
from finedetail.types import ComponentPrompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = {"sam-hq": SamHQRefiner, "sam2": Sam2Refiner}
HW = (75, 130)  # non-square, odd: SAM-HQ pads rows, SAM 2 stretches both axes differently


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_refiners")
    return {name: save_tiny_hf_refiner(name, root / name, seed=1) for name in CLASSES}


def _refiner(tiny_dirs, name, **kwargs):
    return CLASSES[name].from_checkpoint(tiny_dirs[name], device="cpu", **kwargs)


def _image(hw=HW, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _prompt(hw=HW, *, box=(20, 10, 60, 40), points=((30.5, 20.5), (70.5, 20.5)), labels=(1, 0), logits=True):
    mask = np.zeros(hw, bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return ComponentPrompt(mask=mask, box=np.array(box, np.float64), points=np.array(points, np.float64),
                           labels=np.array(labels, np.int32), logits=mask_to_sam_logits(mask) if logits else None)


class _Capture:
    """Forward hooks (with kwargs) on a module: every call's keyword arguments, and a call count."""

    def __init__(self, module):
        self.calls: list[dict] = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.calls.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_tiny_checkpoint_round_trips_through_the_loader(tiny_dirs, name):
    directory = tiny_dirs[name]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in directory.iterdir()}
    model, processor = load_hf_refiner(name, directory)
    reference, _ = build_tiny_hf_refiner(name, seed=1)
    assert type(model) is type(reference) and type(model).__name__ == {"sam-hq": "SamHQModel", "sam2": "Sam2Model"}[name]
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert not model.training and model.config._attn_implementation == "sdpa"
    assert type(processor).__name__ == {"sam-hq": "SamImageProcessor", "sam2": "Sam2ImageProcessor"}[name]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_prompts_reach_the_prompt_encoder_in_the_models_own_frame(tiny_dirs, name):
    refiner = _refiner(tiny_dirs, name)
    h, w = HW
    if name == "sam-hq":  # LongestSide(75x130, 1024): 1024 wide, int(75 * 1024 / 130 + 0.5) = 591 high, padded
        sx, sy = 1024 / w, 591 / h
    else:  # stretched to 1024 x 1024 (Sam2ImageProcessor's size, no padding)
        sx, sy = 1024 / w, 1024 / h
    prompt = _prompt()
    emb = refiner.encode([_image()])[0]
    cap = _Capture(refiner.model.prompt_encoder)
    try:
        refiner.refine(emb, [prompt, _prompt(points=((25.5, 15.5),), labels=(1,))])
    finally:
        cap.close()
    (call,) = cap.calls
    pts, labels, boxes, masks = (call[k] for k in ("input_points", "input_labels", "input_boxes", "input_masks"))
    assert pts.shape == (2, 1, 2, 2) and labels.shape == (2, 1, 2) and boxes.shape == (2, 1, 4)
    # the prompt encoder adds 0.5 (pixel centres) and divides by 1024: it must receive index coordinates
    expected = np.array([[30.5 * sx, 20.5 * sy], [70.5 * sx, 20.5 * sy]]) - 0.5
    np.testing.assert_allclose(pts[0, 0].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(pts[1, 0, 0].numpy(), [25.5 * sx - 0.5, 15.5 * sy - 0.5], atol=1e-4)
    assert labels[0, 0].tolist() == [1, 0] and labels[1, 0].tolist() == [1, -1]  # padded with "not a point"
    # boxes: inclusive pixel-index corners (continuous max corner minus one input pixel)
    np.testing.assert_allclose(boxes[0, 0].numpy(), [20 * sx, 10 * sy, 60 * sx - 1, 40 * sy - 1], atol=1e-4)
    assert masks.shape == (2, 1, 256, 256)
    m = masks[0, 0].numpy()
    if name == "sam-hq":  # SAM's padded-frame logits, as given
        np.testing.assert_array_equal(m, prompt.logits)
    else:  # rebuilt in the square: rows 10..40 of 75 -> 256 * (10 / 75, 40 / 75) = 34.1 .. 136.5
        assert m[60, 60] == pytest.approx(10.0) and m[200, 60] == pytest.approx(-10.0)
        col = m[:, 100]
        assert (col[37:134] > 9).all() and (col[:31] < -9).all() and (col[140:] < -9).all()
        assert not np.array_equal(m, prompt.logits)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_one_embedding_serves_every_component(tiny_dirs, name):
    refiner = _refiner(tiny_dirs, name, decode_batch=3)
    vision = _Capture(refiner.model.vision_encoder)
    decoder = _Capture(refiner.model.mask_decoder)
    try:
        embs = refiner.encode([_image(seed=1), _image((40, 40), seed=2)])
        assert len(vision.calls) == 1 and refiner.encoder_passes == 2  # both images in one forward
        prompts = [_prompt(box=(5 * i, 5, 5 * i + 8, 20), points=((5 * i + 2.5, 8.5),), labels=(1,)) for i in range(5)]
        prompts.append(_prompt(logits=False))
        out = refiner.refine(embs[0], prompts)
    finally:
        vision.close()
        decoder.close()
    assert len(vision.calls) == 1 and refiner.encoder_passes == 2  # refine never re-encodes
    # 5 with mask input in chunks of 3 (3 + 2), then the one without: 3 decoder calls, 6 rows
    assert [c["sparse_prompt_embeddings"].shape[0] for c in decoder.calls] == [3, 2, 1]
    assert out.shape == (6, *HW) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
    assert refiner.refine(embs[1], []).shape == (0, 40, 40)


@pytest.mark.parametrize("name, positive_cols, negative_from", [("sam-hq", 32, 34), ("sam2", 18, 20)])
def test_maps_come_back_in_the_image_frame(tiny_dirs, name, positive_cols, negative_from):
    """The decoder's low-res logits replaced by a step at low-res column 64 (x = 256 in the model's input): on a tall
    130 x 75 image that is x = 256 * 75 / 591 = 32.5 px in SAM-HQ's padded frame, 256 * 75 / 1024 = 18.75 px in SAM
    2's stretched one."""
    refiner = _refiner(tiny_dirs, name, multimask="iou")
    hw = (130, 75)

    def step(module, args, kwargs, output):
        masks = torch.full_like(output[0], -10.0)
        masks[..., :64] = 10.0
        return (masks, *output[1:])

    handle = refiner.model.mask_decoder.register_forward_hook(step, with_kwargs=True)
    try:
        out = refiner.refine(refiner.encode([_image(hw)])[0], [_prompt(hw, box=(10, 10, 40, 90), logits=False)])
    finally:
        handle.remove()
    assert out.shape == (1, *hw)
    assert (out[0, :, :positive_cols] > 0.5).all() and (out[0, :, negative_from:] < 0.5).all()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_mask_only_and_single_mask_prompts(tiny_dirs, name):
    refiner = _refiner(tiny_dirs, name, use_box=False, use_points=False, multimask="single")
    out = refiner.refine(refiner.encode([_image()])[0], [_prompt()])
    assert out.shape == (1, *HW)
    with pytest.raises(ValueError, match="no prompt"):
        refiner.refine(refiner.encode([_image()])[0], [_prompt(logits=False)])


def test_hq_token_only_keeps_one_candidate(tiny_dirs):
    refiner = _refiner(tiny_dirs, "sam-hq", hq_token_only=True)
    assert refiner.refine(refiner.encode([_image()])[0], [_prompt()]).shape == (1, *HW)


def test_embeddings_of_another_model_are_refused(tiny_dirs):
    a, b = _refiner(tiny_dirs, "sam2"), _refiner(tiny_dirs, "sam2")
    with pytest.raises(RuntimeError, match="encode"):
        b.refine(a.encode([_image()])[0], [_prompt()])


def test_checksum_of_the_weights_file_is_checked_and_the_file_kept(tiny_dirs):
    directory = tiny_dirs["sam2"]
    digest = file_sha256(weights_file(directory))
    assert resolve_hf_checkpoint(directory, sha256=digest) == directory
    with pytest.raises(ChecksumMismatchError, match=digest):
        resolve_hf_checkpoint(directory, sha256="0" * 64)
    assert weights_file(directory).is_file()
    assert resolve_hf_checkpoint(directory, sha256="skip") == directory


def test_s3_prefix_is_mirrored_into_the_cache(s3_env, tiny_dirs, tmp_path):
    bucket = s3_env.make_bucket("ckpt-samhq")
    local = tiny_dirs["sam-hq"]
    for f in local.iterdir():
        s3_env.client().upload_file(str(f), bucket, f"hq/{f.name}")
    model, _ = load_hf_refiner("sam-hq", f"s3://{bucket}/hq", cache_dir=tmp_path / "cache")
    assert type(model).__name__ == "SamHQModel"
    assert (tmp_path / "cache" / "s3" / bucket / "hq" / "model.safetensors").is_file()


def test_offline_hub_id_says_how_to_pre_seed(tmp_path):
    from finedetail.models.weights import CheckpointUnavailableError

    with pytest.raises(CheckpointUnavailableError) as info:
        resolve_hf_checkpoint("finedetail-test/no-such-refiner", cache_dir=tmp_path, offline=True)
    assert "--sam-checkpoint DIR" in str(info.value)
    assert f"hf download finedetail-test/no-such-refiner --cache-dir {tmp_path / 'huggingface'}" in str(info.value)


def test_the_refiner_and_its_weights_are_in_the_resume_hash(tiny_dirs, tmp_path):
    from job.config import job_config_from_dict

    def cfg(**kw):
        return job_config_from_dict({"input": str(tmp_path), "output": str(tmp_path / "o"), "coarse": str(tmp_path),
                                     **kw})

    same_dir = {"sam_checkpoint": str(tiny_dirs["sam2"])}
    hashes = {cfg(refiner="sam-hq", **same_dir).config_hash, cfg(refiner="sam2", **same_dir).config_hash,
              cfg(refiner="sam2", sam_checkpoint=str(tiny_dirs["sam-hq"])).config_hash}
    assert len(hashes) == 3


def test_sam2_takes_no_vit_model_type():
    from job.config import job_config_from_dict

    with pytest.raises(ValueError, match="--sam-checkpoint"):
        job_config_from_dict({"input": "i", "output": "o", "prompts": "p", "refiner": "sam2",
                              "sam_model_type": "vit_b"})
    cfg = job_config_from_dict({"input": "i", "output": "o", "prompts": "p", "refiner": "sam2",
                                "sam_checkpoint": "facebook/sam2.1-hiera-tiny"})
    assert cfg.sam_checkpoint == "facebook/sam2.1-hiera-tiny"  # a Hub id, not made an absolute path


# --------------------------------------------------------------------------------------------------- the job


def test_run_help_offers_the_three_refiners(capsys):
    from job.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--refiner {sam,sam-hq,sam2}" in text


def test_config_reference_lists_the_refiner():
    from job.configdoc import render

    text = render()
    assert "- `refiner` (`str`; default `sam`; one of: sam, sam-hq, sam2;" in text and "flag `--refiner`" in text


@pytest.mark.parametrize("name", ["sam", "sam-hq", "sam2"])
def test_a_tiny_job_runs_with_each_refiner(ray_local, tiny_weights, tiny_dirs, tmp_path, name):
    # no capsys here: run_job's default ``out`` is the sys.stdout of its import, which capsys would close
    from jobkit import check_outputs, read_manifest_rows, write_inputs, write_prompts

    from job.__main__ import main

    keys = write_inputs(tmp_path / "in", n_good=2, corrupt=False)
    write_prompts(tmp_path / "prompts")
    sam = tiny_weights["sam"] if name == "sam" else str(tiny_dirs[name])
    code = main(["run", "--input", str(tmp_path / "in"), "--prompts", str(tmp_path / "prompts"),
                 "--output", str(tmp_path / "out"), "--backend", "seggpt-sam", "--refiner", name,
                 "--sam-checkpoint", sam, "--seggpt-checkpoint", tiny_weights["seggpt"], "--device", "cpu",
                 "--scales", "1", "--tta", "identity", "--no-crop", "--set", "refine.skip_empty=false"])
    assert code == 0
    check_outputs(tmp_path / "out", keys, tmp_path / "in")
    rows = read_manifest_rows(tmp_path / "out")
    assert sorted(r["key"] for r in rows) == keys
    assert all(r["status"] == "ok" and r["refiner_passes"] >= 1 for r in rows)


# ------------------------------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("name", ["sam-hq", "sam2"])
def test_encoder_bench_takes_the_refiner(capsys, name):
    from job.bench import encoder

    assert encoder.main(["--refiner", name, "--arch", "tiny", "--batches", "1", "--repeat", "1", "--device", "cpu",
                         "--no-passes", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["refiner"] == name and [r["mode"] for r in res["results"]] == ["eager", "sdpa"]
    assert res["max_abs_diff_fast_vs_reference"] < 1e-3 and res["parameters"] > 0


def test_throughput_and_real_benches_take_the_refiner(ray_local, capsys):
    from job.bench import real, throughput

    assert throughput.main(["--refiner", "sam2", "--images", "1", "--size", "64", "--scales", "1", "--tta",
                            "identity", "--no-crop", "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["refiner"] == "sam2" and res["ok"] == 1 and res["stages"]["refiner_passes"] >= 1
    with pytest.raises(SystemExit):
        real.main(["--help"])
    assert "--refiner {sam,sam-hq,sam2}" in capsys.readouterr().out
