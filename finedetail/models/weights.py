"""Where model weights come from: resolve a URI or Hub id to local files, fetch them into the cache, verify them.

URIs: a local path, ``file://PATH``, ``s3://bucket/key`` (``finedetail.storage``: the pyarrow S3 filesystem the job
reads its inputs with, honouring ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), ``https://`` / ``http://``
(urllib; a ``user:password@`` in the URL is sent as HTTP basic auth, never to a host it redirects to; presigned
URLs work as they are), and for SegGPT a Hugging Face Hub id. Every download retries transient failures
(connection refused / reset, timeouts, 5xx, 429, a response cut short) through ``finedetail.retry.retry_call``
under a ``RetryPolicy``: the loop and policy the job's inputs and outputs use. Remote files land in a
cache directory (``$FINEDETAIL_CACHE``, else ``~/.cache/finedetail``) under a readable path derived from the URI
(credentials never appear in it), so a machine without network can be pre-seeded by copying the file there.
Downloads go to a temporary file in the destination directory, are checked against an expected SHA-256 when one is
known, and are moved into place with ``os.replace``; a failed or mismatching download leaves nothing behind.

A file that is already there (a local path, or a cached file the user may have pre-seeded) is never deleted or
replaced: when its digest disagrees with the expected one, the error says both digests and the path, and
``sha256="skip"`` (``--sam-sha256 skip``) accepts the file knowingly. Every message that quotes a URI goes through
``finedetail.redaction.redact``. Loading the files into models is ``finedetail.models.checkpoints``.

Imports no torch; pyarrow (``finedetail.storage``) and huggingface_hub are imported inside the functions that need
them: importing this module is cheap.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from finedetail.redaction import redact

if TYPE_CHECKING:
    from finedetail.retry import RetryPolicy

__all__ = [
    "ChecksumMismatchError",
    "CheckpointUnavailableError",
    "DEFAULT_SEGGPT",
    "SAM_SHA256",
    "SAM_URLS",
    "SKIP_SHA256",
    "cache_path_for",
    "check_sha256_option",
    "default_cache_dir",
    "file_sha256",
    "hub_settings",
    "is_hub_id",
    "resolve_checkpoint",
    "resolve_checkpoint_dir",
    "resolve_sam_checkpoint",
    "resolve_seggpt_checkpoint",
    "seggpt_unavailable",
]

#: public download locations of the official SAM weights (segment-anything README, "Model Checkpoints")
SAM_URLS: dict[str, str] = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
#: SHA-256 of those files, checked by default whenever one of those URLs is used (``sha256="skip"`` turns it off).
#: Meta does not publish digests. These values were written from memory in an earlier session and could not be
#: computed on the files here (no network to Meta's CDN); they were later compared, as text, with the tables of
#: independent public projects (micro-sam's checksum table, a 3D Slicer SAM extension, download scripts that run
#: ``sha256sum -c``), which pin the same three values. Until someone hashes the downloads, treat them as
#: corroborated, not verified. A wrong value fails loudly (ChecksumMismatchError naming both digests and the file,
#: which is kept), never silently.
SAM_SHA256: dict[str, str | None] = {
    "vit_h": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    "vit_l": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    "vit_b": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
}
#: Hugging Face Hub id of the official SegGPT weights
DEFAULT_SEGGPT = "BAAI/seggpt-vit-large"

_HTTP_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


#: the ``sha256`` value (``--sam-sha256 skip``) that accepts a checkpoint without checking its digest
SKIP_SHA256 = "skip"


class CheckpointUnavailableError(ConnectionError):
    """The weights live somewhere this machine cannot reach (network down, offline, 404, no credentials)."""


class ChecksumMismatchError(ValueError):
    """A checkpoint's SHA-256 is not the expected one. ``path`` (the file checked; kept when it was the user's or
    the cache's, gone when it was our own partial download), ``expected``, ``found`` (hex digests)."""

    def __init__(self, message: str, *, path: str, expected: str, found: str):
        super().__init__(message)
        self.path, self.expected, self.found = path, expected, found

    def __reduce__(self):
        return (self.__class__, (str(self),), dict(self.__dict__))


def check_sha256_option(value: str | None) -> str | None:
    """``value`` if it is None, ``"skip"`` or 64 hex digits (lower-cased), else ValueError saying what to pass."""
    if value is None or value == SKIP_SHA256:
        return value
    text = str(value).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"sam_sha256 must be 64 hex digits (sha256sum's output) or {SKIP_SHA256!r} to accept the "
                         f"file unchecked, got {value!r}")
    return text

