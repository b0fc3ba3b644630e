"""Reliability and security of the job: bad inputs, bad prompts and config, storage faults, worker crashes, driver
restarts, hostile names and credentials, load.

Every claim is shown through the real job (``job.run.run_job`` on the session's local Ray, or ``python -m job run``
in a subprocess with its own Ray where the test needs a fresh cluster: S3 credentials in the workers' environment,
a driver to kill). Each job run costs ~15 s of fixed Ray overhead on 2 cores, so one run checks many inputs at once:
module fixtures run a job once and several tests read its result.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finedetail import synthetic
from finedetail.codecs import decode_image, decode_mask, encode_png
from job import io as jio
from conftest import die_with_parent
from faults import crash_tag
from jobkit import read_manifest_rows, write_prompts

ROOT = Path(__file__).resolve().parents[1]
SIZE = (80, 112)  # (h, w) of the generated scenes
#: the cheapest real pipeline: colour-keyed proxy models, one scale, no TTA, no crop refinement
MINIMAL = {"backend": "proxy", "scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}}


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict(values)


def _png(image: np.ndarray) -> bytes:
    return encode_png(image)


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h RGB pixels, followed by a few bytes of pixel data: a decompression bomb's
    shape (decoding it for real would have to allocate w * h * 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _scene(seed: int, size=SIZE):
    return synthetic.make_scene(synthetic.KINDS[seed % len(synthetic.KINDS)], seed=seed, size=size)


def _mask(out: Path, key: str) -> np.ndarray:
    return decode_mask((out / "masks" / (os.path.splitext(key)[0] + ".png")).read_bytes())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _snapshot(root: Path, *, skip: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file and link under root, except under `skip`."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for n in names + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


# =====================================================================================================================
# Bad inputs and hostile names: ONE job run over all of them (module fixture), several tests read its result.
# =====================================================================================================================

#: key -> what the manifest's error must say
BAD = {
    "bad/truncated.jpg": "truncated",
    "bad/empty.png": "empty input (0 bytes)",
    "bad/not-an-image.jpg": "not a recognised image format",
    "bad/bomb-100000x100000.png": "decompression bomb",
    "bad/over-max-pixels.png": "more than max_pixels=1000000",
}
#: inputs that are odd but valid: key -> (h, w) of the displayed image (= of every output)
ODD = {
    "odd/gray16.png": SIZE,
    "odd/gray.png": SIZE,
    "odd/rgba.png": SIZE,
    "odd/cmyk.jpg": SIZE,
    "odd/exif-rotated.jpg": SIZE,  # stored 112 x 80 (portrait), displayed 80 x 112 after EXIF orientation 6
    "odd/one-pixel.png": (1, 1),
    "odd/tiny.png": (5, 7),
    "odd/strip.png": (6, 700),  # at scale 2 it is 1400 wide: tiled, and far smaller than a tile the other way
    "odd/black.png": (64, 64),
}
GOOD = {"good/scene0.png": SIZE, "good/scene1.jpg": SIZE, "good/sub/scene2.png": SIZE}
#: hostile local names: raw name -> written as; all must be refused (error row, nothing read or written)
HOSTILE = ["names/new\nline.png", "names/back\\slash.png", "names/\u202egnp.png", "names/bidi\u200f.png"]
HOSTILE_BYTES = [b"names/not-utf8-\xff\xfe.png"]
#: odd but safe names: processed normally, outputs inside --output
SAFE_ODD = {"names/ spaced  name .png": SIZE, "names/ünï©ødé.png": SIZE, "names/a..b.png": SIZE}
#: hidden files are not inputs (job.io.list_files skips them by design: macOS "._x.jpg" shadows, editors' temp files)
HIDDEN = ["names/..png", "names/._scene0.png"]
MAX_PIXELS = 1_000_000
#: inputs that kill their worker (tests/faults.py): key -> (stage, times; -1 = every time)
CRASH = {"crash/a-once.png": ("refine", 1), "crash/b-always.png": ("refine", -1), "crash/c-ok.png": None,
         "crash/d-ok.png": None, "crash/e-decoder.png": ("decode", -1)}
MAX_TRIES = 2
#: keys an input listing could claim (an S3 key may be almost any string): each aims outside --output
CRAFTED = ["../escape.png", "/abs/escape.png", "sub/../../escape.png", "C:/escape.png", "sub/./../../x.png",
           "a/" + "../" * 5 + "etc/escape.png"]


def _write_bad_inputs(sandbox: Path) -> Path:
    """sandbox/in (inputs), sandbox/outside (what symlinks point at); outputs will go to sandbox/a/b/out."""
    src, outside = sandbox / "in", sandbox / "outside"
    files: dict[str, bytes] = {}
    s0 = _scene(0)
    files["good/scene0.png"] = _png(s0.image)
    files["good/scene1.jpg"] = _save(Image.fromarray(_scene(1).image), "JPEG", quality=95)
    files["good/sub/scene2.png"] = _png(_scene(2).image)
    files["bad/truncated.jpg"] = files["good/scene1.jpg"][: len(files["good/scene1.jpg"]) // 2]
    files["bad/empty.png"] = b""
    files["bad/not-an-image.jpg"] = b"<html><body>403 Forbidden</body></html>\n"
    files["bad/bomb-100000x100000.png"] = _png_header_only(100_000, 100_000)
    files["bad/over-max-pixels.png"] = _png_header_only(1001, 1000)  # 1_001_000 > MAX_PIXELS, far below Pillow's
    grey = np.asarray(Image.fromarray(s0.image).convert("L"))
    files["odd/gray16.png"] = _save(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    files["odd/gray.png"] = _save(Image.fromarray(grey), "PNG")
    alpha = np.full(SIZE, 255, np.uint8)
    alpha[:, : SIZE[1] // 2] = 40  # half transparent: decoding drops alpha, keeps the stored colour
    files["odd/rgba.png"] = _save(Image.fromarray(np.dstack([s0.image, alpha])), "PNG")
    files["odd/cmyk.jpg"] = _save(Image.fromarray(s0.image).convert("CMYK"), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored = np.ascontiguousarray(np.rot90(s0.image, 1))  # what a camera held sideways stores
    files["odd/exif-rotated.jpg"] = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    files["odd/one-pixel.png"] = _png(np.full((1, 1, 3), synthetic.OBJECT_COLOR["fur"], np.uint8))
    files["odd/tiny.png"] = _png(np.ascontiguousarray(_scene(4, size=(32, 32)).image[10:15, 10:17]))
    files["odd/strip.png"] = _png(np.ascontiguousarray(_scene(5, size=(32, 700)).image[13:19]))
    files["odd/black.png"] = _png(np.zeros((64, 64, 3), np.uint8))
    for name in HOSTILE + list(SAFE_ODD) + HIDDEN:
        files[name] = _png(s0.image)
    for i, key in enumerate(CRASH):
        files[key] = _png(_scene(10 + i).image)
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for raw in HOSTILE_BYTES:
        with open(os.fsencode(src) + b"/" + raw, "wb") as f:
            f.write(files["good/scene0.png"])
    # symlinks (followed only inside the input root): a file outside the root (not read: an error row saying why),
    # a file inside it (read like any input), a folder outside (not followed: its files are not inputs), a dangling
    # link (an error row)
    outside.mkdir()
    (outside / "scene.png").write_bytes(_png(_scene(3).image))
    (outside / "not-an-input.png").write_bytes(_png(_scene(6).image))
    (src / "links").mkdir()
    os.symlink(outside / "scene.png", src / "links/outside.png")
    os.symlink("../good/scene0.png", src / "links/inside.png")
    os.symlink(outside, src / "links/dir")
    os.symlink(outside / "missing.png", src / "links/dangling.png")
    # sanity of the generated files themselves
    assert decode_image(files["odd/exif-rotated.jpg"]).shape == (*SIZE, 3)
    return src


@pytest.fixture(scope="module")
def bad_run(ray_local, faults, tmp_path_factory):
    """One job over good, bad, odd, hostile and worker-killing inputs; the session's Ray; scales 1 and 2 (the
    strip is tiled at 2x); max_pixels and max_tries small."""
    from job.run import run_job

    sandbox = tmp_path_factory.mktemp("sandbox")
    src = _write_bad_inputs(sandbox)
    write_prompts(sandbox / "prompts")
    out = sandbox / "a" / "b" / "out"  # nested: a key escaping upwards would land in a/b or a, inside the sandbox
    crashes = tmp_path_factory.mktemp("crashes")
    before = _snapshot(sandbox, skip=out)
    cfg = _cfg(input=str(src), prompts=str(sandbox / "prompts"), output=str(out), max_pixels=MAX_PIXELS,
               max_tries=MAX_TRIES, **{**MINIMAL, "scales": [1.0, 2.0]})
    buf = io.StringIO()
    import job.listing

    real_walk = job.listing._walk_local

    def crafted_walk(root, *rest):  # a listing no real folder can produce (S3 servers may, SeaweedFS refuses them)
        keys = list(real_walk(root, *rest))
        yield from sorted(keys + CRAFTED) if os.path.realpath(root) == os.path.realpath(src) else keys

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job.listing, "_walk_local", crafted_walk)
        with faults.inject(crash=[{"key": k, "stage": v[0], "times": v[1]} for k, v in CRASH.items() if v],
                           crash_dir=crashes):
            summary = run_job(cfg, out=buf)
    return {"sandbox": sandbox, "src": src, "out": out, "summary": summary, "log": buf.getvalue(),
            "rows": read_manifest_rows(out), "before": before, "crashes": sorted(os.listdir(crashes))}


def test_bad_inputs_become_error_rows_with_clear_messages(bad_run):
    rows = {r["key"]: r for r in bad_run["rows"]}
    for key, words in BAD.items():
        r = rows[key]
        assert r["status"] == "error" and words in r["error"], (key, r["error"])
        assert not (bad_run["out"] / "masks" / (os.path.splitext(key)[0] + ".png")).exists()
    # the size guard runs on the header, before any pixel is decoded: these files have no pixel data at all, so
    # a decoder that got as far as the pixels would have said "truncated" instead
    assert "refused before decoding" in rows["bad/over-max-pixels.png"]["error"]
    assert "1001x1000" in rows["bad/over-max-pixels.png"]["error"]
    assert "truncated" not in rows["bad/bomb-100000x100000.png"]["error"]
    for link in ("links/dangling.png", "links/outside.png"):  # both lead outside the input root
        assert rows[link]["status"] == "error" and "outside the root" in rows[link]["error"], rows[link]
        assert not (bad_run["out"] / "masks" / (os.path.splitext(link)[0] + ".png")).exists()
    # the run printed each error with its key
    assert "error bad/empty.png: ImageDecodeError: image: empty input" in bad_run["log"]


def test_odd_but_valid_inputs_succeed_in_the_displayed_orientation(bad_run):
    out, rows = bad_run["out"], {r["key"]: r for r in bad_run["rows"]}
    for key, (h, w) in {**GOOD, **ODD, **SAFE_ODD, "links/inside.png": SIZE}.items():
        r = rows[key]
        assert r["status"] == "ok" and r["error"] == "", (key, r["error"])
        assert (r["height"], r["width"]) == (h, w), key
        assert _mask(out, key).shape == (h, w), key
        assert Image.open(out / "probs" / (os.path.splitext(key)[0] + ".png")).size == (w, h), key
    truth = _scene(0).mask
    reference = _mask(out, "good/scene0.png")
    assert _iou(reference, truth) > 0.5  # the proxy does find the object in the plain PNG
    # alpha is dropped and the colour kept: the RGBA file segments exactly like its RGB original
    np.testing.assert_array_equal(_mask(out, "odd/rgba.png"), reference)
    # EXIF orientation applied: the mask of the sideways-stored JPEG lies on the object as displayed
    rotated = _mask(out, "odd/exif-rotated.jpg")
    assert _iou(rotated, truth) > 0.8 * _iou(reference, truth), _iou(rotated, truth)
    assert _iou(_mask(out, "odd/cmyk.jpg"), truth) > 0.5 * _iou(reference, truth)
    # an all-black image is a valid image with nothing in it: ok, empty mask
    assert rows["odd/black.png"]["mask_area"] == 0 and not _mask(out, "odd/black.png").any()


def test_one_bad_batch_does_not_stop_the_rest(bad_run):
    s = bad_run["summary"]
    expected_ok = len(GOOD) + len(ODD) + len(SAFE_ODD) + 1 + 3  # + links/inside.png, crash/{a,c,d}
    expected_err = len(BAD) + 2 + len(HOSTILE) + len(HOSTILE_BYTES) + len(CRAFTED) + 2  # + links/dangling.png,
    # links/outside.png, crash/b-always.png and crash/e-decoder.png
    assert (s["ok"], s["errors"]) == (expected_ok, expected_err), bad_run["log"]
    keys = [r["key"] for r in bad_run["rows"]]
    assert len(keys) == len(set(keys)) == expected_ok + expected_err  # every input accounted for, once


def test_hostile_names_cannot_write_outside_the_output(bad_run):
    sandbox, out, rows = bad_run["sandbox"], bad_run["out"], {r["key"]: r for r in bad_run["rows"]}
    # nothing outside --output changed (inputs, the symlinks' targets, the folders above the output)
    assert _snapshot(sandbox, skip=out) == bad_run["before"]
    # names that could escape or confuse are refused: an error row with a printable, escaped key, nothing read
    for raw in HOSTILE + CRAFTED + [b.decode("utf-8", "surrogateescape") for b in HOSTILE_BYTES]:
        key = raw.encode("unicode_escape", "backslashreplace").decode("ascii")
        assert rows[key]["status"] == "error" and "unsafe input name" in rows[key]["error"], (key, rows.get(key))
        assert "\n" not in key and key.isascii()
    # every file under the output is one the job meant to write, for a key it accepted
    accepted = {os.path.splitext(k)[0] for k, r in rows.items() if r["status"] == "ok"}
    for path in out.rglob("*"):
        if path.is_dir():
            continue
        assert not path.is_symlink()
        rel = path.relative_to(out).as_posix()
        folder, _, rest = rel.partition("/")
        if folder == "manifest":
            assert re.fullmatch(r"part-[0-9a-f]{20}-\d+\.parquet|compact-\d{13}-\d{5}\.parquet", rest), rel
            continue
        if rel in ("run.json", "config.yaml"):  # what the run was (job.runrecord)
            continue
        assert folder in ("masks", "probs", "rle", "overlays"), rel
        assert os.path.splitext(rest)[0] in accepted, rel
    # the folder symlinked from the input tree was not followed, hidden files are not inputs
    assert not any(k.startswith("links/dir") for k in rows)
    assert not set(HIDDEN) & set(rows)
    # no worker-death notes or temp files are left behind
    assert not (out / "_attempts").exists()
    assert not [p for p in out.rglob(".*")]


def test_stages_refuse_hostile_keys_even_if_a_listing_let_them_through(tmp_path):
    """Defence in depth: the read and write stages themselves never touch a path outside their roots."""
    from finedetail.state import ImageState
    from job import stages

    src, out = tmp_path / "in", tmp_path / "deep" / "out"
    src.mkdir()
    (tmp_path / "escape.png").write_bytes(_png(_scene(0).image))  # what "../escape.png" would reach from in/
    cfg = _cfg(input=str(src), prompts=str(src), output=str(out), **MINIMAL)
    before = _snapshot(tmp_path, skip=out)
    read = stages.read_decode({"key": np.array(CRAFTED, dtype=object)}, cfg=cfg)
    assert list(read["status"]) == ["error"] * len(CRAFTED)
    assert all("key must" in e for e in read["error"]), list(read["error"])
    image = _scene(0).image
    state = ImageState(image=image)
    state.put_fused(np.ones((1, *SIZE), np.float32), np.ones((1, *SIZE), bool))
    rows = [{**stages._empty_row(k), "state": state.to_bytes()} for k in CRAFTED]
    written = stages.write_outputs(stages._batch(rows), cfg=cfg, config_hash="x")
    assert list(written["status"]) == ["error"] * len(CRAFTED)
    assert all(e.startswith("write: ValueError: key must") for e in written["error"]), list(written["error"])
    assert _snapshot(tmp_path, skip=out) == before
    assert not [p for p in out.rglob("*") if p.is_file() and "manifest" not in p.parts]


# =====================================================================================================================
# Bad prompts and config: refused before any work starts (no Ray, nothing written), message names the problem.
# =====================================================================================================================


def _prompt_dir(root: Path, case: str) -> Path:
    """A prompts/ folder with one flaw (or none, case "ok")."""
    image, mask = synthetic.make_prompt_pair("fur", seed=500, size=SIZE)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images/p0.png").write_bytes(_png(image))
    if case == "no-mask":
        return root
    if case == "mask-size":
        mask = mask[:40, :50]
    elif case == "empty-mask":
        mask = np.zeros_like(mask)
    (root / "masks/p0.png").write_bytes(_png(mask.astype(np.uint8) * 255))
    return root


PROMPT_CASES = {
    "no-mask": "images/p0.png has no mask",
    "mask-size": "is 50x40 but its image",
    "empty-mask": "is empty",
}
CONFIG_CASES = {  # extra command-line arguments -> what the message must say
    "unknown-key": (["--set", "refine.pointz=4"], "unknown config key refine.'pointz'"),
    "unknown-yaml-key": (["--config", "{cfg}"], "unknown config key 'scale'"),
    "negative-scale": (["--scales=-1"], "scales must be positive, got scales=(-1.0,)"),
    "bad-tta": (["--tta", "identity,flip-sideways"], "flip-sideways"),
}


def _cli(args: list[str], *, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "job", "run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("case", sorted(PROMPT_CASES) + sorted(CONFIG_CASES))
def test_cli_refuses_bad_prompts_and_config_with_exit_2(case, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(_scene(0).image))
    prompts = _prompt_dir(tmp_path / "prompts", case if case in PROMPT_CASES else "ok")
    (tmp_path / "job.yaml").write_text("scale: [1]\n")  # typo of "scales"
    out, ray_tmp = tmp_path / "out", tmp_path / "ray"
    extra, expected = CONFIG_CASES.get(case, ([], PROMPT_CASES.get(case)))
    extra = [a.replace("{cfg}", str(tmp_path / "job.yaml")) for a in extra]
    done = _cli(["--input", str(src), "--prompts", str(prompts), "--output", str(out), *MINIMAL_ARGS, *extra],
                env_extra={"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "local"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr
    assert done.stderr.startswith("finedetail: error:") and "Traceback" not in done.stderr
    assert not out.exists()  # nothing written, not even the write probe's folder
    assert not ray_tmp.exists()  # Ray never started


MINIMAL_ARGS = ["--backend", "proxy", "--scales", "1", "--tta", "identity", "--no-crop"]


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_run_job_refuses_bad_prompts_before_ray_starts(case, tmp_path, monkeypatch):
    from job import run

    def no(*_a, **_k):
        raise AssertionError("work started although the prompts are bad")

    monkeypatch.setattr(run, "_ensure_ray", no)
    monkeypatch.setattr(run, "build_dataset", no)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(_scene(0).image))
    cfg = _cfg(input=str(src), prompts=str(_prompt_dir(tmp_path / "prompts", case)), output=str(tmp_path / "out"),
               **MINIMAL)
    with pytest.raises(run.JobRefused, match=re.escape(PROMPT_CASES[case])):
        run.run_job(cfg, out=io.StringIO())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values, expected", [
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"scales": [1.0, -0.5]}, "scales must be positive"),
    ({"tta": ["identity", "spin"]}, "spin"),
    ({"max_tries": 0}, "max_tries must be >= 1"),
    ({"max_pixels": 0}, "max_pixels must be >= 1"),
])
def test_bad_config_is_refused_when_the_config_is_built(values, expected, tmp_path):
    with pytest.raises(ValueError, match=re.escape(expected)):
        _cfg(input=str(tmp_path), prompts=str(tmp_path), output=str(tmp_path / "out"), **values)


# =====================================================================================================================
# Worker crashes: an actor killed mid-batch is restarted and its rows retried; an input that kills every worker it
# reaches ends as an error row after max_tries deaths. The workers are killed by tests/faults.py.
# =====================================================================================================================


def test_worker_crashes_are_retried_then_bounded(bad_run):
    """In the bad_run job: a GPU-stage actor killed mid-batch (os._exit, tests/faults.py) is restarted by Ray and every
    row of its batch comes out ok; an input that kills every worker it reaches (a refine actor, a read task)
    kills it at most max_tries times and ends as an error row saying so, while the job goes on and succeeds."""
    rows, made = {r["key"]: r for r in bad_run["rows"]}, bad_run["crashes"]
    once, always, decoder = "crash/a-once.png", "crash/b-always.png", "crash/e-decoder.png"
    assert sum(n.startswith(crash_tag("refine", once)) for n in made) == 1  # it really died
    assert rows[once]["status"] == "ok" and rows[once]["attempts"] >= 2
    assert _mask(bad_run["out"], once).shape == SIZE
    for key, stage in ((always, "refine-scale"), (decoder, "decode")):
        deaths = sum(n.startswith(crash_tag(stage.split("-")[0], key)) for n in made)
        # MAX_TRIES deaths, or one fewer when the first death of its batch was another row's doing
        assert 1 <= deaths <= MAX_TRIES, (key, made)
        r = rows[key]
        assert r["status"] == "error" and r["attempts"] == MAX_TRIES, r
        assert r["error"].startswith(stage) and f"worker died {MAX_TRIES} time(s) while processing this input" \
            in r["error"] and f"max_tries={MAX_TRIES}" in r["error"], r["error"]
    for key in ("crash/c-ok.png", "crash/d-ok.png"):  # batch-mates of the crashes
        assert rows[key]["status"] == "ok"
    assert not (bad_run["out"] / "_attempts").exists()  # the notes are cleared at the end of the run


# =====================================================================================================================
# A write that fails for good fails the job, with the storage error's message, and no manifest row claims it.
# =====================================================================================================================


def test_permanent_write_failure_fails_the_job_and_claims_nothing(ray_local, tmp_path):
    from job.run import JobFailed, run_job

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        (src / f"img_{i}.png").write_bytes(_png(_scene(i).image))
    write_prompts(tmp_path / "prompts")
    out = tmp_path / "out"
    out.mkdir()
    (out / "masks").write_text("a file where the masks/ folder must go\n")  # an output prefix that is a file
    cfg = _cfg(input=str(src), prompts=str(tmp_path / "prompts"), output=str(out), **MINIMAL)
    with pytest.raises(JobFailed) as info:
        run_job(cfg, out=io.StringIO())
    message = str(info.value)
    assert "cannot write" in message and "masks/img_" in message and "permanent error" in message, message
    assert "re-run the same command to resume" in message
    for r in read_manifest_rows(out):
        assert r["status"] != "ok", r  # no row claims outputs that could not be written
    assert (out / "masks").read_text().startswith("a file")
    # its model actors are gone once run_job has raised: with Ray 2.60 one stayed alive with half the GPU (a stopped
    # dataset's cancelled task keeps its handle), and the next test's restarting actor waited 30 min for that half
    total, deadline = ray_local.cluster_resources(), time.monotonic() + 5.0
    while True:
        held = {k: round(total[k] - ray_local.available_resources().get(k, 0.0), 3) for k in ("CPU", "GPU")}
        if held == {"CPU": 0.0, "GPU": 0.0} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert held == {"CPU": 0.0, "GPU": 0.0}, f"still in use after the failed job: {held}"


# =====================================================================================================================
# A model that cannot be built ends the job in bounded time with the constructor's error (Ray alone restarts the
# actor for ever), and an output folder linked outside --output fails the job without writing there.
# =====================================================================================================================


def _small_job(tmp_path: Path, n: int = 3) -> tuple[Path, Path, Path]:
    """(input folder with n scenes, prompts, output path)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        (src / f"img_{i}.png").write_bytes(_png(_scene(i).image))
    write_prompts(tmp_path / "prompts")
    return src, tmp_path / "prompts", tmp_path / "out"


