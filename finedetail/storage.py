"""Storage: keys under a local folder or an S3 root, read and written atomically, each key checked to stay inside.

The one IO stack of the project: the job's inputs, prompts and outputs (``job.io`` re-exports this module, with
`finedetail.listing`, `finedetail.retry` and `finedetail.s3`, and adds the job's output layout) and the checkpoint
loader's downloads (``finedetail.models.weights``: S3 objects through `read_to_file`) all retry through
`finedetail.retry.retry_call`.  A `Storage` is opened from a URI and addressed with keys relative to its root:

    storage, root = open_storage("s3://archive/photos")
    keys = list_files(storage)                        # finedetail.listing: ["a/1.jpg", "b/2.png", ...]
    data = read_bytes(storage, keys[0])
    write_bytes_atomic(out, "masks/a/1.png", png)

Backends:
  * local paths and ``file://`` URIs: plain files; atomic writes go through a
    hidden temp file in the destination folder + ``os.replace``;
  * ``s3://bucket/prefix``: ``pyarrow.fs.S3FileSystem`` (the filesystem Ray
    Data reads through; `finedetail.s3`).  Non-secret settings (endpoint, region) are read from
    the environment when the storage is opened, on the driver, and travel with
    the pickled `Storage`; credentials never do: every process resolves them
    itself from the standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    AWS_SESSION_TOKEN, ~/.aws files, instance metadata).

Symbolic links (local roots): followed only while they stay inside the root. A key whose real location (every
link resolved, the root's own included) lies outside the root's real location is refused with a permanent
`StorageError`: reading it, or writing or deleting through a linked folder. So an archive cannot make the job read
a file from elsewhere on the machine (and write its pixels into the outputs as overlays), and a linked output
sub-folder cannot make it write elsewhere; links between folders of one archive, and a root that is itself a
link, work. The check runs right before each operation (a link swapped in between is not caught).

Every operation retries transient failures (connection refused / reset,
timeouts, 5xx, throttling) with exponential backoff and jitter (`retrying`, over `finedetail.retry`); what still
fails raises `StorageError`, whose message names the URI and key and has credentials removed (`redact`).

This module imports neither ray nor torch (tests/test_layering.py checks it), so Ray tasks and the checkpoint loader
can import it cheaply; it lives in ``finedetail`` because ``finedetail`` never imports ``job``.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from finedetail.redaction import redact
from finedetail.retry import ObjectNotFoundError, RetryPolicy, StorageError, error_detail, retry_call
from finedetail.s3 import S3Settings, s3_filesystem

__all__ = [
    "Storage",
    "check_writable",
    "delete",
    "exists",
    "open_storage",
    "read_bytes",
    "read_to_file",
    "read_uri",
    "redact",
    "remove_temp_files",
    "retrying",
    "safe_key",
    "write_bytes_atomic",
    "write_file",
]

T = TypeVar("T")

# S3 caps keys at 1024 bytes of UTF-8; most local filesystems cap a name at 255 bytes.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
_CHUNK = 8 << 20  # streamed copies (read_to_file, write_file)


# --------------------------------------------------------------------------- keys


def safe_key(key: str) -> str:
    """`key` normalised to ``seg/seg/name``, or ValueError if it could leave the root.

    Normalisation: empty and ``.`` segments are dropped (``a//./b`` -> ``a/b``).
    Refused: non-str, empty (after normalisation), absolute (leading ``/``),
    any ``..`` segment, backslashes, a trailing ``/`` (a folder, not a file),
    control and format characters (NUL, newline, DEL, bidi overrides, ...),
    lone surrogates (local names whose bytes are not UTF-8),
    a first segment ending in ``:`` (``C:``, ``s3:``), more than 1024 UTF-8
    bytes in total or 255 in one segment.
    """
    if not isinstance(key, str):
        raise ValueError(f"key must be str, got {type(key).__name__}: {key!r}")
    bad = [ch for ch in key if unicodedata.category(ch) in ("Cc", "Cf")]
    if bad:
        raise ValueError(f"key must not contain control or format characters, got {key!r} "
                         f"(found {''.join(bad)!r}); rename the object")
    if any(unicodedata.category(ch) == "Cs" for ch in key):
        # a local file name that is not valid UTF-8 (os.walk hands its bytes over as lone surrogates): it can be
        # neither written to S3 nor stored in the manifest
        raise ValueError(f"key must be valid UTF-8, got {key!r} (undecodable bytes in the file name); rename it")
    if "\\" in key:
        raise ValueError(f"key must use '/' separators and no backslashes, got {key!r}")
    if key.startswith("/"):
        raise ValueError(f"key must be relative to the storage root, got absolute {key!r}")
    if key.endswith("/"):
        raise ValueError(f"key must name a file, got folder-like {key!r} (trailing '/')")
    segments = [s for s in key.split("/") if s not in ("", ".")]
    if not segments:
        raise ValueError(f"key must name a file under the root, got {key!r}")
    if ".." in segments:
        raise ValueError(f"key must not contain '..' segments, got {key!r}")
    if segments[0].endswith(":"):
        raise ValueError(f"key must not start with a drive or scheme, got {key!r}")
    out = "/".join(segments)
    if len(out.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"key must be at most {MAX_KEY_BYTES} UTF-8 bytes, got {len(out.encode())}: {out[:80]!r}...")
    long = [s for s in segments if len(s.encode("utf-8")) > MAX_SEGMENT_BYTES]
    if long:
        raise ValueError(f"each key segment must be at most {MAX_SEGMENT_BYTES} UTF-8 bytes, "
                         f"got {len(long[0].encode())} in {long[0][:40]!r}...")
    return out


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Storage:
    """Where keys live: a local folder or an S3 bucket/prefix.  Holds config only; picklable.

    ``uri``: normalised root (absolute local path, or ``s3://bucket[/prefix]``);
    ``kind``: "local" or "s3"; ``root``: the root as a pyarrow filesystem path
    (absolute path, or ``bucket[/prefix]``); ``s3``: connection settings
    (S3 only); ``retry``: policy for every operation.  The pyarrow filesystem
    is created lazily in each process and dropped when pickled.
    """

    uri: str
    kind: str
    root: str
    s3: S3Settings | None = None
    retry: RetryPolicy = RetryPolicy()
    _fs: pafs.FileSystem | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in ("local", "s3"):
            raise ValueError(f"kind must be 'local' or 's3', got {self.kind=}")
        if self.kind == "s3" and self.s3 is None:
            raise ValueError("an s3 Storage needs S3Settings; build it with open_storage('s3://...')")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fs"] = None  # filesystems hold live connections and maybe credentials
        return state

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem (for Ray Data: ``read_binary_files(paths, filesystem=...)``)."""
        if self._fs is None:
            object.__setattr__(self, "_fs", _make_filesystem(self))
        return self._fs

    def path(self, key: str) -> str:
        """Filesystem path of `key` (checked with `safe_key`) for `filesystem`."""
        return f"{self.root.rstrip('/')}/{safe_key(key)}"

    def uri_for(self, key: str) -> str:
        """Full URI of `key` (for manifests and messages)."""
        return f"{self.uri.rstrip('/')}/{safe_key(key)}"


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def open_storage(uri: str, *, retry: RetryPolicy | None = None,
                 s3: S3Settings | None = None) -> tuple[Storage, str]:
    """Storage for `uri` and its root as a filesystem path.

    `uri`: a local path (relative paths are made absolute), ``file:///abs/path``
    or ``s3://bucket[/prefix]``.  S3 settings default to `S3Settings.from_env()`.
    Nothing is contacted here.
    """
    retry = retry or RetryPolicy()
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"storage URI must be a non-empty string, got {uri!r}")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise ValueError(f"S3 bucket name must be 3-63 chars of a-z, 0-9, '.', '-', got {bucket!r} in {uri!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"S3 URI must not have '?' or '#' parts, got {uri!r}; settings come from AWS_* variables")
        prefix = parts.path.strip("/")
        root = f"{bucket}/{safe_key(prefix)}" if prefix else bucket
        storage = Storage(uri=f"s3://{root}", kind="s3", root=root, s3=s3 or S3Settings.from_env(), retry=retry)
        return storage, root
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI must be file:///absolute/path, got {uri!r}")
        local = unquote(parts.path)
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        local = uri
    else:
        raise ValueError(f"unsupported storage URI {uri!r}: expected a local path, file:///path or s3://bucket/prefix")
    root = os.path.abspath(os.path.expanduser(local))
    return Storage(uri=root, kind="local", root=root, retry=retry), root


def _as_storage(uri_or_storage: str | Storage) -> Storage:
    if isinstance(uri_or_storage, Storage):
        return uri_or_storage
    return open_storage(uri_or_storage)[0]


def _make_filesystem(storage: Storage) -> pafs.FileSystem:
    if storage.kind == "local":
        return pafs.LocalFileSystem()
    s = storage.s3
    region = s.region
    if region is None and s.endpoint is None:
        bucket = storage.root.split("/", 1)[0]
        region = retrying(storage, "resolve region of", None, lambda: pafs.resolve_s3_region(bucket))
    return s3_filesystem(s, region=region)


def _inside_root(storage: Storage, op: str, key: str, path: str) -> None:
    """Raise a permanent StorageError when local ``path`` resolves (symlinks followed) outside the root."""
    real_root, real = os.path.realpath(storage.root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise StorageError(
            f"cannot {op} {storage.uri} key {key!r}: a symbolic link takes it to {real}, outside the root "
            f"{real_root}; links are followed only inside the root: copy the file in, or use a root that holds it",
            uri=storage.uri, key=key, op=op, attempts=0)


def retrying(storage: Storage, op: str, key: str | None, fn: Callable[[], T]) -> T:
    """`retry_call` for operation `op` ("read", "write", ...) on `key` of `storage` under ``storage.retry``: the
    final failure becomes `ObjectNotFoundError` (missing: never retried) or `StorageError`, naming URI and key."""
    where = storage.uri if key is None else f"{storage.uri} key {key!r}"

    def fail(exc: BaseException, attempt: int, transient: bool) -> StorageError:
        detail = error_detail(exc)
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFoundError(f"cannot {op} {where}: not found ({detail})",
                                       uri=storage.uri, key=key, op=op, attempts=attempt)
        if not transient:
            return StorageError(
                f"cannot {op} {where}: permanent error, not retried ({detail}); "
                + ("check the URI, bucket and credentials" if storage.kind == "s3"
                   else "check the path, its permissions and free space"),
                uri=storage.uri, key=key, op=op, attempts=attempt)
        return StorageError(
            f"cannot {op} {where}: still failing after {attempt} tries ({detail}); "
            "is the storage reachable? raise RetryPolicy.max_tries to wait longer",
            uri=storage.uri, key=key, op=op, attempts=attempt, transient=True)

    return retry_call(fn, storage.retry, what=where, fail=fail)


# --------------------------------------------------------------------------- operations


def _source(storage: Storage, key: str) -> tuple[str, Callable[[], BinaryIO]]:
    """(`key` made safe, a function opening it for reading); a local key linked outside the root is refused."""
    path = storage.path(key)
    key = safe_key(key)
    if storage.kind == "local":
        _inside_root(storage, "read", key, path)
        return key, lambda: open(path, "rb")
    return key, lambda: storage.filesystem.open_input_stream(path)


def read_bytes(uri_or_storage: str | Storage, key: str) -> bytes:
    """Contents of `key`.  ObjectNotFoundError if absent, StorageError on other failures."""
    storage = _as_storage(uri_or_storage)
    key, source = _source(storage, key)

    def read() -> bytes:
        with source() as f:
            return f.read()

    return retrying(storage, "read", key, read)


def read_to_file(uri_or_storage: str | Storage, key: str, dest: str | os.PathLike) -> None:
    """Stream `key` into the local file `dest` (created or truncated; a retry starts it over), for objects too big
    to hold in memory (checkpoints).  Errors as `read_bytes`; `dest` holds a part of the object after a failure."""
    storage = _as_storage(uri_or_storage)
    key, source = _source(storage, key)

    def copy() -> None:
        with source() as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)

    retrying(storage, "read", key, copy)


def _write_local_atomic(path: str, fill: Callable[[BinaryIO], object]) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # Hidden, unique temp name in the same folder: os.replace is then atomic,
    # concurrent writers never share a temp file, and list_files skips leftovers.
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _put(storage: Storage, key: str, fill: Callable[[BinaryIO], object]) -> str:
    """Write `key` atomically with ``fill(file)`` (called again on each retry); returns the URI written."""
    path = storage.path(key)
    key = safe_key(key)
    if storage.kind == "local":
        _inside_root(storage, "write", key, os.path.dirname(path))  # the file itself: os.replace swaps a link out

        def write() -> None:
            _write_local_atomic(path, fill)
    else:
        def write() -> None:
            with storage.filesystem.open_output_stream(path) as f:
                fill(f)
    retrying(storage, "write", key, write)
    return storage.uri_for(key)


def write_bytes_atomic(storage: str | Storage, key: str, data: bytes | bytearray | memoryview) -> str:
    """Write `data` to `key` so readers see the old object or the whole new one, never a part.

    Local: hidden temp file in the destination folder, fsync, ``os.replace``
    (parent folders are created).  S3: one PutObject (multipart upload above
    pyarrow's part size, which S3 also publishes atomically on completion).
    Returns the full URI written.
    """
    storage = _as_storage(storage)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}; encode it first")
    payload = bytes(data)
    return _put(storage, key, lambda f: f.write(payload))


def write_file(storage: str | Storage, key: str, local_path: str | os.PathLike) -> str:
    """Copy the local file `local_path` to `key`, streamed in 8 MiB chunks, atomically as `write_bytes_atomic`
    (for files too big to hold in memory: stitched rasters). Returns the full URI written."""
    storage = _as_storage(storage)

    def fill(f: BinaryIO) -> None:
        with open(local_path, "rb") as src:
            shutil.copyfileobj(src, f, _CHUNK)

    return _put(storage, key, fill)


def exists(storage: str | Storage, key: str) -> bool:
    """Whether `key` exists as a file."""
    storage = _as_storage(storage)
    path = storage.path(key)
    if storage.kind == "local":
        return retrying(storage, "check", safe_key(key), lambda: os.path.isfile(path))
    return retrying(storage, "check", safe_key(key),
                     lambda: storage.filesystem.get_file_info(path).type == pafs.FileType.File)


def delete(storage: str | Storage, key: str, *, missing_ok: bool = True) -> None:
    """Delete `key`.  A missing key is fine when `missing_ok`, else ObjectNotFoundError."""
    storage = _as_storage(storage)
    path = storage.path(key)
    key = safe_key(key)

    if storage.kind == "local":
        _inside_root(storage, "delete", key, os.path.dirname(path))  # os.unlink removes a link, not its target

    def remove() -> None:
        try:
            if storage.kind == "local":
                os.unlink(path)
            else:
                storage.filesystem.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    retrying(storage, "delete", key, remove)


def read_uri(uri: str, *, retry: RetryPolicy | None = None) -> bytes:
    """Contents of the single file a URI names: ``/path/job.yaml``, ``file:///...``, ``s3://bucket/key``."""
    storage, root = open_storage(uri, retry=retry)
    if storage.kind == "s3":
        bucket, _, key = root.partition("/")
        if not key:
            raise ValueError(f"URI must name an object, got the bucket {uri!r}; expected s3://bucket/key")
        parent, _ = open_storage(f"s3://{bucket}", retry=retry, s3=storage.s3)
        return read_bytes(parent, key)
    # the user named this very file: a link (a dotfiles-managed job.yaml) is followed wherever it goes

    def read() -> bytes:
        with open(root, "rb") as f:
            return f.read()

    return retrying(storage, "read", None, read)


_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$|^\.write-check-[0-9a-f]{12}$")


def remove_temp_files(storage: str | Storage) -> int:
    """Delete the temp files a killed writer left under a local root; returns how many.

    Only names this module makes are touched (``.<name>.<12 hex>.tmp`` from `write_bytes_atomic`,
    ``.write-check-<12 hex>`` from `check_writable`).  Call it before a job writes, never while another job
    writes to the same root (its in-flight temp files would go).  S3 leaves no temp objects (a PutObject or
    multipart upload becomes visible whole or not at all), so S3 roots are a no-op.
    """
    storage = _as_storage(storage)
    if storage.kind != "local" or not os.path.isdir(storage.root):
        return 0
    removed = 0
    for dirpath, _, names in os.walk(storage.root):
        for name in names:
            if _TEMP_RE.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def check_writable(storage: str | Storage) -> None:
    """Write and delete a hidden probe object under the root; StorageError when that fails.

    Lets a job refuse an unwritable output before any work starts.  A local
    root folder is created if missing.
    """
    storage = _as_storage(storage)
    probe = f".write-check-{uuid.uuid4().hex[:12]}"
    write_bytes_atomic(storage, probe, b"")
    delete(storage, probe)
