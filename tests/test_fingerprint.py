"""Resume is keyed on contents (job.fingerprint): prompt bytes and the weights' identity, never path spellings."""

from __future__ import annotations

import http.server
import io
import os
import threading

import numpy as np
import pytest

from jobkit import read_manifest_rows, write_inputs, write_prompts


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict({"input": "in", "output": "out", "backend": "proxy", **values})


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A private $FINEDETAIL_CACHE (digests.json lives there)."""
    monkeypatch.setenv("FINEDETAIL_CACHE", str(tmp_path / "cache"))


def _rewrite_same_size(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (same length) and put its old mtime back, as `cp -p` would."""
    st = os.stat(path)
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_relative_and_absolute_prompts_give_the_same_hash(tmp_path, monkeypatch):
    write_prompts(tmp_path / "prompts")
    monkeypatch.chdir(tmp_path)
    rel = _cfg(prompts="prompts").config_hash
    assert _cfg(prompts=str(tmp_path / "prompts")).config_hash == rel
    assert _cfg(prompts="./prompts/").config_hash == rel
    # the same bytes elsewhere are the same prompts
    (tmp_path / "copy").mkdir()
    os.rename(tmp_path / "prompts", tmp_path / "copy" / "prompts")
    assert _cfg(prompts=str(tmp_path / "copy" / "prompts")).config_hash == rel


@pytest.mark.parametrize("which", ["images/p0.png", "masks/p0.png", "classes.yaml"])
def test_a_prompt_replaced_at_the_same_path_changes_the_hash(tmp_path, which):
    from PIL import Image

    from finedetail.codecs import encode_png

    root = write_prompts(tmp_path / "prompts")
    (root / "classes.yaml").write_text("classes: [thing]\n")
    before = _cfg(prompts=str(root), classes=["thing"]).config_hash
    path = root / which
    if which.endswith(".png"):
        arr = np.array(Image.open(path))
        arr[0, 0] = 255 - arr[0, 0]
        path.write_bytes(encode_png(arr))
    else:
        path.write_text("classes: [thing]  # same names, other bytes\n")
    assert _cfg(prompts=str(root), classes=["thing"]).config_hash != before


def test_a_local_checkpoint_replaced_at_the_same_path_changes_the_hash_and_digests_are_cached(tmp_path,
                                                                                              monkeypatch):
    import finedetail.models.weights as ck
    from job import fingerprint as jf

    write_prompts(tmp_path / "prompts")
    sam, seggpt = tmp_path / "sam.pth", tmp_path / "seggpt"
    sam.write_bytes(b"A" * 4096)
    seggpt.mkdir()
    (seggpt / "model.safetensors").write_bytes(b"B" * 4096)
    (seggpt / "config.json").write_text("{}")
    cfg = dict(prompts=str(tmp_path / "prompts"), backend="seggpt-sam", sam_checkpoint=str(sam),
               seggpt_checkpoint=str(seggpt))
    first = _cfg(**cfg).config_hash
    reads = []
    real = ck.file_sha256
    monkeypatch.setattr(ck, "file_sha256", lambda p: reads.append(p) or real(p))
    assert _cfg(**cfg).config_hash == first and reads == []  # unchanged files: digests from the cache
    monkeypatch.chdir(tmp_path)
    assert _cfg(**{**cfg, "sam_checkpoint": "sam.pth", "seggpt_checkpoint": "./seggpt"}).config_hash == first
    _rewrite_same_size(sam, b"C" * 4096)
    second = _cfg(**cfg).config_hash
    assert second != first and len(reads) == 1
    _rewrite_same_size(seggpt / "model.safetensors", b"D" * 4096)
    assert _cfg(**cfg).config_hash not in (first, second)
    # a digest the loader verifies identifies the file without reading it (it need not even exist here)
    pinned = "ab" * 32
    ident = jf.checkpoint_identity(str(tmp_path / "absent.pth"), sha256=pinned)
    assert ident == {"sha256": pinned}
    assert jf.checkpoint_identity(ck.SAM_URLS["vit_b"]) == {"sha256": ck.SAM_SHA256["vit_b"]}
    a = _cfg(**{**cfg, "sam_sha256": "cd" * 32}).config_hash
    assert a != _cfg(**{**cfg, "sam_sha256": "ef" * 32}).config_hash  # sam_sha256 is in the hash


def test_an_s3_checkpoint_is_identified_by_etag_and_size(s3_env):
    from job import fingerprint as jf

    bucket = s3_env.make_bucket("fp-weights")
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="w/sam.pth", Body=b"A" * 1000)
    first = jf.checkpoint_identity(f"s3://{bucket}/w/sam.pth")
    assert first["size"] == 1000 and first["etag"]
    client.put_object(Bucket=bucket, Key="w/sam.pth", Body=b"B" * 1000)
    assert jf.checkpoint_identity(f"s3://{bucket}/w/sam.pth") != first
    client.put_object(Bucket=bucket, Key="seggpt/config.json", Body=b"{}")
    one = jf.seggpt_identity(f"s3://{bucket}/seggpt")
    assert one == jf.seggpt_identity(f"s3://{bucket}/seggpt/")
    client.put_object(Bucket=bucket, Key="seggpt/config.json", Body=b"[]")
    assert jf.seggpt_identity(f"s3://{bucket}/seggpt") != one


def test_an_http_checkpoint_is_identified_by_its_headers(tmp_path):
    from job import fingerprint as jf

    root = tmp_path / "www"
    root.mkdir()
    (root / "sam.pth").write_bytes(b"A" * 100)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/sam.pth"
        first = jf.checkpoint_identity(url)
        assert first["size"] == "100" and first["last_modified"]
        (root / "sam.pth").write_bytes(b"B" * 100)
        os.utime(root / "sam.pth", (1_000_000_000, 1_000_000_000))
        assert jf.checkpoint_identity(url) != first
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_rerun_after_a_prompt_is_replaced_redoes_everything(ray_local, tmp_path):
    from finedetail.codecs import decode_image, encode_png
    from job.run import run_job

    keys = write_inputs(tmp_path / "in", n_good=2, size=(48, 64), corrupt=False)
    prompts = write_prompts(tmp_path / "prompts", size=(48, 64))
    cfg = _cfg(input=str(tmp_path / "in"), prompts=str(prompts), output=str(tmp_path / "out"), scales=[1.0],
               tta=["identity"], crop={"enabled": False})
    first = run_job(cfg, out=io.StringIO())
    assert first["ok"] == len(keys)
    assert run_job(cfg, out=io.StringIO())["images"] == 0  # resumed: nothing to do
    image = decode_image((prompts / "images/p0.png").read_bytes()).copy()
    image[:4, :4] = 255 - image[:4, :4]
    (prompts / "images/p0.png").write_bytes(encode_png(image))
    again = run_job(cfg, out=io.StringIO())
    assert again["images"] == len(keys) and again["ok"] == len(keys)
    assert again["config_hash"] != first["config_hash"]
    hashes = {r["config_hash"] for r in read_manifest_rows(tmp_path / "out")}
    assert hashes == {first["config_hash"], again["config_hash"]}
