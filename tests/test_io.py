"""The storage core (finedetail/storage.py, listing.py, retry.py, s3.py) through its job-facing name job/io.py: local folders and a real S3 server (SeaweedFS on
loopback, `s3_server` fixture)."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import posixpath
import random
import socket
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finedetail import storage as core
from job import io
from job.io import (
    IMAGE_EXTS,
    ObjectNotFoundError,
    RetryPolicy,
    S3Settings,
    StorageError,
    backoff_delay,
    check_writable,
    delete,
    exists,
    is_transient,
    list_files,
    mask_key,
    open_storage,
    output_key,
    output_path,
    read_bytes,
    read_uri,
    redact,
    safe_key,
    write_bytes_atomic,
)

FAST = RetryPolicy(max_tries=3, base_delay=0.0, max_delay=0.0)


def all_files(root) -> list[str]:
    """Every file under `root`, hidden ones included, as sorted '/'-joined relative paths."""
    out = []
    for dirpath, _, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out += [n if rel == "." else f"{rel}/{n}" for n in names]
    return sorted(out)


# ============================================================ keys


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a.png", "a.png"),
        ("a/b/c.jpg", "a/b/c.jpg"),
        ("a//b/./c.jpg", "a/b/c.jpg"),
        ("./a.png", "a.png"),
        ("...png", "...png"),
        ("a/..b/c", "a/..b/c"),
        ("héllo wörld/ø.png", "héllo wörld/ø.png"),
        ("~/x.png", "~/x.png"),
    ],
)
def test_safe_key_normalises(key, expected):
    assert safe_key(key) == expected


HOSTILE_KEYS = [
    "",
    ".",
    "./",
    "/",
    "//",
    "/etc/passwd",
    "//server/share/x",
    "..",
    "../x.png",
    "a/../../x.png",
    "a/b/..",
    "a/./../b",
    "a\\..\\..\\x.png",
    "C:\\windows\\x",
    "C:/x.png",
    "s3://bucket/x",
    "a/b/",
    "a\x00b.png",
    "a\nb.png",
    "a\rb.png",
    "\x1b[31mred.png",
    "a\x7fb.png",
    "evil\u202egnp.exe",
    "zero\u200bwidth.png",
    "x" * 256 + ".png",
    "a/" * 600 + "x",
    None,
    b"a.png",
    5,
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_safe_key_refuses_hostile(key):
    with pytest.raises(ValueError, match="key"):
        safe_key(key)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "\x00", "\n", " ", "é", "\u202e"]), max_size=16)
       .map("".join))
def test_safe_key_result_stays_under_root(key):
    try:
        out = safe_key(key)
    except ValueError:
        return
    joined = posixpath.normpath(posixpath.join("/root", out))
    assert joined.startswith("/root/") and joined == f"/root/{out}"
    assert ".." not in out.split("/") and "\\" not in out and "\x00" not in out
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in out)
    assert safe_key(out) == out  # idempotent


@pytest.mark.parametrize(
    ("subdir", "key", "suffix", "expected"),
    [
        ("masks", "a/b.jpg", ".png", "masks/a/b.png"),
        ("masks", "b.JPG", ".png", "masks/b.png"),
        ("masks", "a/b.tar.gz", ".png", "masks/a/b.tar.png"),
        ("masks", "noext", ".png", "masks/noext.png"),
        ("out/overlays", "x/y.tif", ".mask.png", "out/overlays/x/y.mask.png"),
        ("masks", "a//./b.jpg", ".json", "masks/a/b.json"),
    ],
)
def test_output_key(subdir, key, suffix, expected):
    assert output_key(subdir, key, suffix=suffix) == expected


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("s3://out/run1", "s3://out/run1/masks/a/b.png"),
        ("s3://out/run1/", "s3://out/run1/masks/a/b.png"),
        ("/data/out", "/data/out/masks/a/b.png"),
        ("bucket/prefix", "bucket/prefix/masks/a/b.png"),
    ],
)
def test_output_path(root, expected):
    assert output_path(root, "masks", "a/b.jpg", suffix=".png") == expected


@pytest.mark.parametrize("key", ["../../etc/cron.d/x.jpg", "/etc/x.jpg", "a/../../b.jpg", "a\\..\\b.jpg", "a\x00.jpg"])
def test_output_path_refuses_hostile_keys(key):
    with pytest.raises(ValueError):
        output_path("/data/out", "masks", key, suffix=".png")


@pytest.mark.parametrize(
    ("subdir", "suffix"),
    [("../masks", ".png"), ("/masks", ".png"), ("masks", "png"), ("masks", "./x"), ("masks", ".png/../../x"),
     ("masks", ".."), ("masks", ""), ("", ".png")],
)
def test_output_key_refuses_bad_subdir_or_suffix(subdir, suffix):
    with pytest.raises(ValueError):
        output_key(subdir, "a.jpg", suffix=suffix)


# ============================================================ URIs and settings


@pytest.mark.parametrize(
    ("uri", "kind", "root"),
    [
        ("/data/in", "local", "/data/in"),
        ("/data/in/", "local", "/data/in"),
        ("file:///data/in", "local", "/data/in"),
        ("file:///data/my%20photos", "local", "/data/my photos"),
        ("file://localhost/data/in", "local", "/data/in"),
        ("s3://bucket", "s3", "bucket"),
        ("s3://bucket/", "s3", "bucket"),
        ("s3://bucket/pre/fix/", "s3", "bucket/pre/fix"),
        ("s3://my.bucket-1/a//b", "s3", "my.bucket-1/a/b"),
    ],
)
def test_open_storage(uri, kind, root):
    storage, got_root = open_storage(uri, s3=S3Settings())
    assert (storage.kind, storage.root, got_root) == (kind, root, root)
    assert storage.uri == (root if kind == "local" else f"s3://{root}")


def test_open_storage_relative_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage, root = open_storage("in")
    assert root == str(tmp_path / "in") and storage.kind == "local"


@pytest.mark.parametrize(
    "uri",
    ["", "gs://bucket/x", "http://host/x", "s3://", "s3://Bad_Bucket/x", "s3://ab/x", "s3://bucket/../x",
     "s3://bucket/x?versionId=1", "file://otherhost/x", None],
)
def test_open_storage_refuses(uri):
    with pytest.raises(ValueError):
        open_storage(uri)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, S3Settings()),
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, S3Settings(region="eu-west-1")),
        ({"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-north-1"}, S3Settings(region="eu-north-1")),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
         S3Settings(endpoint="127.0.0.1:9000", scheme="http", region="us-east-1")),
        ({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio.local/", "AWS_REGION": "x-1"},
         S3Settings(endpoint="minio.local", scheme="https", region="x-1")),
    ],
)
def test_s3_settings_from_env(env, expected):
    assert S3Settings.from_env(env) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:9000", "ftp://host", "http://host/bucket", "http://u:pw@host"])
def test_s3_settings_refuses_bad_endpoint(url):
    with pytest.raises(ValueError, match="endpoint") as info:
        S3Settings.from_env({"AWS_ENDPOINT_URL": url})
    assert "pw@" not in str(info.value)


# ============================================================ retry policy and classification


@pytest.mark.parametrize(
    "kwargs", [{"max_tries": 0}, {"max_tries": 1.5}, {"max_tries": True}, {"base_delay": -1},
               {"base_delay": 2, "max_delay": 1}, {"base_delay": float("nan")}],
)
def test_retry_policy_validates(kwargs):
    with pytest.raises(ValueError, match="="):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize(("attempt", "cap"), [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (500, 10.0)])
def test_backoff_delay_bounds(attempt, cap):
    policy = RetryPolicy()
    rng = random.Random(attempt)
    delays = [backoff_delay(policy, attempt, rng=rng) for _ in range(200)]
    assert all(cap / 2 <= d <= cap for d in delays)
    assert max(delays) - min(delays) > 0  # jittered


AWS_DOWN = ("When reading information for key 'a.png' in bucket 'b': AWS Error NETWORK_CONNECTION during "
            "HeadObject operation: curlCode: 7, Could not connect to server")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(errno.ETIMEDOUT, "timed out"), True),
        (OSError(AWS_DOWN), True),
        (OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate."), True),
        (OSError("AWS Error THROTTLING during ListObjectsV2 operation"), True),
        (OSError("AWS Error INTERNAL_FAILURE during PutObject operation"), True),
        (OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject operation"), True),
        (OSError("AWS Error UNKNOWN (HTTP status 429) during GetObject operation"), True),
        (OSError("AWS Error UNKNOWN (HTTP status 400) during GetObject operation"), False),
        (OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."), False),
        (OSError("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation"), False),
        (OSError("AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2 operation"), False),
        (OSError("AWS Error INVALID_ACCESS_KEY_ID during PutObject operation"), False),
        (FileNotFoundError(errno.ENOENT, "missing"), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (ValueError("bad"), False),
        (RuntimeError("upstream: Connection reset by peer"), True),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


# ============================================================ redaction

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (f"aws_secret_access_key={SECRET}", SECRET),
        (f'{{"SecretAccessKey": "{SECRET}"}}', SECRET),
        ("key id AKIAIOSFODNN7EXAMPLE denied", "AKIAIOSFODNN7EXAMPLE"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIDX%2F2024&X-Amz-Signature=abcdef0123", "abcdef0123"),
        ("Authorization: AWS4-HMAC-SHA256 Credential=xyz, Signature=fedcba", "fedcba"),
        ("http://user:hunter22@proxy:8080/", "hunter22"),
        ("session_token: IQoJb3JpZ2luX2VjEH", "IQoJb3JpZ2luX2VjEH"),
        ("cannot reach https://ghp_0123456789abcdefXYZ@host/sam.pth (HTTP 404)", "ghp_0123456789abcdefXYZ"),
        ("https://acct.blob.core.windows.net/c/sam.pth?sv=2022-11-02&sig=Zm9vYmFyYmF6%3D", "Zm9vYmFyYmF6"),
        ("https://d1.cloudfront.net/sam.pth?Expires=1&Policy=eyJTdGF0ZW1lbnQi&Key-Pair-Id=K2JCJMDEHXQW5F",
         "eyJTdGF0ZW1lbnQi"),
    ],
)
def test_redact_patterns(text, gone):
    out = redact(text)
    assert gone not in out and "***" in out


def test_redact_is_the_library_function():
    from finedetail.redaction import redact as library_redact

    assert redact is library_redact  # one implementation: the checkpoint loader and the job mask the same way


def test_redact_env_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "plainsecretvalue")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-123456")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ab")  # too short to be a credential: left alone
    out = redact("x plainsecretvalue y tok-123456 z ab", secrets=["extra-secret"])
    assert out == "x *** y *** z ab"
    assert redact("keep extra-secret out", secrets=["extra-secret"]) == "keep *** out"


@pytest.mark.parametrize(
    "text",
    ["When reading information for key 'a/b.png' in bucket 'bkt': AWS Error ACCESS_DENIED during HeadObject",
     "cannot read /data/in key 'x.jpg': not found", "sha 0123456789abcdef0123456789abcdef01234567"],
)
def test_redact_leaves_ordinary_messages(text, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    assert redact(text) == text


# ============================================================ local storage


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "in"
    files = {
        "a/1.jpg": b"1", "a/2.PNG": b"2", "b/c/3.tif": b"3", "root.jpeg": b"r", "notes.txt": b"n",
        ".hidden/x.png": b"h", "a/.x.png": b"h", "a/bad\\name.png": b"bad", "b/.cache/y.jpg": b"h",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_list_files_local(tree):
    assert list_files(str(tree)) == ["a/1.jpg", "a/2.PNG", "b/c/3.tif", "root.jpeg"]
    everything = ["a/1.jpg", "a/2.PNG", "b/c/3.tif", "notes.txt", "root.jpeg"]
    assert list_files(f"file://{tree}", extensions=None) == everything
    assert list_files(str(tree), extensions=(".TXT",)) == ["notes.txt"]
    assert list_files(str(tree), limit=2) == ["a/1.jpg", "a/2.PNG"]
    assert list_files(str(tree), limit=0) == []


def test_list_files_warns_about_unsafe_names(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="finedetail.listing"):
        keys = list_files(str(tree))
    assert "a/bad\\name.png" not in keys
    assert "skipped 1 file(s) with unsafe names" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"extensions": ".png"}, "sequence"), ({"extensions": ("png",)}, "start"), ({"limit": -1}, "limit"),
     ({"limit": True}, "limit")],
)
def test_list_files_refuses_bad_arguments(tree, kwargs, match):
    with pytest.raises(ValueError, match=match):
        list_files(str(tree), **kwargs)


def test_list_files_prefix(tree):
    storage, _ = open_storage(str(tree))
    assert list_files(storage, "a") == ["1.jpg", "2.PNG"]
    assert list_files(storage, "b/") == ["c/3.tif"]
    assert list_files(storage, "b/c", extensions=(".tif",)) == ["3.tif"]
    assert list_files(storage, ".") == list_files(storage)
    with pytest.raises(ValueError):
        list_files(storage, "../in")


def test_list_files_exclude_leaves_out_a_folder_at_any_depth(tree):
    (tree / "out/masks").mkdir(parents=True)
    (tree / "out/masks/root.png").write_bytes(b"m")
    (tree / "out/_attempts/run").mkdir(parents=True)
    (tree / "out/_attempts/run/x.png").write_bytes(b"n")
    (tree / "outside.png").write_bytes(b"o")  # shares the name's first letters, not the folder
    (tree / "b/out").mkdir()
    (tree / "b/out/4.png").write_bytes(b"4")
    assert list_files(str(tree), exclude=("out",)) == ["a/1.jpg", "a/2.PNG", "b/c/3.tif", "b/out/4.png",
                                                       "outside.png", "root.jpeg"]
    assert list_files(str(tree), exclude=("b/out/", "out")) == ["a/1.jpg", "a/2.PNG", "b/c/3.tif", "outside.png",
                                                               "root.jpeg"]
    assert "out/masks/root.png" in list_files(str(tree))
    with pytest.raises(ValueError, match="exclude must be a sequence"):
        list_files(str(tree), exclude="out")


def test_relative_root_local(tmp_path):
    (tmp_path / "photos/out").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    assert io.relative_root(str(tmp_path / "photos/out"), str(tmp_path / "photos")) == "out"
    assert io.relative_root(str(tmp_path / "photos/out"), str(tmp_path / "link")) == "out"  # through a symlink
    assert io.relative_root(str(tmp_path / "photos/./"), str(tmp_path / "photos")) == ""
    assert io.relative_root(str(tmp_path / "photos-out"), str(tmp_path / "photos")) is None
    assert io.relative_root(str(tmp_path), str(tmp_path / "photos")) is None
    assert io.relative_root("s3://bucket/photos/out", str(tmp_path)) is None


@pytest.mark.parametrize(("inner", "outer", "expected"), [
    ("s3://bk1/photos/out", "s3://bk1/photos", "out"),
    ("s3://bk1/photos/out/deep/", "s3://bk1/photos/", "out/deep"),
    ("s3://bk1/photos", "s3://bk1/photos", ""),
    ("s3://bk1/out", "s3://bk1", "out"),
    ("s3://bk1/photos-out", "s3://bk1/photos", None),
    ("s3://bk1/photos", "s3://bk1/photos/out", None),
    ("s3://bk2/photos/out", "s3://bk1/photos", None),
])
def test_relative_root_s3(inner, outer, expected):
    assert io.relative_root(inner, outer) == expected


def test_list_files_missing_folder_is_empty(tmp_path):
    assert list_files(str(tmp_path / "nope")) == []
    assert list_files(str(tmp_path), "nope/deeper") == []


def test_list_files_root_is_a_file(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(StorageError, match="permanent") as info:
        list_files(str(tmp_path / "f.png"))
    assert str(tmp_path / "f.png") in str(info.value)


@pytest.mark.parametrize(
    ("key", "suffix", "expected"),
    [("a/b.jpg", ".png", "a/b.png"), ("b.JPEG", ".png", "b.png"), ("x", ".npy", "x.npy"),
     ("a/./b.tif", ".png", "a/b.png")],
)
def test_mask_key(key, suffix, expected):
    assert mask_key(key, suffix=suffix) == expected


def test_read_uri_and_check_writable_local(tmp_path):
    (tmp_path / "my dir").mkdir()
    (tmp_path / "my dir/job.yaml").write_bytes(b"a: 1\n")
    assert read_uri(str(tmp_path / "my dir/job.yaml")) == b"a: 1\n"
    assert read_uri(f"file://{tmp_path}/my%20dir/job.yaml") == b"a: 1\n"
    with pytest.raises(ObjectNotFoundError):
        read_uri(str(tmp_path / "missing.yaml"))
    check_writable(str(tmp_path / "new/out"))
    assert all_files(tmp_path) == ["my dir/job.yaml"]


def test_symlinks_are_followed_only_inside_the_root(tmp_path):
    """Inputs: a linked file whose target is outside the root is not read; a link to a file of the same root is, and
    so is everything under a root that is itself a link. Outputs: nothing is written or deleted through a linked
    folder that leads outside the root; a linked folder inside it works. A named config file is followed anywhere."""
    outside, real_in, out = tmp_path / "outside", tmp_path / "real-in", tmp_path / "out"
    for d in (outside, real_in / "sub", out):
        d.mkdir(parents=True)
    (outside / "secret.png").write_bytes(b"not yours")
    (real_in / "sub/a.png").write_bytes(b"a")
    os.symlink(outside / "secret.png", real_in / "escape.png")
    os.symlink("sub/a.png", real_in / "inside.png")  # relative, stays inside
    os.symlink(outside, real_in / "escape-dir")
    os.symlink(real_in, tmp_path / "in")  # the root itself is a link
    storage = open_storage(str(tmp_path / "in"))[0]
    assert read_bytes(storage, "inside.png") == b"a" and read_bytes(storage, "sub/a.png") == b"a"
    for key in ("escape.png", "escape-dir/secret.png"):
        with pytest.raises(StorageError, match="outside the root") as info:
            read_bytes(storage, key)
        assert str(outside / "secret.png") in str(info.value) and info.value.attempts == 0  # permanent, not retried
    assert "escape.png" in list_files(storage)  # listed, so the job accounts for it as an error row
    # outputs
    os.symlink(outside, out / "masks")
    (out / "probs-real").mkdir()
    os.symlink(out / "probs-real", out / "probs")
    ostore = open_storage(str(out))[0]
    with pytest.raises(StorageError, match="outside the root"):
        write_bytes_atomic(ostore, "masks/a/b.png", b"x")
    with pytest.raises(StorageError, match="outside the root"):
        delete(ostore, "masks/secret.png")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]  # nothing written or deleted there
    write_bytes_atomic(ostore, "probs/a.png", b"p")
    assert (out / "probs-real/a.png").read_bytes() == b"p"
    # a link at the file itself is replaced, never written through
    os.symlink(outside / "secret.png", out / "c.png")
    write_bytes_atomic(ostore, "c.png", b"c")
    assert not (out / "c.png").is_symlink() and (outside / "secret.png").read_bytes() == b"not yours"
    # --config names one file: followed wherever it points
    (outside / "job.yaml").write_bytes(b"a: 1\n")
    os.symlink(outside / "job.yaml", real_in / "job.yaml")
    assert read_uri(str(real_in / "job.yaml")) == b"a: 1\n"


def test_local_round_trip(tmp_path):
    storage, root = open_storage(str(tmp_path / "out"))
    uri = write_bytes_atomic(storage, "masks/a/b.png", b"\x89PNG data")
    assert uri == f"{root}/masks/a/b.png"
    assert read_bytes(storage, "masks/a/b.png") == b"\x89PNG data"
    assert read_bytes(root, "masks//a/./b.png") == b"\x89PNG data"
    assert exists(storage, "masks/a/b.png") and not exists(storage, "masks/a") and not exists(storage, "zz.png")
    write_bytes_atomic(storage, "masks/a/b.png", bytearray(b"new"))
    assert (tmp_path / "out/masks/a/b.png").read_bytes() == b"new"
    assert all_files(tmp_path / "out") == ["masks/a/b.png"]  # no temp files left behind
    delete(storage, "masks/a/b.png")
    delete(storage, "masks/a/b.png")  # missing_ok
    with pytest.raises(ObjectNotFoundError):
        delete(storage, "masks/a/b.png", missing_ok=False)
    with pytest.raises(ObjectNotFoundError, match=r"masks/a/b\.png"):
        read_bytes(storage, "masks/a/b.png")


def test_write_refuses_non_bytes(tmp_path):
    storage, _ = open_storage(str(tmp_path))
    with pytest.raises(TypeError, match="bytes"):
        write_bytes_atomic(storage, "a.txt", "text")


def test_failed_local_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    storage, _ = open_storage(str(tmp_path), retry=FAST)
    write_bytes_atomic(storage, "m/a.png", b"old")

    def deny(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", deny)
    with pytest.raises(StorageError, match="permanent") as info:
        write_bytes_atomic(storage, "m/a.png", b"new")
    assert info.value.attempts == 1 and info.value.key == "m/a.png"
    assert all_files(tmp_path) == ["m/a.png"]
    assert (tmp_path / "m/a.png").read_bytes() == b"old"


def test_concurrent_writes_to_one_key(tmp_path):
    storage, _ = open_storage(str(tmp_path))
    payloads = [bytes([i]) * 50_000 for i in range(8)]
    threads = [threading.Thread(target=write_bytes_atomic, args=(storage, "k/x.png", p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / "k/x.png").read_bytes() in payloads
    assert all_files(tmp_path) == ["k/x.png"]


@pytest.mark.parametrize("key", ["../escape.png", "/abs.png", "a/../../escape.png", "a\\..\\e.png", "a\x00.png", ""])
def test_hostile_keys_refused_by_operations(tmp_path, key):
    storage, _ = open_storage(str(tmp_path / "out"))
    for call in (lambda: write_bytes_atomic(storage, key, b"x"), lambda: read_bytes(storage, key),
                 lambda: exists(storage, key), lambda: delete(storage, key)):
        with pytest.raises(ValueError):
            call()
    assert all_files(tmp_path) == []


def test_transient_errors_are_retried(tmp_path, monkeypatch, caplog):
    storage, _ = open_storage(str(tmp_path), retry=RetryPolicy(max_tries=4, base_delay=0.0, max_delay=0.0))
    real = core._write_local_atomic
    calls = []

    def flaky(path, data):
        calls.append(path)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        real(path, data)

    monkeypatch.setattr(core, "_write_local_atomic", flaky)
    with caplog.at_level(logging.WARNING, logger="finedetail.retry"):
        write_bytes_atomic(storage, "a.png", b"ok")
    assert len(calls) == 3 and (tmp_path / "a.png").read_bytes() == b"ok"
    assert "try 1/4" in caplog.text and "try 2/4" in caplog.text


def test_retries_give_up_with_clear_error(tmp_path, monkeypatch):
    storage, _ = open_storage(str(tmp_path), retry=FAST)
    calls = []

    def down(path, data):
        calls.append(path)
        raise TimeoutError("timed out")

    monkeypatch.setattr(core, "_write_local_atomic", down)
    with pytest.raises(StorageError, match=r"still failing after 3 tries") as info:
        write_bytes_atomic(storage, "m/a.png", b"x")
    err = info.value
    assert len(calls) == 3 and err.attempts == 3 and err.transient and err.op == "write"
    assert str(tmp_path) in str(err) and "'m/a.png'" in str(err)


def test_local_storage_pickles(tmp_path):
    storage, _ = open_storage(str(tmp_path), retry=FAST)
    write_bytes_atomic(storage, "a.png", b"1")
    _ = storage.filesystem
    clone = pickle.loads(pickle.dumps(storage))
    assert clone == storage and clone._fs is None
    assert read_bytes(clone, "a.png") == b"1"


def test_storage_error_pickles():
    err = ObjectNotFoundError("cannot read s3://b key 'k'", uri="s3://b", key="k", op="read", attempts=1)
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), str(clone), clone.uri, clone.key, clone.op) == (type(err), str(err), "s3://b", "k", "read")


def test_default_extensions():
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTS)


# ============================================================ S3 (real SeaweedFS on loopback)


def new_bucket(s3_server) -> str:
    return s3_server.make_bucket(f"t-{uuid.uuid4().hex[:16]}")


def test_s3_round_trip_and_listing(s3_env):
    bucket = new_bucket(s3_env)
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="in/.hidden/x.png", Body=b"h")
    client.put_object(Bucket=bucket, Key="in/a/.x.png", Body=b"h")
    client.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"n")
    client.put_object(Bucket=bucket, Key="in/folder/", Body=b"")  # a "folder" marker object
    client.put_object(Bucket=bucket, Key="inside.png", Body=b"not under in/")

    storage, root = open_storage(f"s3://{bucket}/in/", retry=FAST)
    assert root == f"{bucket}/in" and storage.s3.endpoint == s3_env.endpoint.removeprefix("http://")
    for key, data in {"b/2.PNG": b"2", "a/1.jpg": b"1" * 100_000, "c/d/3.tif": b"3"}.items():
        assert write_bytes_atomic(storage, key, data) == f"s3://{bucket}/in/{key}"
    assert list_files(storage) == ["a/1.jpg", "b/2.PNG", "c/d/3.tif"]
    assert list_files(f"s3://{bucket}/in", extensions=None, limit=4) == ["a/1.jpg", "b/2.PNG", "c/d/3.tif", "notes.txt"]
    assert list_files(f"s3://{bucket}/in/c") == ["d/3.tif"]
    assert list_files(f"s3://{bucket}/empty") == []
    assert list_files(storage, "c") == ["d/3.tif"] and list_files(storage, "nothing") == []
    assert read_uri(f"s3://{bucket}/in/b/2.PNG") == b"2"
    with pytest.raises(ValueError, match="object"):
        read_uri(f"s3://{bucket}")
    check_writable(storage)
    assert read_bytes(storage, "a/1.jpg") == b"1" * 100_000
    assert read_bytes(f"s3://{bucket}", "in/b/2.PNG") == b"2"
    assert client.get_object(Bucket=bucket, Key="in/c/d/3.tif")["Body"].read() == b"3"
    assert exists(storage, "b/2.PNG") and not exists(storage, "b") and not exists(storage, "zz.png")

    write_bytes_atomic(storage, "b/2.PNG", b"two")
    assert read_bytes(storage, "b/2.PNG") == b"two"
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # single PUTs, nothing dangling
    delete(storage, "b/2.PNG")
    assert not exists(storage, "b/2.PNG")
    with pytest.raises(ObjectNotFoundError, match=rf"s3://{bucket}/in key 'b/2.PNG'"):
        read_bytes(storage, "b/2.PNG")
    with pytest.raises(ValueError):
        write_bytes_atomic(storage, "../escape.png", b"x")


def test_s3_listing_leaves_out_an_output_inside_the_input(s3_env):
    """``--input s3://b/photos --output s3://b/photos/out``: the job's input keys leave out everything under out/
    (masks, _attempts, manifest, ...), and only that folder (photos/outside.png and photos/out2/ stay)."""
    from job.config import job_config_from_dict
    from job.run import list_inputs

    bucket = new_bucket(s3_env)
    client = s3_env.client()
    for key in ("photos/a.png", "photos/outside.png", "photos/out2/b.png", "photos/out/masks/a.png",
                "photos/out/overlays/a.png", "photos/out/_attempts/r/c.png", "photos/out/manifest/p.parquet"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    cfg = job_config_from_dict({"input": f"s3://{bucket}/photos", "output": f"s3://{bucket}/photos/out",
                                "prompts": f"s3://{bucket}/prompts", "backend": "proxy"})
    assert list_inputs(cfg) == ["a.png", "out2/b.png", "outside.png"]
    assert list_files(f"s3://{bucket}/photos", exclude=("out",)) == ["a.png", "out2/b.png", "outside.png"]
    assert "out/masks/a.png" in list_files(f"s3://{bucket}/photos")


def test_s3_storage_pickles_without_credentials(s3_env):
    bucket = new_bucket(s3_env)
    storage, _ = open_storage(f"s3://{bucket}/p", retry=FAST)
    write_bytes_atomic(storage, "a.png", b"payload")  # creates the filesystem
    blob = pickle.dumps(storage)
    for secret in (s3_env.secret_key, s3_env.access_key):
        assert secret.encode() not in blob
    clone = pickle.loads(blob)
    assert clone == storage and clone._fs is None
    assert read_bytes(clone, "a.png") == b"payload"
    assert list_files(clone) == ["a.png"]


def test_s3_outage_is_ridden_out(s3_env):
    bucket = new_bucket(s3_env)
    storage, _ = open_storage(f"s3://{bucket}/out", retry=RetryPolicy(max_tries=40, base_delay=0.2, max_delay=1.0))
    write_bytes_atomic(storage, "before.png", b"b")
    result: dict[str, object] = {}

    def write():
        try:
            result["uri"] = write_bytes_atomic(storage, "masks/during.png", b"written during the outage")
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            result["error"] = exc

    s3_env.stop()
    try:
        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(3.0)
        assert thread.is_alive(), f"write finished while the server was down: {result}"
    finally:
        s3_env.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in result, result
    assert result["uri"] == f"s3://{bucket}/out/masks/during.png"
    assert read_bytes(storage, "masks/during.png") == b"written during the outage"
    assert read_bytes(storage, "before.png") == b"b"  # data survived the restart


def test_s3_wrong_secret_is_permanent_and_redacted(s3_env, monkeypatch, caplog):
    bucket = new_bucket(s3_env)
    wrong = f"wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    storage, _ = open_storage(f"s3://{bucket}/p", retry=RetryPolicy(max_tries=5, base_delay=0.5))
    calls = {
        "'k/a.png'": lambda: write_bytes_atomic(storage, "k/a.png", b"x"),
        "list": lambda: list_files(storage),
        "'.write-check-": lambda: check_writable(storage),
    }
    with caplog.at_level(logging.DEBUG, logger="finedetail"):
        for named, call in calls.items():
            with pytest.raises(StorageError, match="permanent") as info:
                call()
            err = info.value
            text = f"{err} {err!r}"
            assert err.attempts == 1 and not err.transient  # not retried
            assert f"s3://{bucket}/p" in text and named in text
            for secret in (wrong, s3_env.secret_key, s3_env.access_key):
                assert secret not in text
    for secret in (wrong, s3_env.secret_key, s3_env.access_key):
        assert secret not in caplog.text


def test_s3_missing_bucket_is_permanent(s3_env):
    storage, _ = open_storage(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p", retry=FAST)
    with pytest.raises(StorageError, match="NO_SUCH_BUCKET") as info:
        list_files(storage)
    assert info.value.attempts == 1 and storage.uri in str(info.value)


def test_s3_unreachable_endpoint_gives_up(s3_env):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = S3Settings(endpoint=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                             connect_timeout=1.0, sdk_max_attempts=1)
    storage, _ = open_storage("s3://bucket/p", retry=RetryPolicy(max_tries=2, base_delay=0.01, max_delay=0.01),
                              s3=unreachable)
    with pytest.raises(StorageError, match="still failing after 2 tries") as info:
        read_bytes(storage, "a/b.png")
    err = info.value
    assert err.transient and err.attempts == 2 and "s3://bucket/p key 'a/b.png'" in str(err)
    assert s3_env.secret_key not in str(err)


def test_io_module_imports_neither_ray_nor_torch():
    code = "import sys, job.io; bad = [m for m in ('ray', 'torch') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
