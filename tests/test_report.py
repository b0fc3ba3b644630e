"""A look at a whole run: the manifest's empty / mean_prob columns, the resolved config saved next to the outputs
(``job.runrecord``), and ``python -m job report`` loaded in a real headless browser (Debian's chromium through
Selenium)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from finedetail.codecs import encode_png
from jobkit import CORRUPT, read_manifest_rows, write_inputs

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict(values)


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    """One proxy run over 4 scenes (coarse masks given: one of them empty, so its mask is empty) and the corrupt
    inputs (error rows); returns (output folder, input keys, the key whose mask is empty, the config)."""
    from job.run import run_job

    root = tmp_path_factory.mktemp("report")
    keys = write_inputs(root / "in", n_good=4)
    good = [k for k in keys if k not in CORRUPT]
    empty_key = good[1]
    for k in good:
        with Image.open(root / "in" / k) as im:
            w, h = im.size
        m = np.zeros((h, w), np.uint8)
        if k != empty_key:
            m[h // 4: h // 2, w // 4: w // 2] = 255
        p = root / "coarse" / (os.path.splitext(k)[0] + ".png")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encode_png(m))
    out = root / "out"
    cfg = _cfg(input=str(root / "in"), coarse=str(root / "coarse"), output=str(out), backend="proxy", scales=[1.0],
               tta=["identity"], crop={"enabled": False}, refine={"enabled": False})
    summary = run_job(cfg, out=io.StringIO())
    assert summary["ok"] == len(good) and summary["errors"] == len(CORRUPT)
    return out, keys, empty_key, cfg


# --------------------------------------------------------------------------------------------- manifest columns


def test_mask_columns_on_literal_maps():
    from job.manifest import mask_columns

    prob = np.array([[[0.9, 0.7, 0.1], [0.2, 0.0, 0.0]]], np.float32)
    mask = prob >= 0.5
    got = mask_columns(prob, mask)
    assert got["mask_area"] == 2 and got["empty"] is False and got["mean_prob"] == pytest.approx(0.8)
    assert got["class_area"] is None and got["class_mean_prob"] is None
    assert mask_columns(prob, np.zeros_like(mask)) == {"mask_area": 0, "empty": True, "mean_prob": None,
                                                       "class_area": None, "class_mean_prob": None}
    two = np.stack([prob[0], 1 - prob[0]])
    labels = np.stack([mask[0], ~mask[0] & (prob[0] < 0.05)])  # class 2 only where class 1's prob is tiny
    got = mask_columns(two, labels)
    assert got["class_area"] == [2, 2] and got["mask_area"] == 4
    assert got["class_mean_prob"] == pytest.approx([0.8, 1.0])
    assert got["mean_prob"] == pytest.approx((0.9 + 0.7 + 2 * 1.0) / 4)
    got = mask_columns(two, np.stack([mask[0], np.zeros_like(mask[0])]))
    assert got["class_area"] == [2, 0] and got["class_mean_prob"][1] is None


def test_manifest_says_which_rows_found_nothing_and_their_mean_prob(run):
    out, keys, empty_key, _ = run
    rows = {r["key"]: r for r in read_manifest_rows(out)}
    assert set(rows) == set(keys)
    for key, r in rows.items():
        if key in CORRUPT:
            assert r["status"] == "error" and r["empty"] is None and r["mean_prob"] is None
            continue
        stem = os.path.splitext(key)[0]
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png")) > 0
        prob = np.asarray(Image.open(out / "probs" / f"{stem}.png")).astype(np.float64) / 255
        assert r["empty"] is (key == empty_key) is (not mask.any()), key
        if r["empty"]:
            assert r["mean_prob"] is None and r["mask_area"] == 0
        else:  # the stored prob map is the fused prob quantised to uint8
            assert r["mean_prob"] == pytest.approx(prob[mask].mean(), abs=1 / 255), key
            assert 0.5 <= r["mean_prob"] <= 1.0


def test_old_manifest_parts_without_the_new_columns_still_read(tmp_path):
    """A part written before ``empty`` / ``mean_prob`` existed: resume and the report read it (nulls there)."""
    from job import io as jio
    from job import manifest as jm

    old = pa.schema([f for f in jm.SCHEMA if f.name not in ("empty", "mean_prob", "class_area", "class_mean_prob")])
    row = {"key": "a.png", "status": "ok", "error": "", "config_hash": "h", "finished_at": 1.0, "mask_area": 3}
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old), tmp_path / "manifest" / "part-old.parquet")
    storage = jio.open_storage(str(tmp_path))[0]
    table = jm.read_manifest(storage)
    assert table.schema == jm.SCHEMA
    assert table.to_pylist()[0]["empty"] is None and jm.done_keys(storage, "h") == {"a.png"}
    # a new part fills ``empty`` from mask_area when the writer (a raster scene's row) did not say
    jm.write_part(storage, [{**row, "key": "b.png", "mask_area": 0, "finished_at": 2.0}])
    got = {r["key"]: r for r in jm.read_manifest(storage).to_pylist()}
    assert got["b.png"]["empty"] is True and got["a.png"]["empty"] is None


# --------------------------------------------------------------------------------------------- the saved config


def test_run_saves_its_resolved_config_next_to_the_outputs(run):
    import yaml

    from finedetail import __version__
    from job.config import job_config_from_dict

    out, _, _, cfg = run
    record = json.loads((out / "run.json").read_text())
    assert record["finedetail_version"] == __version__ and record["config_hash"] == cfg.config_hash
    assert record["command"] and record["run_id"] and record["started_at"].endswith("Z")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == record["config"]
    # resolved: every key, backend defaults applied (the proxy backend's own options are in it)
    assert saved["backend"] == "proxy" and saved["crop"]["enabled"] is False and "post" in saved
    assert saved["backend_options"] == json.loads(json.dumps(dict(cfg.backend_options)))
    again = job_config_from_dict(saved)  # python -m job run --config OUTPUT/config.yaml runs the same job
    assert again.to_dict() == cfg.to_dict() and again.config_hash == cfg.config_hash


def test_saved_config_redacts_credentials(tmp_path, monkeypatch):
    from job import io as jio
    from job.runrecord import write_run_record

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3tvalue42")
    cfg = _cfg(input="s3://bucket/in", output=str(tmp_path / "out"), prompts="https://tok3n@example.com/p",
               backend="proxy", sam_checkpoint="https://example.com/sam.pth?X-Amz-Signature=abcdef123")
    storage = jio.open_storage(str(tmp_path / "out"))[0]
    cfg = dataclasses.replace(cfg, fingerprint="f" * 16)  # the run computes it from the prompts: none to read here
    write_run_record(storage, cfg, "r1", argv=["job", "--set", "x=s3cr3tvalue42"])
    for name in ("run.json", "config.yaml"):
        text = (tmp_path / "out" / name).read_text()
        assert "s3cr3tvalue42" not in text and "tok3n" not in text and "abcdef123" not in text, name
        assert "***" in text


# --------------------------------------------------------------------------------------------- the HTML report


def _browser():
    """A headless Chromium driven by Selenium, or skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install "
                                                                 "-e '.[test]'")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    if not exe or not driver_exe:
        pytest.skip("no chromium + chromedriver on this machine: apt-get install -y chromium chromium-driver "
                    "(.ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_exe), options=opts)


def test_report_opens_in_a_headless_browser_with_every_image_and_row(run, tmp_path):
    out, keys, empty_key, cfg = run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "job", "report", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    page = out / "report.html"
    assert str(page) in done.stdout
    elsewhere = tmp_path / "pages" / "run.html"  # --out: links reach the overlays by a relative path
    done = subprocess.run([sys.executable, "-m", "job", "report", str(out), "--out", str(elsewhere)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    browser = _browser()
    try:
        for path in (page, elsewhere):
            browser.get(path.as_uri())
            images = browser.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
            good = sorted(k for k in keys if k not in CORRUPT)
            assert sorted(alt for alt, _, _ in images) == good, path
            assert all(complete and width > 0 for _, complete, width in images), images
            rows = browser.execute_script(
                "return Array.from(document.querySelectorAll('tr.row')).map(r => [r.dataset.key, r.className]);")
            assert sorted(k for k, _ in rows) == sorted(keys)
            classes = dict(rows)
            assert "empty" in classes[empty_key] and all("error" in classes[k] for k in CORRUPT)
            text = browser.find_element("tag name", "body").text
            assert cfg.config_hash in text and "proxy" in text
            for k in CORRUPT:  # every error is spelled out
                assert k in browser.find_element("css selector", "ul.errors").text
            # each thumbnail links to its full-size overlay, and that link resolves from where the page is
            links = browser.execute_script("return Array.from(document.querySelectorAll('a > img.thumb'))"
                                           ".map(i => i.parentElement.href);")
            assert len(links) == len(good)
            for href in links:
                assert href.startswith("file://") and Path(href[len("file://"):]).is_file(), href
    finally:
        browser.quit()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "job", "report", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not the --output of a run" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_report_of_an_s3_output(run, s3_env, tmp_path):
    """The same page from an s3:// output (read through finedetail.storage): written next to the outputs in the
    bucket by default (thumbnails linked to the overlays there), or to a local file (thumbnails only)."""
    from job.report import write_report

    out, keys, _, _ = run
    bucket = s3_env.make_bucket("reports")
    client = s3_env.client()
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "report.html":
            client.put_object(Bucket=bucket, Key=f"run1/{path.relative_to(out).as_posix()}", Body=path.read_bytes())
    good = [k for k in keys if k not in CORRUPT]
    assert write_report(f"s3://{bucket}/run1") == f"s3://{bucket}/run1/report.html"
    page = client.get_object(Bucket=bucket, Key="run1/report.html")["Body"].read().decode()
    local = tmp_path / "report.html"
    write_report(f"s3://{bucket}/run1", out=str(local))
    for text, links in ((page, len(good)), (local.read_text(), 0)):
        assert text.count('<img class="thumb" src="data:image/jpeg;base64,') == len(good)
        assert text.count('<tr class="row ') == len(keys)
        assert text.count('<a href="overlays/') == links
        assert s3_env.secret_key not in text
