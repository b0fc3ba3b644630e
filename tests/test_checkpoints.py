"""Checkpoint resolution (local, file://, HTTP, S3), verification, caching and loading, with tiny models only."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from finedetail.models.checkpoints import infer_sam_arch, load_sam, load_seggpt
from finedetail.models.weights import (
    SAM_SHA256,
    SAM_URLS,
    CheckpointUnavailableError,
    ChecksumMismatchError,
    cache_path_for,
    default_cache_dir,
    resolve_checkpoint,
)
from finedetail.models.sam import SamRefiner
from finedetail.models.tiny import SAM_ARCHS, SamArch, build_sam, build_tiny_sam, save_tiny_sam, save_tiny_seggpt
from finedetail.retry import RetryPolicy
from finedetail.types import ComponentPrompt

TINY_KW = dict(global_attn_indexes=(1,))  # one global block, so inference has both block kinds to tell apart
FAST = RetryPolicy(max_tries=3, base_delay=0.0, max_delay=0.0)  # nothing listening: don't wait out the default


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "sam_tiny.pth", seed=0, **TINY_KW)


# ------------------------------------------------------------------------------------------ architecture inference


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_full_size_architectures_are_inferred_from_shapes(name):
    with torch.device("meta"):  # shapes only: no 375 MB - 2.5 GB of random weights
        sam = build_sam(SAM_ARCHS[name], seed=None)
    shapes = {k: tuple(v.shape) for k, v in sam.state_dict().items()}
    assert infer_sam_arch(shapes) == SAM_ARCHS[name]


@pytest.mark.parametrize(
    "arch",
    [
        SamArch(64, 2, 2, (1,), prompt_embed_dim=32, decoder_mlp_dim=64, iou_head_hidden_dim=32),
        SamArch(48, 3, 4, (0, 2), prompt_embed_dim=64, decoder_mlp_dim=96, iou_head_hidden_dim=16, window_size=8,
                mlp_ratio=2.0, mask_in_chans=8, decoder_depth=1, iou_head_depth=2),
        SamArch(32, 1, 1, (), prompt_embed_dim=16, image_size=512, decoder_mlp_dim=32, iou_head_hidden_dim=16),
    ],
)
def test_small_architectures_round_trip_through_inference(arch):
    with torch.device("meta"):
        sam = build_sam(arch, seed=None)
    assert infer_sam_arch({k: v.shape for k, v in sam.state_dict().items()}) == arch


def test_inference_rejects_a_non_sam_state_dict():
    with pytest.raises(ValueError, match="not a segment-anything state dict"):
        infer_sam_arch({"encoder.weight": (3, 3)})


# ---------------------------------------------------------------------------------------------- local SAM loading


def test_tiny_sam_round_trips_through_load_sam(tiny_pth):
    loaded = load_sam(tiny_pth)
    reference = build_tiny_sam(seed=0, **TINY_KW).state_dict()
    got = loaded.state_dict()
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), k
    assert [b.window_size for b in loaded.image_encoder.blocks] == [14, 0]
    assert not loaded.training
    # and it works end to end
    refiner = SamRefiner(loaded, device="cpu")
    emb = refiner.encode([np.zeros((40, 60, 3), np.uint8)])[0]
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    out = refiner.refine(emb, [ComponentPrompt(mask=mask, box=np.array([10.0, 5.0, 30.0, 20.0]))])
    assert out.shape == (1, 40, 60) and np.isfinite(out).all()


def test_file_uri_and_sha_of_a_local_file(tiny_pth):
    digest = sha(tiny_pth.read_bytes())
    assert resolve_checkpoint(f"file://{tiny_pth}", sha256=digest) == tiny_pth
    with pytest.raises(ValueError, match=f"expected sha256 {'0' * 64}, found {digest}"):
        resolve_checkpoint(tiny_pth, sha256="0" * 64)
    assert tiny_pth.exists()  # a user's own file is never deleted
    assert resolve_checkpoint(tiny_pth, sha256="skip") == tiny_pth


def test_missing_local_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint("/nonexistent/sam.pth")


def test_wrong_model_type_says_how_to_fix(tiny_pth):
    with pytest.raises(ValueError, match="omit model_type"):
        load_sam(tiny_pth, model_type="vit_b")
    with pytest.raises(ValueError, match="model_type must be one of"):
        load_sam(tiny_pth, model_type="vit_x")


def test_official_urls_and_digests_are_paired():
    assert set(SAM_URLS) == set(SAM_SHA256) == set(SAM_ARCHS)
    for name, url in SAM_URLS.items():
        assert url.startswith("https://dl.fbaipublicfiles.com/segment_anything/sam_" + name)
        assert len(SAM_SHA256[name]) == 64 and int(SAM_SHA256[name], 16) >= 0


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FINEDETAIL_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FINEDETAIL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "finedetail"


def test_cache_paths_are_readable_and_safe(tmp_path):
    assert cache_path_for("s3://b/models/sam.pth", cache_dir=tmp_path) == tmp_path / "s3/b/models/sam.pth"
    got = cache_path_for("http://127.0.0.1:8000/a/sam.pth", cache_dir=tmp_path)
    assert got == tmp_path / "http/127.0.0.1_8000/a/sam.pth"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        cache_path_for("https://host/../etc/passwd", cache_dir=tmp_path)


# -------------------------------------------------------------------------------------------------------- HTTP


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(root: Path, base: type):
    """Serve a new directory ``root`` over HTTP on 127.0.0.1 from a thread, with a ``base`` subclass that has its own
    request log; yields (root, base URL, request log)."""
    root.mkdir()
    handler = type(base.__name__, (base,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def http_root(tmp_path):
    """A directory served over HTTP on 127.0.0.1 by a thread; yields (root dir, base URL, request log)."""
    with _serve(tmp_path / "www", _Handler) as served:
        yield served


USER, PASSWORD = "alice", "s3cr3t-Pw"


class _AuthHandler(_Handler):
    """Serves only requests that carry HTTP basic auth for USER:PASSWORD (401 otherwise)."""

    def do_GET(self):  # noqa: N802 - http.server API
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            type(self).requests.append(f"401 {self.path}")
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="weights"')
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def auth_http_root(tmp_path):
    """Like http_root, behind basic auth; yields (root dir, base URL with USER:PASSWORD@ in it, request log)."""
    with _serve(tmp_path / "www-auth", _AuthHandler) as (root, base, requests):
        yield root, base.replace("http://", f"http://{USER}:{PASSWORD}@"), requests


def test_http_download_verified_and_cached(http_root, tmp_path, tiny_pth):
    root, base, requests = http_root
    data = tiny_pth.read_bytes()
    (root / "w").mkdir()
    (root / "w" / "sam.pth").write_bytes(data)
    cache = tmp_path / "cache"
    url = f"{base}/w/sam.pth"
    path = resolve_checkpoint(url, cache_dir=cache, sha256=sha(data))
    assert path == cache_path_for(url, cache_dir=cache) and path.read_bytes() == data
    assert files_under(cache) == [path]  # no temp files left
    assert resolve_checkpoint(url, cache_dir=cache, sha256=sha(data)) == path
    assert len(requests) == 1  # the second call was a cache hit
    # a cached copy whose digest disagrees is reported and KEPT: it may be the only copy on an offline machine
    path.write_bytes(b"garbage")
    with pytest.raises(ChecksumMismatchError) as info:
        resolve_checkpoint(url, cache_dir=cache, sha256=sha(data))
    assert info.value.found == sha(b"garbage") and info.value.path == str(path)
    assert path.read_bytes() == b"garbage" and len(requests) == 1  # kept, and nothing downloaded over it
    # deleting it is how a user asks for a fresh download; then load_sam goes through the same path
    path.unlink()
    assert isinstance(load_sam(url, cache_dir=cache), torch.nn.Module)
    assert len(requests) == 2


def test_http_checksum_mismatch_leaves_the_cache_clean(http_root, tmp_path):
    root, base, _ = http_root
    (root / "x.pth").write_bytes(b"not the weights")
    cache = tmp_path / "cache"
    wrong = "ab" * 32
    with pytest.raises(ValueError) as info:
        resolve_checkpoint(f"{base}/x.pth", cache_dir=cache, sha256=wrong)
    msg = str(info.value)
    assert f"expected sha256 {wrong}" in msg and f"found {sha(b'not the weights')}" in msg
    assert "download was discarded" in msg
    assert files_under(cache) == []  # our own partial download is not kept


def test_http_404_is_reported(http_root, tmp_path):
    _, base, requests = http_root
    with pytest.raises(CheckpointUnavailableError, match="HTTP 404"):
        resolve_checkpoint(f"{base}/missing.pth", cache_dir=tmp_path / "cache")
    assert len(requests) == 1  # client errors are not retried
    assert files_under(tmp_path / "cache") == []


def test_unreachable_url_says_how_to_work_offline(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/sam_vit_b_01ec64.pth"
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointUnavailableError) as info:
        resolve_checkpoint(url, cache_dir=cache, retry=FAST)
    msg = str(info.value)
    assert msg.startswith(f"cannot reach {url} (") and "3 tries" in msg
    assert "--sam-checkpoint PATH" in msg and str(cache_path_for(url, cache_dir=cache)) in msg
    assert files_under(cache) == []


def test_pre_seeded_cache_needs_no_network(tmp_path, tiny_pth):
    url = "https://dl.fbaipublicfiles.com/segment_anything/not_really.pth"
    target = cache_path_for(url, cache_dir=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny_pth.read_bytes())
    assert resolve_checkpoint(url, cache_dir=tmp_path, sha256=sha(tiny_pth.read_bytes())) == target


def test_pre_seeded_official_checkpoint_with_another_digest_is_kept_and_can_be_accepted(tmp_path, tiny_pth):
    """An offline machine with a file pre-seeded where the official vit_b URL is cached, whose digest is not the
    pinned one (here: the tiny test model). Verification is on by default for official URLs, so loading refuses it;
    the file must survive (it used to be deleted before a download that cannot happen offline), the message must
    say both digests and the path, and sha256="skip" must accept it."""
    target = cache_path_for(SAM_URLS["vit_b"], cache_dir=tmp_path)
    target.parent.mkdir(parents=True)
    data = tiny_pth.read_bytes()
    target.write_bytes(data)
    with pytest.raises(ChecksumMismatchError) as info:
        load_sam("vit_b", cache_dir=tmp_path)
    msg = str(info.value)
    assert f"expected sha256 {SAM_SHA256['vit_b']}, found {sha(data)}" in msg and str(target) in msg
    assert "the file was kept" in msg and "--sam-sha256 skip" in msg
    assert "pre-seed" not in msg  # not the misleading "cannot reach ... pre-seed the cache" of a failed re-download
    assert target.read_bytes() == data
    sam = load_sam("vit_b", cache_dir=tmp_path, sha256="skip")
    assert torch.equal(sam.state_dict()["image_encoder.pos_embed"],
                       torch.load(tiny_pth, weights_only=True)["image_encoder.pos_embed"])
    assert files_under(tmp_path) == [target]


@pytest.mark.parametrize("value", ["0" * 63, "g" * 64, "yes", ""])
def test_sha256_option_is_validated(value, tiny_pth):
    from job.config import JobConfig

    with pytest.raises(ValueError, match="64 hex digits .* 'skip'"):
        resolve_checkpoint(tiny_pth, sha256=value)
    with pytest.raises(ValueError, match="sam_sha256 must be 64 hex digits"):
        JobConfig(input="in", output="out", prompts="p", sam_sha256=value)
    JobConfig(input="in", output="out", prompts="p", sam_sha256="skip")
    JobConfig(input="in", output="out", prompts="p", sam_sha256="AB" * 32)


def test_cli_help_and_config_take_sam_sha256_skip():
    from job.__main__ import build_parser, config_from_args

    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["run"].format_help()
    assert "--sam-sha256 HEX|skip" in help_text and "kept, never deleted" in " ".join(help_text.split())
    args = parser.parse_args(["run", "--input", "in", "--output", "out", "--prompts", "p", "--sam-sha256", "skip"])
    assert config_from_args(args).sam_sha256 == "skip"


# ------------------------------------------------------------------------------------- credentials in checkpoint URLs


def test_basic_auth_url_downloads_and_never_shows_the_password(auth_http_root, tmp_path, tiny_pth):
    """A checkpoint URL with user:password@: the credentials are sent as basic auth, the cache path holds neither
    the password nor the user name, and no error message (404, checksum, wrong password, unreachable) quotes the
    password."""
    root, base, requests = auth_http_root
    data = tiny_pth.read_bytes()
    (root / "sam.pth").write_bytes(data)
    cache = tmp_path / "cache"
    path = resolve_checkpoint(f"{base}/sam.pth", cache_dir=cache, sha256=sha(data))
    assert path.read_bytes() == data and requests == ["/sam.pth"]
    assert files_under(cache) == [path]
    for p in [path, *path.parents]:
        assert PASSWORD not in p.name and USER not in p.name, path
    assert path == cache_path_for(f"{base}/sam.pth", cache_dir=cache)
    assert isinstance(load_sam(f"{base}/sam.pth", cache_dir=cache), torch.nn.Module)  # a cache hit
    failures = {
        "404": lambda: resolve_checkpoint(f"{base}/missing.pth", cache_dir=cache),
        "checksum": lambda: resolve_checkpoint(f"{base}/sam.pth", cache_dir=tmp_path / "c2", sha256="0" * 64),
        "cached checksum": lambda: resolve_checkpoint(f"{base}/sam.pth", cache_dir=cache, sha256="0" * 64),
        "wrong password": lambda: resolve_checkpoint(base.replace(PASSWORD, "nope") + "/sam.pth",
                                                     cache_dir=tmp_path / "c2"),
        "unreachable": lambda: resolve_checkpoint(f"http://{USER}:{PASSWORD}@127.0.0.1:9/x.pth", cache_dir=cache,
                                                  retry=FAST),
        "bad scheme": lambda: resolve_checkpoint(f"ftp://{USER}:{PASSWORD}@host/x.pth", cache_dir=cache),
        "s3 with keys": lambda: resolve_checkpoint(f"s3://AKIAIOSFODNN7EXAMPLE:{PASSWORD}@bucket/x.pth",
                                                   cache_dir=cache),
    }
    for name, call in failures.items():
        with pytest.raises(Exception) as info:
            call()
        assert PASSWORD not in str(info.value) and "***" in str(info.value), (name, str(info.value))
        assert not any(PASSWORD in str(p) for p in tmp_path.rglob("*")), name
    assert "HTTP 404" in str(pytest.raises(CheckpointUnavailableError, failures["404"]).value)
    assert "HTTP 401" in str(pytest.raises(CheckpointUnavailableError, failures["wrong password"]).value)
    assert files_under(tmp_path / "c2") == []


def test_query_secrets_and_tokens_stay_out_of_cache_paths(tmp_path):
    presigned = ("https://b.s3.amazonaws.com/models/sam.pth?X-Amz-Credential=AKIDX%2F2024&X-Amz-Signature=abcdef0123"
                 "&X-Amz-Security-Token=IQoJb3JpZ2lu")
    token = "https://ghp_0123456789abcdef@host.example/sam.pth"
    for uri in (presigned, token):
        path = cache_path_for(uri, cache_dir=tmp_path)
        text = str(path.relative_to(tmp_path))
        assert not any(s in text for s in ("abcdef0123", "IQoJb3JpZ2lu", "AKIDX", "ghp_0123456789abcdef")), text
    # the same host and path with other credentials: another user's cache folder, the same file name
    a = cache_path_for("https://alice:pw1@host.example/sam.pth", cache_dir=tmp_path)
    assert a == cache_path_for("https://alice:pw2@host.example/sam.pth", cache_dir=tmp_path)
    assert a != cache_path_for("https://bob:pw1@host.example/sam.pth", cache_dir=tmp_path)
    assert a.name == "sam.pth" and a.parent.name.startswith("host.example_user-")


# ---------------------------------------------------------------------------------------------------------- S3


def test_s3_download_verified_cached_and_loaded(s3_env, tmp_path, tiny_pth, monkeypatch):
    bucket = s3_env.make_bucket("ckpt-sam")
    data = tiny_pth.read_bytes()
    s3_env.client().put_object(Bucket=bucket, Key="models/sam_tiny.pth", Body=data)
    cache = tmp_path / "cache"
    uri = f"s3://{bucket}/models/sam_tiny.pth"
    # the S3-specific endpoint variable wins over the generic one
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    path = resolve_checkpoint(uri, cache_dir=cache, sha256=sha(data))
    assert path == cache / "s3" / bucket / "models/sam_tiny.pth" and path.read_bytes() == data
    assert files_under(cache) == [path]
    sam = load_sam(uri, cache_dir=cache)
    assert torch.equal(sam.state_dict()["image_encoder.pos_embed"],
                       torch.load(tiny_pth, weights_only=True)["image_encoder.pos_embed"])


def test_s3_checksum_mismatch_and_missing_key(s3_env, tmp_path):
    bucket = s3_env.make_bucket("ckpt-bad")
    s3_env.client().put_object(Bucket=bucket, Key="x.pth", Body=b"abc")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"found {sha(b'abc')}"):
        resolve_checkpoint(f"s3://{bucket}/x.pth", cache_dir=cache, sha256="0" * 64)
    assert files_under(cache) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(f"s3://{bucket}/nope.pth", cache_dir=cache)
    assert files_under(cache) == []


def test_s3_seggpt_directory(s3_env, tmp_path):
    local = save_tiny_seggpt(tmp_path / "tiny_seggpt", canvas=32)
    bucket = s3_env.make_bucket("ckpt-seggpt")
    client = s3_env.client()
    for f in files_under(local):
        client.upload_file(str(f), bucket, f"seggpt/{f.relative_to(local)}")
    model, processor = load_seggpt(f"s3://{bucket}/seggpt", cache_dir=tmp_path / "cache")
    assert model.config.image_size == [64, 32] or tuple(model.config.image_size) == (64, 32)
    assert processor.size["height"] == 32
    assert (tmp_path / "cache" / "s3" / bucket / "seggpt" / "config.json").is_file()


# ------------------------------------------------------------------------------------------------------ SegGPT


def test_tiny_seggpt_saved_and_loaded_from_a_directory(tmp_path):
    from finedetail.models.tiny import build_tiny_seggpt

    directory = save_tiny_seggpt(tmp_path / "seggpt", canvas=32, seed=3)
    assert {p.name for p in directory.iterdir()} >= {"config.json", "preprocessor_config.json"}
    for uri in (directory, f"file://{directory}"):
        model, processor = load_seggpt(uri)
        reference, _ = build_tiny_seggpt(canvas=32, seed=3)
        ref = reference.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
        assert processor.size["height"] == processor.size["width"] == 32
        assert not model.training


def test_missing_seggpt_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_seggpt(tmp_path / "nope")


def test_offline_hub_id_says_how_to_pre_seed(tmp_path):
    with pytest.raises(CheckpointUnavailableError) as info:
        load_seggpt("finedetail-test/no-such-model", cache_dir=tmp_path, offline=True)
    msg = str(info.value)
    assert "--seggpt-checkpoint DIR" in msg
    assert f"hf download finedetail-test/no-such-model --cache-dir {tmp_path / 'huggingface'}" in msg