def test_corrupt_checkpoint_fails_the_job_with_its_error_instead_of_restarting_for_ever(tmp_path, tiny_weights):
    """The default backend with a truncated SAM checkpoint, through the command line with its own Ray (CPU only, so
    the chained actor): its constructor raises on every restart; after max_tries builds the job ends with exit
    status 1 and ONE line naming the stage and the constructor's error. A hang fails the test after 300 s."""
    src, prompts, out = _small_job(tmp_path)
    corrupt = tmp_path / "sam_truncated.pth"
    data = Path(tiny_weights["sam"]).read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    ray_tmp = _ray_tmp()
    proc = _start_driver(["--input", str(src), "--prompts", str(prompts), "--output", str(out), "--backend",
                          "seggpt-sam", "--sam-checkpoint", str(corrupt), "--seggpt-checkpoint",
                          tiny_weights["seggpt"], "--device", "cpu", "--scales", "1", "--tta", "identity", "--no-crop",
                          "--set", "max_tries=2"], ray_tmp)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("the job did not end: the actor is being restarted for ever?\n" + stderr[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 1, stdout + stderr[-3000:]
    failed = [line for line in stderr.splitlines() if line.startswith("finedetail: failed:")]
    assert len(failed) == 1, stderr[-3000:]
    assert failed[0].startswith("finedetail: failed: job failed after 0 of 3 images were done: refiner: cannot "
                                f"build the model (ValueError: cannot read {corrupt} as a SAM checkpoint"), failed[0]
    assert "2 failed attempt(s), max_tries=2" in failed[0]
    assert "finedetail: done" not in stdout
    assert not (out / "_attempts").exists() and read_manifest_rows(out) == []


def test_actor_killed_while_building_its_model_fails_the_job(ray_local, faults, tmp_path):
    """A coarse actor whose process dies while building its model (an OOM kill; here tests/faults.py's os._exit),
    one pool per stage (the session's Ray has a GPU): max_tries deaths, then JobFailed saying so."""
    from job.run import JobFailed, run_job

    src, prompts, out = _small_job(tmp_path)
    cfg = _cfg(input=str(src), prompts=str(prompts), output=str(out), max_tries=2, **MINIMAL)
    with faults.inject(init_fail={"stage": "coarse", "how": "exit"}), pytest.raises(JobFailed) as info:
        run_job(cfg, out=io.StringIO())
    message = str(info.value)
    assert "coarse: cannot build the model (the process died with no Python error" in message, message
    assert "2 failed attempt(s), max_tries=2" in message and "\n" not in message
    assert not (out / "_attempts").exists()


def test_model_builds_are_retried_in_place_and_counted_per_actor(tmp_path, monkeypatch):
    """build_bounded without Ray: the actor id it keys its note on is pinned (the seam), the note storage is real.
    A build that raises once is retried and succeeds (note removed); one that always raises gives up after max_tries
    with its own error; an actor whose earlier attempts all died (the note says so) does not try again."""
    from job import stages

    monkeypatch.setattr(stages, "_actor_id", lambda: "actor-1")
    monkeypatch.setattr(stages.time, "sleep", lambda s: None)
    log = stages.AttemptLog(output=str(tmp_path / "out"), run_id="r1", max_tries=3)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("network blip")
        return "model"

    assert stages.build_bounded(log, "coarse", flaky) == ("model", None) and len(calls) == 2
    assert jio.list_files(log.storage, "_attempts", extensions=None) == []

    def broken():
        calls.append(1)
        raise ValueError("cannot read https://u:hunter22@host/sam.pth as a SAM checkpoint\nmore lines")

    calls.clear()
    model, error = stages.build_bounded(log, "refine-scale1", broken)
    assert model is None and len(calls) == 3
    assert error == ("refine-scale1: cannot build the model (ValueError: cannot read https://u:***@host/sam.pth as a "
                     "SAM checkpoint); 3 failed attempt(s), max_tries=3. Fix the cause and re-run the same command")
    calls.clear()
    log.set(log.marker("init-crop", "actor", ["actor-1"]), 3)  # three restarts that died while building
    model, error = stages.build_bounded(log, "crop", broken)
    assert model is None and calls == [] and "the process died with no Python error" in error


def test_output_folder_linked_outside_the_output_fails_the_job_and_writes_nothing_there(ray_local, tmp_path):
    from job.run import JobFailed, run_job

    src, prompts, out = _small_job(tmp_path, 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    os.symlink(elsewhere, out / "masks")
    with pytest.raises(JobFailed) as info:
        run_job(_cfg(input=str(src), prompts=str(prompts), output=str(out), **MINIMAL), out=io.StringIO())
    assert "cannot write" in str(info.value) and "outside the root" in str(info.value), str(info.value)
    assert list(elsewhere.iterdir()) == []
    assert all(r["status"] != "ok" for r in read_manifest_rows(out))


# =====================================================================================================================
# Untrusted checkpoints: loaded with torch.load(weights_only=True) (a pickle payload is refused, never run), and
# checked against a sha256 when one is given.
# =====================================================================================================================


class _Payload:
    """Unpickling this calls os.mkdir(path): proof that code in a checkpoint ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickle_payload_checkpoints_are_refused_not_run(tmp_path, tiny_weights):
    torch = pytest.importorskip("torch")
    from finedetail.models.checkpoints import load_sam, load_seggpt

    ran = tmp_path / "payload-ran"
    evil = tmp_path / "sam_evil.pth"
    torch.save({"image_encoder.pos_embed": _Payload(str(ran))}, evil)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        load_sam(str(evil))
    assert not ran.exists()
    # a given checksum is checked before the file is even unpickled
    good = Path(tiny_weights["sam"])
    with pytest.raises(Exception, match="checksum mismatch"):
        load_sam(str(good), sha256="0" * 64)
    # SegGPT: a transformers directory whose weights are a pickle (no safetensors)
    seg = tmp_path / "seggpt_evil"
    shutil.copytree(tiny_weights["seggpt"], seg)
    for f in seg.glob("*.safetensors"):
        f.unlink()
    torch.save({"model.embeddings.patch_embeddings.projection.weight": _Payload(str(ran))}, seg / "pytorch_model.bin")
    with pytest.raises(Exception):
        load_seggpt(str(seg))
    assert not ran.exists()


# =====================================================================================================================
# Jobs in their own process with their own Ray (python -m job run, through a thin driver that also dumps Ray's job
# and actor tables at exit): S3 credentials only in that process's environment, Ray's files in a private folder.
# =====================================================================================================================

DRIVER = r"""
import json, os, sys
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
from job.__main__ import main
try:
    sys.exit(main(sys.argv[1:]))
finally:
    dump = os.environ.get("FD_TEST_RAY_DUMP")
    if dump and ray.is_initialized():
        import ray._private.state as state
        with open(dump, "w") as f:
            json.dump({"jobs": state.jobs(), "actors": state.actors()}, f, default=repr)
"""


def _ray_tmp() -> Path:
    # Ray puts unix sockets under its temp folder: pytest's tmp paths are too long for them (108 bytes)
    return Path(tempfile.mkdtemp(prefix="fdr-", dir="/tmp"))


def _start_driver(args: list[str], ray_tmp: Path, **env_extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), **env_extra}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, "run", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=die_with_parent())


def _session_files(ray_tmp: Path) -> list[Path]:
    return [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()]


def _put_scenes(client, bucket: str, prefix: str, n: int, *, coarse_prefix: str | None = None,
                skip_coarse: tuple[int, ...] = ()) -> list[str]:
    keys = []
    for i in range(n):
        scene = _scene(i)
        key = f"img_{i:02d}.png"
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=_png(scene.image))
        if coarse_prefix is not None and i not in skip_coarse:
            client.put_object(Bucket=bucket, Key=f"{coarse_prefix}/{key}",
                              Body=_png(scene.mask.astype(np.uint8) * 255))
        keys.append(key)
    return keys


def _objects(client, bucket: str, prefix: str = "") -> dict[str, str]:
    out, token = {}, None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _when_output_busy(client, bucket: str, prefix: str, proc: subprocess.Popen, *, timeout: float = 240) -> bool:
    """Wait until the job's workers are writing under prefix (worker-death notes or manifest parts), i.e. Ray is up
    and rows are in flight; False if the job ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(k.startswith((f"{prefix}/_attempts/", f"{prefix}/manifest/"))
                   for k in _objects(client, bucket, prefix)):
                return True
        except Exception:  # noqa: BLE001 - the server may be restarting
            pass
        time.sleep(0.1)
    return proc.poll() is None


@pytest.mark.slow
def test_s3_outage_mid_run_is_ridden_out_and_no_credential_leaks(s3_env, tmp_path):
    """SeaweedFS stopped for a few seconds while rows are in flight and started again: reads and writes retry with
    backoff and the job completes with every output. Then the secret key is searched for everywhere the run left
    text: stdout/stderr, every file of its Ray session (logs included), Ray's job and actor tables, the manifest."""
    server = s3_env
    client = server.client(max_attempts=10)
    bucket = server.make_bucket("fd-outage")
    keys = _put_scenes(client, bucket, "in", 20, coarse_prefix="coarse", skip_coarse=(3,))
    client.put_object(Bucket=bucket, Key="in/bad/empty.png", Body=b"")
    client.put_object(Bucket=bucket, Key="in/bad/page.jpg", Body=b"<Error><Code>AccessDenied</Code></Error>")
    inputs_before = _objects(client, bucket, "in/")
    ray_tmp, dump = _ray_tmp(), tmp_path / "ray-tables.json"
    try:
        proc = _start_driver(["--input", f"s3://{bucket}/in", "--coarse", f"s3://{bucket}/coarse",
                              "--output", f"s3://{bucket}/out", *MINIMAL_ARGS, "--batch-size", "1",
                              "--set", "resources.read_batch=2", "--json"], ray_tmp, FD_TEST_RAY_DUMP=str(dump))
        running = _when_output_busy(client, bucket, "out", proc)
        server.stop()
        time.sleep(4)
        server.start()
        stdout, stderr = proc.communicate(timeout=600)
        files = _session_files(ray_tmp)
        session_text = b"".join(p.read_bytes() for p in files)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert running, "the job ended before the outage: nothing was shown"
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["errors"]) == (19, 3), stdout
    # the outage was really met and ridden out by retries with backoff
    assert b"transient error on s3://fd-outage" in session_text + stderr.encode()
    outputs = _objects(client, bucket, "out/")
    for i, key in enumerate(keys):
        if i != 3:
            for folder in ("masks", "probs", "rle", "overlays"):
                ext = ".json" if folder == "rle" else ".png"
                assert f"out/{folder}/{key[:-4]}{ext}" in outputs, (folder, key)
    parts = [k for k in outputs if k.startswith("out/manifest/") and k.endswith(".parquet")]
    manifest = b"".join(client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in parts)
    import pyarrow.parquet as pq

    rows = {r["key"]: r for k in parts
            for r in pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=k)["Body"].read())).to_pylist()}
    assert sorted(rows) == sorted(keys + ["bad/empty.png", "bad/page.jpg"])
    # an error that carries a URI: the coarse mask of img_03 is missing
    assert "s3://fd-outage/coarse" in rows["img_03.png"]["error"] and "not found" in rows["img_03.png"]["error"]
    # nothing written outside the output prefix, the inputs untouched
    assert {k: v for k, v in _objects(client, bucket).items() if not k.startswith(("out/", "coarse/"))} \
        == inputs_before
    # credentials: nowhere
    tables = dump.read_text()
    assert '"jobs"' in tables and len(files) > 10  # the places searched are really there
    for secret in (server.secret_key, server.access_key):
        for name, text in (("stdout", stdout.encode()), ("stderr", stderr.encode()), ("ray session", session_text),
                           ("ray tables", tables.encode()), ("manifest", manifest)):
            assert secret.encode() not in text, f"credential found in {name}"


