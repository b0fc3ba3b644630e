"""One retry policy for every byte the project moves: `finedetail.retry.retry_call` (with `backoff_delay` under a
`RetryPolicy`) is the loop behind an input read, an output write, the job's streamed upload (``jio.write_file``, what
``job.raster`` publishes rasters with) and the checkpoint downloads over HTTP(S) and S3. The endpoints here are real
and local: a loopback HTTP server that fails on cue, and an S3 endpoint with nothing listening (a stopped server)."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import http.server
import logging
import pathlib
import socket
import threading

import pytest

from finedetail import retry as core
from finedetail import s3
from finedetail.models.weights import CheckpointUnavailableError, resolve_checkpoint
from job import io as jio

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 64  # 16 KiB "checkpoint"


def _dead_port() -> int:
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Script(http.server.BaseHTTPRequestHandler):
    """Answers GET /w.pth by popping the next action of ``script``: "503", "short" (Content-Length of the whole
    file, half the body, connection closed) or "ok"."""

    script: list[str] = []
    served: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        action = type(self).script.pop(0) if type(self).script else "ok"
        type(self).served.append(action)
        if action == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA if action == "ok" else DATA[: len(DATA) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(script: list[str]):
    handler = type("Scripted", (_Script,), {"script": list(script), "served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w.pth", handler.served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def backoffs(monkeypatch):
    """Every backoff the shared loop takes, as (max_tries, attempt), with no actual waiting."""
    calls: list[tuple[int, int]] = []

    def spy(policy, attempt, **_):
        calls.append((policy.max_tries, attempt))
        return 0.0

    monkeypatch.setattr(core, "backoff_delay", spy)
    return calls


def _retry_warnings(caplog) -> list[str]:
    """Messages of the retry warnings, each checked to come from the one loop."""
    out = []
    for r in caplog.records:
        if "transient error on" in r.getMessage():
            assert (r.name, r.funcName) == ("finedetail.retry", "retry_call"), (r.name, r.funcName)
            out.append(r.getMessage())
    return out


def test_input_output_upload_and_checkpoints_retry_through_one_loop(tmp_path, monkeypatch, backoffs, caplog):
    dead = s3.S3Settings(endpoint=f"127.0.0.1:{_dead_port()}", scheme="http", connect_timeout=1.0,
                            sdk_max_attempts=1)
    policy = core.RetryPolicy(max_tries=3)
    src, _ = jio.open_storage("s3://archive/in", retry=policy, s3=dead)
    out, _ = jio.open_storage("s3://archive/out", retry=policy, s3=dead)
    (tmp_path / "scene.tif").write_bytes(b"raster")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{dead.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    failing = {
        "input read": (lambda: jio.read_bytes(src, "a.jpg"), jio.StorageError),
        "output write": (lambda: jio.write_bytes_atomic(out, "masks/a.png", b"png"), jio.StorageError),
        "streamed upload": (lambda: jio.write_file(out, "geo/scene.tif", tmp_path / "scene.tif"), jio.StorageError),
        "s3 checkpoint": (lambda: resolve_checkpoint("s3://weights/sam.pth", cache_dir=tmp_path / "c1",
                                                     retry=policy), CheckpointUnavailableError),
    }
    with caplog.at_level(logging.WARNING, logger="finedetail.retry"):
        for name, (call, error) in failing.items():
            caplog.clear()
            backoffs.clear()
            with pytest.raises(error, match="3 tries"):
                call()
            assert backoffs == [(3, 1), (3, 2)], name  # the shared backoff, under the caller's policy
            assert len(_retry_warnings(caplog)) == 2, name
        # HTTP(S) checkpoint: 503, 503, then the file; the default policy is the storage default
        caplog.clear()
        backoffs.clear()
        with _serve(["503", "503"]) as (url, served):
            path = resolve_checkpoint(url, cache_dir=tmp_path / "c2", sha256=hashlib.sha256(DATA).hexdigest())
        assert path.read_bytes() == DATA and served == ["503", "503", "ok"]
        assert backoffs == [(core.RetryPolicy().max_tries, 1), (core.RetryPolicy().max_tries, 2)]
        assert len(_retry_warnings(caplog)) == 2


def test_a_checkpoint_download_cut_short_is_retried_not_cached(tmp_path, backoffs, caplog):
    """No digest known (a user's URL): a body shorter than its Content-Length used to be cached as the checkpoint,
    because http.client ends such a body without an error."""
    with caplog.at_level(logging.WARNING, logger="finedetail.retry"), _serve(["short"]) as (url, served):
        path = resolve_checkpoint(url, cache_dir=tmp_path)
    assert served == ["short", "ok"] and path.read_bytes() == DATA
    assert backoffs == [(core.RetryPolicy().max_tries, 1)]
    assert "IncompleteRead" in _retry_warnings(caplog)[0]


def test_a_checkpoint_that_stays_short_fails_and_leaves_nothing(tmp_path, backoffs):
    with _serve(["short"] * 3) as (url, served), pytest.raises(CheckpointUnavailableError, match="3 tries"):
        resolve_checkpoint(url, cache_dir=tmp_path, retry=core.RetryPolicy(max_tries=3))
    assert served == ["short"] * 3 and [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_no_module_has_a_retry_loop_of_its_own():
    """The backoff is computed in one place: no module but finedetail/retry.py calls backoff_delay, and the
    modules that had loops of their own (checkpoint downloads, geo's upload) no longer sleep."""
    callers, sleepers = set(), set()
    for path in sorted([*(ROOT / "finedetail").rglob("*.py"), *(ROOT / "job").rglob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name == "backoff_delay":
                    callers.add(path.relative_to(ROOT).as_posix())
                if name == "sleep":
                    sleepers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"finedetail/retry.py"}
    assert "finedetail/models/weights.py" not in sleepers
    assert not [p for p in sleepers if p.startswith("job/raster/")], sleepers


def test_streamed_upload_and_download_round_trip_on_s3(s3_env, tmp_path):
    """``write_file`` (job.raster publishes stitched rasters with it) and ``read_to_file`` (S3 checkpoints) on a real S3
    server, in several chunks each."""
    bucket = s3_env.make_bucket("stream-rt")
    data = bytes(range(256)) * (40 << 10)  # 10 MiB: two 8 MiB chunks
    (tmp_path / "big.tif").write_bytes(data)
    out, _ = jio.open_storage(f"s3://{bucket}/run")
    assert jio.write_file(out, "geo/big.tif", tmp_path / "big.tif") == f"s3://{bucket}/run/geo/big.tif"
    jio.read_to_file(out, "geo/big.tif", tmp_path / "back.tif")
    assert (tmp_path / "back.tif").read_bytes() == data


@pytest.mark.parametrize("quiet, warnings", [(False, 2), (True, 0)])
def test_a_quiet_policy_retries_the_same_without_per_try_warnings(quiet, warnings, caplog):
    """``RetryPolicy(quiet=True)`` (the driver's quick weights check) retries exactly as a loud one and logs no
    per-try warning; the final failure is still raised."""
    policy = core.RetryPolicy(max_tries=3, base_delay=0.0, max_delay=0.0, quiet=quiet)
    tries = []

    def down():
        tries.append(1)
        raise ConnectionResetError(104, "Connection reset by peer")

    with caplog.at_level(logging.WARNING, logger="finedetail"), pytest.raises(RuntimeError, match="gave up"):
        core.retry_call(down, policy, what="http://h/w.pth",
                        fail=lambda exc, n, transient: RuntimeError(f"gave up after {n}"))
    assert len(tries) == 3 and len(_retry_warnings(caplog)) == warnings


def test_quiet_must_be_a_bool():
    with pytest.raises(ValueError, match="quiet must be a bool"):
        core.RetryPolicy(quiet="yes")
