"""Storage for the job: local folders and S3, with retries, key safety and redaction.

Everything a stage needs to read inputs / prompts by key, write outputs and
list an archive.  A `Storage` is opened from a URI and addressed with keys
relative to its root:

    storage, root = open_storage("s3://archive/photos")
    keys = list_files(storage)                        # ["a/1.jpg", "b/2.png", ...]
    data = read_bytes(storage, keys[0])
    write_bytes_atomic(out, output_key("masks", keys[0], suffix=".png"), png)

Backends:
  * local paths and ``file://`` URIs: plain files; atomic writes go through a
    hidden temp file in the destination folder + ``os.replace``;
  * ``s3://bucket/prefix``: ``pyarrow.fs.S3FileSystem`` (the filesystem Ray
    Data reads through).  Non-secret settings (endpoint, region) are read from
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
timeouts, 5xx, throttling) with exponential backoff and jitter
(`RetryPolicy`); what still fails raises `StorageError`, whose message names
the URI and key and has credentials removed (`redact`).

This module imports neither ray nor torch, so Ray tasks can import it cheaply.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from finedetail.redaction import redact

__all__ = [
    "IMAGE_EXTS",
    "ObjectNotFoundError",
    "RetryPolicy",
    "S3Settings",
    "Storage",
    "StorageError",
    "backoff_delay",
    "check_writable",
    "delete",
    "exists",
    "is_transient",
    "list_files",
    "mask_key",
    "open_storage",
    "output_key",
    "output_path",
    "read_bytes",
    "read_uri",
    "redact",
    "remove_temp_files",
    "safe_key",
    "write_bytes_atomic",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
"""Extensions `list_files` keeps by default (compared case-insensitively)."""

# S3 caps keys at 1024 bytes of UTF-8; most local filesystems cap a name at 255 bytes.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """An IO operation failed for good: a permanent error, or transient errors on every try.

    Attributes: ``uri`` (storage root URI), ``key`` (relative key or None),
    ``op`` ("read", "write", "list", ...), ``attempts`` (tries made),
    ``transient`` (whether the last error was of a transient kind).
    The message is redacted: it never contains credentials.
    """

    def __init__(self, message: str, *, uri: str | None = None, key: str | None = None,
                 op: str | None = None, attempts: int = 0, transient: bool = False):
        super().__init__(message)
        self.uri = uri
        self.key = key
        self.op = op
        self.attempts = attempts
        self.transient = transient

    def __reduce__(self):
        # Exceptions pickle as cls(*args); carry the keyword attributes as state
        # so the error survives the trip from a Ray worker to the driver.
        return (self.__class__, (str(self),), dict(self.__dict__))


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The key does not exist.  Never retried."""


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient IO errors.

    Try ``n`` (1-based) that fails transiently is followed by a sleep of
    ``uniform(0.5, 1) * min(max_delay, base_delay * 2 ** (n - 1))`` seconds,
    unless it was try ``max_tries``.  ``max_tries=1`` disables retries.
    """

    max_tries: int = 8
    base_delay: float = 0.5
    max_delay: float = 10.0

    def __post_init__(self):
        if not isinstance(self.max_tries, int) or isinstance(self.max_tries, bool) or self.max_tries < 1:
            raise ValueError(f"max_tries must be an int >= 1, got {self.max_tries=}")
        if not self.base_delay >= 0:
            raise ValueError(f"base_delay must be >= 0 seconds, got {self.base_delay=}")
        if not self.max_delay >= self.base_delay:
            raise ValueError(
                f"max_delay must be >= base_delay, got {self.max_delay=} and {self.base_delay=}")


def backoff_delay(policy: RetryPolicy, attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds to sleep after failed try `attempt` (1-based).

    In ``[cap / 2, cap]`` with ``cap = min(max_delay, base_delay * 2 ** (attempt - 1))``.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt=}")
    # Exponent capped so 2 ** n stays a small float for any attempt count.
    cap = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt - 1, 60))
    return cap * (0.5 + 0.5 * (rng or random).random())


# errno values that mean "the other side or the network hiccuped; try again".
_TRANSIENT_ERRNOS = frozenset({
    errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.ECONNABORTED, errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
    errno.ENETRESET, errno.EBUSY,
})
# Error names pyarrow's S3 layer prints as "AWS Error <NAME>" that are worth retrying.
_TRANSIENT_AWS_ERRORS = frozenset({
    "NETWORK_CONNECTION", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "THROTTLING", "SLOW_DOWN",
    "REQUEST_TIMEOUT", "REQUEST_TIMEOUT_EXCEPTION", "THROTTLING_EXCEPTION", "TOO_MANY_REQUESTS",
})
_AWS_ERROR_RE = re.compile(r"AWS Error ([A-Z_]+)(?: \(HTTP status (\d{3})\))?")
_HTTP_STATUS_RE = re.compile(r"HTTP (?:status|response)(?: code)?:? ?(\d{3})", re.IGNORECASE)
_TRANSIENT_TEXT_RE = re.compile(
    r"(?i)connection (?:refused|reset|aborted)|could not connect|couldn't connect|timed? ?out|"
    r"temporarily unavailable|service unavailable|slow ?down|throttl|too many requests|broken pipe"
)


def _transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth retrying: network / timeout / 5xx / throttling, not "missing" or "denied".

    Understands Python OS errors (by type and errno), pyarrow's S3 errors
    ("AWS Error NAME [(HTTP status NNN)]") and, as a fallback, the usual words
    for connection failures in a message.
    """
    if isinstance(exc, StorageError):
        return False
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    message = str(exc)
    aws = _AWS_ERROR_RE.search(message)
    if aws is not None:
        name, status = aws.group(1), aws.group(2)
        if name in _TRANSIENT_AWS_ERRORS:
            return True
        return status is not None and _transient_status(int(status))
    http = _HTTP_STATUS_RE.search(message)
    if http is not None and _transient_status(int(http.group(1))):
        return True
    return bool(_TRANSIENT_TEXT_RE.search(message))


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