def _weed_shell(server, command: str) -> str:
    """Run one `weed shell` command against the test server (explicit gRPC ports: ours are not the defaults)."""
    p = server.ports
    done = subprocess.run([server.weed, "shell", f"-master=127.0.0.1:{p['master.port']}.{p['master.port.grpc']}",
                           f"-filer=127.0.0.1:{p['filer.port']}.{p['filer.port.grpc']}"],
                          input=command + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_s3_output_made_read_only_mid_run_fails_the_job_and_claims_nothing(s3_env, tmp_path):
    """The output bucket turns read-only while rows are in flight (SeaweedFS answers every write with 500
    InternalError, which looks transient): the writes are retried with backoff, then the job FAILS with the storage
    error's message, and every manifest row that exists has all its files. (Deleting the bucket would not do:
    SeaweedFS re-creates a bucket on the next PutObject.)"""
    server = s3_env
    client = server.client()
    src, dst = server.make_bucket("fd-in-ro"), server.make_bucket("fd-out-ro")
    _put_scenes(client, src, "in", 16, coarse_prefix="coarse")
    ray_tmp = _ray_tmp()
    try:
        proc = _start_driver(["--input", f"s3://{src}/in", "--coarse", f"s3://{src}/coarse",
                              "--output", f"s3://{dst}/out", *MINIMAL_ARGS, "--batch-size", "1"], ray_tmp)
        running = _when_output_busy(client, dst, "out", proc)
        _weed_shell(server, f"fs.configure -locationPrefix=/buckets/{dst}/ -readOnly=true -apply")
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            _weed_shell(server, f"fs.configure -locationPrefix=/buckets/{dst}/ -delete -apply")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert running, "the job ended before the bucket turned read-only: nothing was shown"
    assert proc.returncode not in (0, None), stdout + stderr
    assert f"cannot write s3://{dst}/out" in stderr and "still failing after" in stderr, stderr[-5000:]
    assert "finedetail: done" not in stdout  # no success summary
    import pyarrow.parquet as pq

    outputs = _objects(client, dst, "out/")
    for key in [k for k in outputs if k.startswith("out/manifest/") and k.endswith(".parquet")]:
        table = pq.read_table(io.BytesIO(client.get_object(Bucket=dst, Key=key)["Body"].read()))
        for r in table.to_pylist():
            if r["status"] == "ok":  # a row claiming success has every file
                for folder, ext in (("masks", ".png"), ("probs", ".png"), ("rle", ".json"), ("overlays", ".png")):
                    assert f"out/{folder}/{r['key'][:-4]}{ext}" in outputs, r["key"]


# =====================================================================================================================
# Restarts: the driver killed (SIGKILL to its whole process group) at random points, then the same command again.
# =====================================================================================================================


def _session_processes(sid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def _kill_driver(proc: subprocess.Popen, *, grace: float = 90.0) -> None:
    """SIGKILL the driver's process group, then make sure every process it started (Ray's GCS, raylet, workers:
    same session, some in their own process groups) is gone; kill and fail on orphans. ``grace``: on the loaded
    2-core machine a python process of the session was still there 30 s after the kill (most likely a Ray worker
    still starting when its raylet died, which ends once its connection attempts give up; not proven)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the job had finished: nothing left in the group
        pass
    proc.wait()
    deadline = time.monotonic() + grace
    while True:
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        alive += [p for p in _session_processes(proc.pid) if p not in alive]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for p in alive:  # only processes this test started
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not alive, f"orphans outlived the killed driver by {grace:.0f} s: {[(p.pid, p.name()) for p in alive]}"


def _check_output_consistent(out: Path, keys: list[str]) -> list[dict]:
    """What a reader of the output may rely on at any moment: every visible file is whole, every manifest row is
    an input's, and every ok row's files are all there. Returns the manifest rows."""
    import pyarrow.parquet as pq
    import yaml

    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if path.is_dir() or any(part.startswith(".") for part in rel.parts) or rel.parts[0] == "_attempts":
            continue
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()  # raises on a partial file
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif rel.as_posix() == "config.yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict)
        else:
            raise AssertionError(f"unexpected file {rel}")
    rows = read_manifest_rows(out)
    ok = [r["key"] for r in rows if r["status"] == "ok"]
    # a driver killed while it compacted leaves a key's row both in a new shard and in the part it came from (the
    # parts go only once the shards are whole): the same row twice. Two different ok rows = the input ran twice.
    runs: dict[str, set] = {}
    for r in rows:
        if r["status"] == "ok":
            runs.setdefault(r["key"], set()).add(r["finished_at"])
    twice = {k: sorted(v) for k, v in runs.items() if len(v) > 1}
    assert not twice, f"an input was written twice: {twice}"
    assert {r["key"] for r in rows} <= set(keys)
    for key in ok:
        stem = os.path.splitext(key)[0]
        for rel in (f"masks/{stem}.png", f"probs/{stem}.png", f"rle/{stem}.json", f"overlays/{stem}.png"):
            assert (out / rel).is_file(), rel
    return rows


@pytest.mark.slow
def test_killed_driver_at_random_points_then_rerun_loses_and_duplicates_nothing(tmp_path):
    seed = int(os.environ.get("FD_TEST_SEED", str(random.SystemRandom().randrange(10**6))))
    rng = random.Random(seed)
    src, coarse, out = tmp_path / "in", tmp_path / "coarse", tmp_path / "out"
    keys = []
    for i in range(24):
        scene = _scene(i)
        key = f"{'sub/' if i % 5 == 4 else ''}img_{i:02d}.png"
        for root, data in ((src, _png(scene.image)), (coarse, _png(scene.mask.astype(np.uint8) * 255))):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)
        keys.append(key)
    (src / "broken.png").write_bytes(b"")
    keys.append("broken.png")
    args = ["--input", str(src), "--coarse", str(coarse), "--output", str(out), *MINIMAL_ARGS, "--batch-size", "1",
            "--set", "resources.read_batch=2"]
    kills = []
    for _ in range(2):
        parts_before = len(list((out / "manifest").glob("*.parquet")))
        wait_parts, delay = rng.randrange(0, 8), rng.uniform(0.0, 2.0)  # the random kill point
        ray_tmp = _ray_tmp()
        try:
            proc = _start_driver(args, ray_tmp)
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if len(list((out / "manifest").glob("*.parquet"))) >= parts_before + wait_parts:
                    break
                time.sleep(0.05)
            time.sleep(delay)
            finished = proc.poll() is not None
            _kill_driver(proc)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        rows = _check_output_consistent(out, keys)
        kills.append((wait_parts, round(delay, 2), finished, sum(r["status"] == "ok" for r in rows)))
    ray_tmp = _ray_tmp()
    try:
        proc = _start_driver([*args, "--json"], ray_tmp)
        stdout, stderr = proc.communicate(timeout=600)
        summary = json.loads(stdout.strip().splitlines()[-1])
        # the CLI exits 1 only when every input it ran failed (here: when the kills left just broken.png to do)
        assert proc.returncode == (0 if summary["ok"] or not summary["errors"] else 1), \
            f"seed {seed}, kills {kills}\n" + stdout[-2000:] + stderr[-4000:]
        deadline = time.monotonic() + 30
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _session_processes(proc.pid), "Ray processes outlived a driver that exited normally"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = _check_output_consistent(out, keys)
    latest = {}
    for r in sorted(rows, key=lambda r: r["finished_at"]):
        latest[r["key"]] = r
    assert sorted(latest) == sorted(keys), f"seed {seed}, kills {kills}: an input was lost"
    assert [k for k, r in latest.items() if r["status"] != "ok"] == ["broken.png"], f"seed {seed}, kills {kills}"
    assert sorted(r["key"] for r in rows if r["status"] == "ok") == sorted(k for k in keys if k != "broken.png")
    # no temp file of an interrupted write, no worker-death notes survive the final run
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], f"seed {seed}"
    assert not (out / "_attempts").exists()


# =====================================================================================================================
# Load: thousands of small images, flat memory, no object-store spilling at the default settings.
# =====================================================================================================================


@pytest.mark.slow
def test_load_many_small_images_flat_memory_and_no_spilling(ray_local, tmp_path):
    """The same measurement as ``python -m job.bench load`` (1000 images here, FD_LOAD_IMAGES to change; the
    proxy resizes every image to SAM's 1024 frame, so a 64 x 64 image costs like a 1024 one)."""
    from job.bench.load import run_load

    n = int(os.environ.get("FD_LOAD_IMAGES", "1000"))
    report = run_load(n, size=64, workdir=tmp_path)
    shown = {k: v for k, v in report.items() if k != "profile"}
    print("load:", json.dumps(shown))
    assert (report["ok"], report["errors"]) == (n, 0), shown
    assert report["spilled"] is not None, "Ray's object store counters were not readable"
    assert report["spilled"]["spilled_bytes"] == 0 and report["spilled"]["spilled_objects"] == 0, shown
    # flat: from the middle third of the run to the last third the driver and the largest worker do not grow
    # (a leak of even 50 KB per image would show as tens of MB here)
    assert report["growth_driver_mb"] < 50, shown
    assert report["growth_worker_max_mb"] < 100, shown
    assert len(read_manifest_rows(tmp_path / "out")) == n
