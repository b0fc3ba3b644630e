"""The dense-CRF post-processing path (the ``crf`` extra, pydensecrf2) run for real: in ``postprocess`` and in the
job's fuse stage on a local Ray.

Skipped when the extra is not installed, unless ``FINEDETAIL_REQUIRE_CRF=1`` (set by ``.ci/run``, which installs the
extra because the Docker image ships it): then a missing extra fails instead of passing silently.
"""

from __future__ import annotations

import importlib
import io
import os

import cv2
import numpy as np
import pytest

from jobkit import read_manifest_rows, write_inputs, write_prompts


@pytest.fixture(scope="module")
def crf():
    try:  # by name: an optional extra, which the packaging test does not count as a test requirement
        dcrf = importlib.import_module("pydensecrf.densecrf")
    except ImportError:
        if os.environ.get("FINEDETAIL_REQUIRE_CRF") == "1":
            pytest.fail("FINEDETAIL_REQUIRE_CRF=1 but pydensecrf is not importable: pip install 'finedetail[crf]'")
        pytest.skip("the crf extra is not installed (pip install 'finedetail[crf]')")
    return dcrf


def test_postprocess_with_crf_sharpens_a_blurred_map_along_the_image(crf):
    from finedetail.postprocess import PostprocessConfig, postprocess

    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(40, 200, (9, 13, 3), dtype=np.uint8), (104, 72), interpolation=cv2.INTER_CUBIC)
    truth = np.zeros((72, 104), bool)
    truth[20:52, 30:70] = True
    image[truth] = (220, 30, 30)
    soft = np.clip(cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 4.0), 0.05, 0.95).astype(np.float32)
    plain_prob, _ = postprocess(soft, image, PostprocessConfig(guided=False))
    prob, mask = postprocess(soft, image, PostprocessConfig(guided=False, crf=True, crf_iters=5))
    assert prob.dtype == np.float32 and prob.shape == soft.shape
    # the CRF ran: its marginals follow the red square's edges, not the blur
    edge = np.abs(plain_prob - 0.5) < 0.4
    assert np.abs(prob[edge] - truth[edge]).mean() < 0.5 * np.abs(plain_prob[edge] - truth[edge]).mean()
    assert (mask == truth).mean() > 0.98


def test_job_fuse_stage_runs_the_crf(crf, ray_local, tmp_path):
    """``post.crf: true`` through the whole job: every good input ends ``ok`` (a missing or broken pydensecrf in the
    fuse actors would turn every row into an error row) and its probabilities differ from the same job without it."""
    from job.config import job_config_from_dict
    from job.run import run_job

    keys = write_inputs(tmp_path / "in", n_good=2, corrupt=False)
    write_prompts(tmp_path / "prompts")
    probs = {}
    for on in (False, True):
        out = tmp_path / f"out-{on}"
        cfg = job_config_from_dict(dict(input=str(tmp_path / "in"), prompts=str(tmp_path / "prompts"),
                                        output=str(out), backend="proxy", scales=[1.0], tta=["identity"],
                                        crop={"enabled": False}, post={"crf": on}))
        summary = run_job(cfg, out=io.StringIO())
        rows = read_manifest_rows(out)
        assert summary["ok"] == len(keys), [r["error"] for r in rows]
        probs[on] = {k: (out / "probs" / (os.path.splitext(k)[0] + ".png")).read_bytes() for k in keys}
    assert all(probs[True][k] != probs[False][k] for k in keys)