_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_suffix(suffix: str) -> None:
    if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix) or ".." in suffix:
        raise ValueError(f"suffix must look like '.png' (dot, then letters, digits, '._-'), got {suffix!r}")


def mask_key(key: str, *, suffix: str = ".png") -> str:
    """`key` with its extension replaced by `suffix`: ``mask_key("a/b.jpg") == "a/b.png"``.

    The key under which a per-input file (e.g. a coarse mask made elsewhere)
    sits next to the input's relative key.  `key` goes through `safe_key`.
    """
    _check_suffix(suffix)
    head, _, name = safe_key(key).rpartition("/")
    stem = posixpath.splitext(name)[0] or name
    return safe_key(f"{head}/{stem}{suffix}" if head else f"{stem}{suffix}")


def output_key(subdir: str, key: str, *, suffix: str) -> str:
    """Relative key of an output: ``<subdir>/<key without its extension><suffix>``.

    ``output_key("masks", "a/b.jpg", suffix=".png") == "masks/a/b.png"``.  Both
    `subdir` and `key` go through `safe_key`; `suffix` must look like ``.png``
    or ``.mask.png``.  Inputs differing only by extension (a.jpg, a.png) map to
    the same output key.
    """
    return safe_key(f"{safe_key(subdir)}/{mask_key(key, suffix=suffix)}")


def output_path(root: str, subdir: str, key: str, *, suffix: str) -> str:
    """`output_key` joined under `root` (a local path, a pyarrow path ``bucket/prefix`` or a URI).

    ``output_path("s3://out/run1", "masks", "a/b.jpg", suffix=".png") == "s3://out/run1/masks/a/b.png"``.
    The result always lies under `root`: hostile keys raise ValueError.
    """
    if not isinstance(root, str) or not root.strip("/"):
        raise ValueError(f"root must be a non-empty path or URI, got {root!r}")
    return f"{root.rstrip('/')}/{output_key(subdir, key, suffix=suffix)}"


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class S3Settings:
    """Non-secret S3 connection settings (picklable; credentials are never stored here).

    ``endpoint`` is ``host[:port]`` for S3-compatible servers (None = AWS),
    ``scheme`` "http" or "https", ``region`` None = resolve from the bucket
    when the filesystem is first created (AWS only).  Timeouts in seconds.
    ``sdk_max_attempts`` is the AWS SDK's own (fast) retry layer inside each of
    our tries; Ray Data reading through `Storage.filesystem` relies on it.
    """

    endpoint: str | None = None
    scheme: str = "https"
    region: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 60.0
    sdk_max_attempts: int = 3

    def __post_init__(self):
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', got {self.scheme=}")
        if self.sdk_max_attempts < 1:
            raise ValueError(f"sdk_max_attempts must be >= 1, got {self.sdk_max_attempts=}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Settings:
        """Settings from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_REGION / AWS_DEFAULT_REGION.

        The S3-specific endpoint variable wins over the global one, AWS_REGION
        over AWS_DEFAULT_REGION (AWS SDK precedence).  With a custom endpoint
        and no region, the region is "us-east-1" (what S3-compatible servers expect).
        """
        env = os.environ if environ is None else environ
        url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        if url is None:
            return cls(region=region)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"AWS endpoint URL must look like http(s)://host[:port], got {redact(url)!r}")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(
                f"AWS endpoint URL must have no path, query or user info, got {redact(url)!r}; "
                "the bucket goes in the s3:// URI")
        return cls(endpoint=parts.netloc, scheme=parts.scheme, region=region or "us-east-1")


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
        region = _retrying(storage, "resolve region of", None, lambda: pafs.resolve_s3_region(bucket))
    return pafs.S3FileSystem(
        region=region,
        endpoint_override=s.endpoint,
        scheme=s.scheme,
        connect_timeout=s.connect_timeout,
        request_timeout=s.request_timeout,
        # Small objects then go up in one PutObject instead of a multipart upload.
        allow_delayed_open=True,
        background_writes=False,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s.sdk_max_attempts),
    )