def default_cache_dir() -> Path:
    """``$FINEDETAIL_CACHE`` if set, else ``~/.cache/finedetail``."""
    env = os.environ.get("FINEDETAIL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "finedetail"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def cache_path_for(uri: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a remote ``uri`` is cached: ``CACHE/s3/BUCKET/KEY`` or ``CACHE/http/HOST[_PORT]/PATH``.

    Nothing secret reaches the path: a query string (presigned URLs carry their signature there) becomes a short
    hash appended to the file name, so different queries do not collide; a ``user[:password]@`` becomes
    ``HOST[_PORT]_user-<hash of the user name>`` (the password is not used: it says who may read the file, not
    which file it is). Raises ValueError for local URIs and for ``s3://`` URIs with credentials in them.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if "@" in parsed.netloc:
            raise ValueError(f"s3 URI must not carry credentials, got {redact(uri)!r}; pass them the AWS way "
                             "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role)")
        if not parsed.netloc or not key:
            raise ValueError(f"s3 URI must be s3://BUCKET/KEY, got {redact(uri)!r}")
        return root / "s3" / parsed.netloc / _safe_relpath(key, uri)
    if parsed.scheme in ("http", "https"):
        rel = _safe_relpath(parsed.path.lstrip("/") or "index", uri)
        if parsed.query:
            rel = f"{rel}_{_short_hash(parsed.query)}"
        host = parsed.netloc.rpartition("@")[2].replace(":", "_")
        if parsed.username is not None:
            host = f"{host}_user-{_short_hash(urllib.parse.unquote(parsed.username))}"
        return root / "http" / host / rel
    raise ValueError(f"no cache location for {redact(uri)!r}: expected an s3:// or http(s):// URI")


def _safe_relpath(key: str, uri: str) -> str:
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise ValueError(f"refusing URI with an empty or '..' path component: {redact(uri)!r}")
    return "/".join(parts)


def check_sha(path: Path, expected: str | None, *, source: str, then: str) -> None:
    """ChecksumMismatchError when ``path``'s digest is not ``expected`` (None or "skip": no check). ``then`` says
    what became of the file and what to do, for the message."""
    if expected is None or expected == SKIP_SHA256:
        return
    got = file_sha256(path)
    if got != expected.lower():
        raise ChecksumMismatchError(
            f"checksum mismatch for {source}: expected sha256 {expected.lower()}, found {got}; {then}",
            path=str(path), expected=expected.lower(), found=got)


def mismatch_advice(sha_flag: str) -> str:
    return (f"pass {sha_flag} with the file's real digest if it is a version you want, or {sha_flag} "
            f"{SKIP_SHA256} to accept it unchecked")


def resolve_checkpoint(
    uri: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    flag: str = "--sam-checkpoint",
    sha_flag: str = "--sam-sha256",
    retry: RetryPolicy | None = None,
) -> Path:
    """A local path holding the file ``uri`` names, downloading it into the cache if needed.

    uri: local path, ``file://PATH``, ``s3://bucket/key``, ``https://...`` or ``http://...``.
    sha256: expected hex digest, checked after every download, on every cache hit and on a local file; None or
        ``"skip"``: no check. A local or cached file that does not match raises ChecksumMismatchError and is KEPT
        (it may be the only copy on an offline machine): nothing is downloaded over it.
    flag, sha_flag: the CLI options named in the error hints (where the file comes from, its digest).
    retry: how downloads retry transient failures; None: ``RetryPolicy()``, the job's storage default.

    Raises FileNotFoundError (local path or S3 key missing), ChecksumMismatchError (a ValueError; a mismatching
    download is discarded, a mismatching local or cached file kept), CheckpointUnavailableError (network / endpoint
    unreachable, HTTP error): its message says which flag to pass and where to pre-seed the cache. Messages never
    contain credentials that were in ``uri``.
    """
    text = os.fspath(uri)
    sha256 = check_sha256_option(sha256)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and text[1:2] == ":"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {redact(text)!r} does not exist; pass an existing file, s3:// or "
                                    "https:// URI")
        if path.is_file():
            check_sha(path, sha256, source=str(path), then=f"the file was left as it is; {mismatch_advice(sha_flag)}")
        return path
    if parsed.scheme not in ("s3", "http", "https"):
        raise ValueError(f"unsupported checkpoint URI scheme {parsed.scheme!r} in {redact(text)!r}; use a path, "
                         "file://, s3://, http:// or https://")
    target = cache_path_for(text, cache_dir=cache_dir)
    if target.is_file():  # never deleted here: on an offline machine it may be a pre-seeded, only copy
        check_sha(target, sha256, source=f"cached {target} (for {redact(text)})",
                   then=f"the file was kept, nothing was downloaded; {mismatch_advice(sha_flag)}, or delete the "
                        "file to download it again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fetch = _download_s3 if parsed.scheme == "s3" else _download_http
    tmp = _temp_in(target)
    try:
        fetch(text, tmp, target=target, flag=flag, retry=retry)
        check_sha(tmp, sha256, source=redact(text),
                   then=f"the download was discarded; it is corrupt, truncated or another version: "
                        f"{mismatch_advice(sha_flag)}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _temp_in(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    return Path(name)


def _unreachable(source: str, reason: object, *, target: Path, flag: str) -> CheckpointUnavailableError:
    return CheckpointUnavailableError(redact(
        f"cannot reach {source} ({reason}); pass {flag} PATH with a local copy or pre-seed the cache at {target}"
    ))


def _http_request(url: str) -> urllib.request.Request:
    """A GET for ``url`` with its ``user:password@`` (if any) moved into a basic-auth header that urllib does not
    carry over to a redirect's target (``add_unredirected_header``)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return urllib.request.Request(url, headers={"User-Agent": "finedetail"})
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = (urllib.parse.unquote(p) for p in userinfo.partition(":"))
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=hostport)),
                                     headers={"User-Agent": "finedetail"})
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _download_http(url: str, dest: Path, *, target: Path, flag: str, retry: RetryPolicy | None) -> None:
    from finedetail.retry import RetryPolicy, retry_call

    def get() -> None:
        with urllib.request.urlopen(_http_request(url), timeout=_HTTP_TIMEOUT_S) as response, \
                open(dest, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and out.tell() != int(length):
                # http.client ends a body cut short by the server quietly: without this check (and without a
                # digest) a truncated file would be cached as the checkpoint
                raise http.client.IncompleteRead(b"", int(length) - out.tell())

    def fail(exc: BaseException, tries: int, transient: bool) -> CheckpointUnavailableError:
        reason = (f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError)
                  else getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}")
        return _unreachable(url, f"{reason}; {tries} {'try' if tries == 1 else 'tries'}", target=target, flag=flag)

    retry_call(get, retry or RetryPolicy(), what=url, fail=fail, catch=(OSError, http.client.HTTPException))


def _s3_call(fn, uri: str, *, target: Path, flag: str):
    """``fn()``, its storage errors told as a checkpoint's: missing -> FileNotFoundError, else unreachable."""
    from finedetail.retry import ObjectNotFoundError, StorageError

    try:
        return fn()
    except ObjectNotFoundError as exc:
        raise FileNotFoundError(f"{redact(uri)} does not exist ({exc}); check the bucket and key") from None
    except StorageError as exc:
        raise _unreachable(uri, exc, target=target, flag=flag) from None


def _s3_storage(uri: str, retry: RetryPolicy | None):
    """(the ``finedetail.storage.Storage`` of ``s3://BUCKET/PREFIX``, PREFIX)."""
    from finedetail import storage

    parsed = urllib.parse.urlparse(uri)
    return storage.open_storage(f"s3://{parsed.netloc}", retry=retry)[0], parsed.path.strip("/")


def _download_s3(uri: str, dest: Path, *, target: Path, flag: str, retry: RetryPolicy | None) -> None:
    from finedetail import storage

    bucket, key = _s3_storage(uri, retry)
    _s3_call(lambda: storage.read_to_file(bucket, key, dest), uri, target=target, flag=flag)


def resolve_checkpoint_dir(
    uri: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    flag: str = "--seggpt",
    retry: RetryPolicy | None = None,
) -> Path:
    """A local directory holding everything under ``uri`` (a local dir, ``file://DIR`` or an ``s3://bucket/prefix``).

    An S3 prefix is mirrored into ``CACHE/s3/BUCKET/PREFIX`` file by file (each file via a temp file + os.replace,
    so a file already there is whole and is not fetched again after an interrupted mirror); a ``.complete`` marker
    written last makes later calls skip the listing. Hidden objects (a segment starting with ".") are not mirrored.
    Raises FileNotFoundError when nothing is under the prefix, CheckpointUnavailableError when S3 cannot be reached
    (``retry`` as in ``resolve_checkpoint``).
    """
    text = os.fspath(uri)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else text).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{redact(text)!r} is not a directory; expected a save_pretrained directory")
        return path
    if parsed.scheme != "s3":
        raise ValueError(f"expected a directory, file:// or s3:// prefix, got {redact(text)!r}")
    from finedetail import listing, storage

    target = cache_path_for(f"s3://{parsed.netloc}/{parsed.path.strip('/')}", cache_dir=cache_dir)
    marker = target / ".complete"
    if marker.is_file():
        return target
    source, prefix = _s3_storage(text, retry)
    keys = _s3_call(lambda: listing.list_files(source, prefix, extensions=None), text, target=target, flag=flag)
    if not keys:
        raise FileNotFoundError(f"nothing under {redact(text)}/; expected the files of a save_pretrained directory")
    for rel in keys:
        dest = target / _safe_relpath(rel, text)
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        key = f"{prefix}/{rel}" if prefix else rel
        tmp = _temp_in(dest)
        try:
            _s3_call(lambda: storage.read_to_file(source, key, tmp), f"s3://{source.root}/{key}", target=target,
                     flag=flag)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
    marker.write_text("")
    return target


def resolve_sam_checkpoint(
    uri: str | os.PathLike | None = None,
    *,
    model_type: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    retry: RetryPolicy | None = None,
) -> Path:
    """The local file of the SAM weights ``load_sam`` would load (``uri``, ``model_type``, ``sha256`` as there),
    fetched into the cache and verified if needed, without loading it: a job's driver calls this before any worker
    starts. Raises as ``resolve_checkpoint``."""
    if uri is None or os.fspath(uri) in SAM_URLS:
        key = model_type if uri is None else os.fspath(uri)
        if key is None:
            raise ValueError("load_sam needs a checkpoint URI or a model_type naming official weights (vit_b/l/h)")
        uri = SAM_URLS[key]
    uri = os.fspath(uri)
    if sha256 is None:
        sha256 = next((SAM_SHA256[k] for k, url in SAM_URLS.items() if url == uri), None)
    return resolve_checkpoint(uri, cache_dir=cache_dir, sha256=sha256, retry=retry)

def is_hub_id(text: str) -> bool:
    """A Hugging Face Hub id (``owner/name``), not a local directory, ``file://`` or ``s3://`` prefix."""
    scheme = urllib.parse.urlparse(text).scheme
    looks_local = text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().is_dir()
    return scheme not in ("s3", "file") and not looks_local


def hub_settings(offline: bool | None, cache_dir: str | os.PathLike | None) -> tuple[bool, Path]:
    """(offline, the Hub cache folder): None follows ``HF_HUB_OFFLINE``; Hub files live under ``CACHE/huggingface``."""
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return offline, root / "huggingface"


def seggpt_unavailable(text: str, errors: list[str], hub_cache: Path) -> CheckpointUnavailableError:
    return CheckpointUnavailableError(
        f"cannot load SegGPT {text!r} from the Hub or the cache ({'; '.join(errors)}); pass --seggpt-checkpoint DIR "
        f"with a save_pretrained directory, or pre-seed the cache with `hf download {text} --cache-dir {hub_cache}`"
    )


def resolve_seggpt_checkpoint(
    uri_or_dir: str | os.PathLike = DEFAULT_SEGGPT,
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    retry: RetryPolicy | None = None,
) -> Path:
    """The local directory of the SegGPT weights ``load_seggpt`` would load (arguments as there), fetched into the
    cache if needed, without loading them: a job's driver calls this before any worker starts.

    A Hub id is looked up in the Hub cache first, then (unless offline) downloaded there: its ``*.json`` files and
    its ``*.safetensors`` weights (``*.bin`` when it has no safetensors), which is what ``from_pretrained`` reads.
    Raises FileNotFoundError / CheckpointUnavailableError as ``resolve_checkpoint_dir`` and ``load_seggpt``.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    text = os.fspath(uri_or_dir)
    if not is_hub_id(text):
        return resolve_checkpoint_dir(text, cache_dir=cache_dir, retry=retry)
    offline, hub_cache = hub_settings(offline, cache_dir)
    errors: list[str] = []
    for local_only in (True,) if offline else (True, False):
        for weights in ("*.safetensors", "*.bin"):
            try:
                snapshot = Path(snapshot_download(text, cache_dir=hub_cache, local_files_only=local_only,
                                                  allow_patterns=["*.json", weights]))
            except (OSError, ValueError, HfHubHTTPError) as exc:
                errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                break
            if (snapshot / "config.json").is_file() and any(snapshot.glob(weights)):
                return snapshot
    raise seggpt_unavailable(text, errors or ["no config.json and weights in the snapshot"], hub_cache)