def _inside_root(storage: Storage, op: str, key: str, path: str) -> None:
    """Raise a permanent StorageError when local ``path`` resolves (symlinks followed) outside the root."""
    real_root, real = os.path.realpath(storage.root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise StorageError(
            f"cannot {op} {storage.uri} key {key!r}: a symbolic link takes it to {real}, outside the root "
            f"{real_root}; links are followed only inside the root: copy the file in, or use a root that holds it",
            uri=storage.uri, key=key, op=op, attempts=0)


def _retrying(storage: Storage, op: str, key: str | None, fn: Callable[[], T],
              *, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `fn`, retrying transient errors per `storage.retry`; wrap the final failure in StorageError."""
    policy = storage.retry
    where = storage.uri if key is None else f"{storage.uri} key {key!r}"
    for attempt in range(1, policy.max_tries + 1):
        try:
            return fn()
        except StorageError:
            raise
        except (OSError, pa.ArrowException) as exc:  # IO failures; programming errors propagate as they are
            detail = redact(f"{type(exc).__name__}: {exc}")
            if isinstance(exc, FileNotFoundError):
                raise ObjectNotFoundError(
                    f"cannot {op} {where}: not found ({detail})",
                    uri=storage.uri, key=key, op=op, attempts=attempt) from None
            transient = is_transient(exc)
            if not transient:
                raise StorageError(
                    f"cannot {op} {where}: permanent error, not retried ({detail}); "
                    + ("check the URI, bucket and credentials" if storage.kind == "s3"
                       else "check the path, its permissions and free space"),
                    uri=storage.uri, key=key, op=op, attempts=attempt) from None
            if attempt == policy.max_tries:
                raise StorageError(
                    f"cannot {op} {where}: still failing after {attempt} tries ({detail}); "
                    "is the storage reachable? raise RetryPolicy.max_tries to wait longer",
                    uri=storage.uri, key=key, op=op, attempts=attempt, transient=True) from None
            delay = backoff_delay(policy, attempt)
            log.warning("transient error on %s (try %d/%d): %s; retrying in %.2f s",
                        where, attempt, policy.max_tries, detail, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # the loop always returns or raises


# --------------------------------------------------------------------------- operations


def _normalise_exts(extensions: Iterable[str] | None) -> tuple[str, ...] | None:
    if extensions is None:
        return None
    if isinstance(extensions, str):
        raise ValueError(f"extensions must be a sequence like ('.png',), got the string {extensions!r}")
    exts = tuple(e.lower() for e in extensions)
    bad = [e for e in exts if not (isinstance(e, str) and e.startswith(".") and len(e) > 1)]
    if bad:
        raise ValueError(f"extensions must start with '.', got {bad!r}")
    return exts


def _list_local(folder: str) -> list[str]:
    if not os.path.exists(folder):
        return []
    if not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", folder)
    keys = []
    # Symlinked folders are not followed (no cycles); symlinked files are listed, and reading one that points
    # outside the root is refused (see "Symbolic links" above), so it becomes an error row, not a silent skip.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            keys.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return keys


def _raise(exc: OSError) -> None:
    raise exc


def _list_s3(storage: Storage, folder: str) -> list[str]:
    # S3 has no folders: an absent prefix lists as empty.  allow_not_found=True
    # would also hide a missing bucket, so the "not found" case is caught here.
    try:
        infos = storage.filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    except FileNotFoundError:
        return []
    start = len(folder.rstrip("/")) + 1
    return [info.path[start:] for info in infos if info.type == pafs.FileType.File]


def list_files(uri_or_storage: str | Storage, prefix: str = "", *,
               extensions: Iterable[str] | None = IMAGE_EXTS, limit: int | None = None,
               refused: list[str] | None = None) -> list[str]:
    """Keys of the files under ``root/prefix``, recursive, sorted, relative to ``root/prefix``.

    ``list_files(storage, "masks")`` lists ``masks/a/b.png`` as ``"a/b.png"``.
    Hidden files and folders (any segment starting with '.') are skipped, so
    are keys `safe_key` refuses (logged as a warning).  `extensions`: keep
    only these (case-insensitive), None = all files.  `limit`: the first
    `limit` keys of the sorted list.  A missing folder or an S3 prefix with no
    objects lists as [] (S3 cannot tell them apart); a missing bucket or a
    local root that is a file raises StorageError.  `refused`: when given, the
    raw names `safe_key` refused (with a matching extension) are appended to
    it, so a caller can account for them instead of losing them silently.
    """
    storage = _as_storage(uri_or_storage)
    exts = _normalise_exts(extensions)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit=}")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str key prefix like 'masks', got {prefix!r}")
    sub = "" if prefix.strip("/") in ("", ".") else safe_key(prefix.rstrip("/"))
    folder = f"{storage.root.rstrip('/')}/{sub}" if sub else storage.root
    if storage.kind == "local":
        raw = _retrying(storage, "list", sub or None, lambda: _list_local(folder))
    else:
        raw = _retrying(storage, "list", sub or None, lambda: _list_s3(storage, folder))
    keys, unsafe = [], []
    for key in raw:
        if any(seg.startswith(".") and seg not in (".", "..") for seg in key.split("/")):
            continue  # hidden; "." and ".." are not hidden names but path tricks: safe_key refuses ".." below
        if exts is not None and not key.lower().endswith(exts):
            continue
        try:
            keys.append(safe_key(key))
        except ValueError:
            unsafe.append(key)
    if refused is not None:
        refused.extend(sorted(unsafe))
    if unsafe:
        log.warning("skipped %d file(s) with unsafe names under %s, e.g. %r",
                    len(unsafe), storage.uri_for(sub) if sub else storage.uri, unsafe[0])
    keys.sort()
    return keys if limit is None else keys[:limit]


def read_bytes(uri_or_storage: str | Storage, key: str) -> bytes:
    """Contents of `key`.  ObjectNotFoundError if absent, StorageError on other failures."""
    storage = _as_storage(uri_or_storage)
    path = storage.path(key)
    key = safe_key(key)
    if storage.kind == "local":
        _inside_root(storage, "read", key, path)

        def read() -> bytes:
            with open(path, "rb") as f:
                return f.read()
    else:
        def read() -> bytes:
            with storage.filesystem.open_input_stream(path) as f:
                return f.read()
    return _retrying(storage, "read", key, read)


def _write_local_atomic(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # Hidden, unique temp name in the same folder: os.replace is then atomic,
    # concurrent writers never share a temp file, and list_files skips leftovers.
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
    path = storage.path(key)
    key = safe_key(key)
    payload = bytes(data)
    if storage.kind == "local":
        _inside_root(storage, "write", key, os.path.dirname(path))  # the file itself: os.replace swaps a link out

        def write() -> None:
            _write_local_atomic(path, payload)
    else:
        def write() -> None:
            with storage.filesystem.open_output_stream(path) as f:
                f.write(payload)
    _retrying(storage, "write", key, write)
    return storage.uri_for(key)


def exists(storage: str | Storage, key: str) -> bool:
    """Whether `key` exists as a file."""
    storage = _as_storage(storage)
    path = storage.path(key)
    if storage.kind == "local":
        return _retrying(storage, "check", safe_key(key), lambda: os.path.isfile(path))
    return _retrying(storage, "check", safe_key(key),
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

    _retrying(storage, "delete", key, remove)


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

    return _retrying(storage, "read", None, read)


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
