"""Find, fetch, verify and load model weights (SAM ``.pth`` files, SegGPT ``save_pretrained`` directories).

URIs: a local path, ``file://PATH``, ``s3://bucket/key`` (boto3; honours ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, path-style addressing for custom endpoints), ``https://`` / ``http://`` (urllib; a
``user:password@`` in the URL is sent as HTTP basic auth, never to a host it redirects to). Remote files land in a
cache directory (``$FINEDETAIL_CACHE``, else ``~/.cache/finedetail``) under a readable path derived from the URI
(credentials never appear in it), so a machine without network can be pre-seeded by copying the file there.
Downloads go to a temporary file in the destination directory, are checked against an expected SHA-256 when one is
known, and are moved into place with ``os.replace``; a failed or mismatching download leaves nothing behind.

A file that is already there (a local path, or a cached file the user may have pre-seeded) is never deleted or
replaced: when its digest disagrees with the expected one, the error says both digests and the path, and
``sha256="skip"`` (``--sam-sha256 skip``) accepts the file knowingly. Every message that quotes a URI goes through
``finedetail.redaction.redact``.

torch / transformers / boto3 are imported inside the functions that need them: importing this module is cheap.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from finedetail.redaction import redact

__all__ = [
    "ChecksumMismatchError",
    "CheckpointUnavailableError",
    "DEFAULT_SEGGPT",
    "SEGGPT_DEFAULT",
    "SAM_SHA256",
    "SAM_URLS",
    "SKIP_SHA256",
    "check_sha256_option",
    "cache_path_for",
    "default_cache_dir",
    "file_sha256",
    "infer_sam_arch",
    "load_sam",
    "load_seggpt",
    "resolve_checkpoint",
    "resolve_checkpoint_dir",
    "resolve_device",
    "resolve_dtype",
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
SEGGPT_DEFAULT = DEFAULT_SEGGPT  # alias used by job/models.py

_HTTP_ATTEMPTS = 3
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


def resolve_device(device: Any = None):
    """A ``torch.device``: None or "auto" -> cuda if available else cpu; anything else is passed to torch."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: Any, device: Any):
    """A ``torch.dtype`` for autocast: None -> bfloat16 on CUDA, float32 elsewhere; names like "bf16", "float16"."""
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
        return names[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, a name or None, got {type(dtype).__name__}")
    return dtype


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


def _check_sha(path: Path, expected: str | None, *, source: str, then: str) -> None:
    """ChecksumMismatchError when ``path``'s digest is not ``expected`` (None or "skip": no check). ``then`` says
    what became of the file and what to do, for the message."""
    if expected is None or expected == SKIP_SHA256:
        return
    got = file_sha256(path)
    if got != expected.lower():
        raise ChecksumMismatchError(
            f"checksum mismatch for {source}: expected sha256 {expected.lower()}, found {got}; {then}",
            path=str(path), expected=expected.lower(), found=got)


def _mismatch_advice(sha_flag: str) -> str:
    return (f"pass {sha_flag} with the file's real digest if it is a version you want, or {sha_flag} "
            f"{SKIP_SHA256} to accept it unchecked")


def resolve_checkpoint(
    uri: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    flag: str = "--sam-checkpoint",
    sha_flag: str = "--sam-sha256",
    s3_client: Any = None,
) -> Path:
    """A local path holding the file ``uri`` names, downloading it into the cache if needed.

    uri: local path, ``file://PATH``, ``s3://bucket/key``, ``https://...`` or ``http://...``.
    sha256: expected hex digest, checked after every download, on every cache hit and on a local file; None or
        ``"skip"``: no check. A local or cached file that does not match raises ChecksumMismatchError and is KEPT
        (it may be the only copy on an offline machine): nothing is downloaded over it.
    flag, sha_flag: the CLI options named in the error hints (where the file comes from, its digest).
    s3_client: a boto3 S3 client to use instead of one built from the environment.

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
            _check_sha(path, sha256, source=str(path), then=f"the file was left as it is; {_mismatch_advice(sha_flag)}")
        return path
    if parsed.scheme not in ("s3", "http", "https"):
        raise ValueError(f"unsupported checkpoint URI scheme {parsed.scheme!r} in {redact(text)!r}; use a path, "
                         "file://, s3://, http:// or https://")
    target = cache_path_for(text, cache_dir=cache_dir)
    if target.is_file():  # never deleted here: on an offline machine it may be a pre-seeded, only copy
        _check_sha(target, sha256, source=f"cached {target} (for {redact(text)})",
                   then=f"the file was kept, nothing was downloaded; {_mismatch_advice(sha_flag)}, or delete the "
                        "file to download it again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fetch = _download_s3 if parsed.scheme == "s3" else _download_http
    tmp = _temp_in(target)
    try:
        kwargs = {"s3_client": s3_client} if parsed.scheme == "s3" else {}
        fetch(text, tmp, target=target, flag=flag, **kwargs)
        _check_sha(tmp, sha256, source=redact(text),
                   then=f"the download was discarded; it is corrupt, truncated or another version: "
                        f"{_mismatch_advice(sha_flag)}")
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


def _download_http(url: str, dest: Path, *, target: Path, flag: str) -> None:
    last: object = None
    for attempt in range(_HTTP_ATTEMPTS):
        if attempt:
            time.sleep(0.25 * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(_http_request(url), timeout=_HTTP_TIMEOUT_S) as response, \
                    open(dest, "wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
            return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                break  # a client error will not change on retry
        except (urllib.error.URLError, OSError) as exc:
            last = getattr(exc, "reason", None) or exc
    raise _unreachable(url, last, target=target, flag=flag)


def _s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        # Virtual-host addressing needs DNS per bucket, which local / on-prem endpoints rarely have.
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _s3_call(fn, uri: str, *, target: Path, flag: str):
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return fn()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            raise FileNotFoundError(f"{redact(uri)} does not exist ({code}); check the bucket and key") from exc
        raise _unreachable(uri, f"S3 error {code}: {exc}", target=target, flag=flag) from exc
    except NoCredentialsError as exc:
        raise _unreachable(uri, "no AWS credentials found", target=target, flag=flag) from exc
    except BotoCoreError as exc:
        raise _unreachable(uri, exc, target=target, flag=flag) from exc


def _download_s3(uri: str, dest: Path, *, target: Path, flag: str, s3_client: Any = None) -> None:
    client = s3_client if s3_client is not None else _s3_client()
    bucket, key = _split_s3(uri)
    _s3_call(lambda: client.download_file(bucket, key, str(dest)), uri, target=target, flag=flag)


def resolve_checkpoint_dir(
    uri: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    flag: str = "--seggpt",
    s3_client: Any = None,
) -> Path:
    """A local directory holding everything under ``uri`` (a local dir, ``file://DIR`` or an ``s3://bucket/prefix``).

    An S3 prefix is mirrored into ``CACHE/s3/BUCKET/PREFIX`` file by file (each file via a temp file + os.replace);
    a ``.complete`` marker written last makes later calls skip the listing. Raises FileNotFoundError when nothing is
    under the prefix, CheckpointUnavailableError when S3 cannot be reached.
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
    bucket, prefix = _split_s3(text)
    prefix = prefix.rstrip("/")
    target = cache_path_for(f"s3://{bucket}/{prefix}", cache_dir=cache_dir)
    marker = target / ".complete"
    if marker.is_file():
        return target
    client = s3_client if s3_client is not None else _s3_client()

    def listing() -> list[tuple[str, int]]:
        out = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            out += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
        return out

    objects = _s3_call(listing, text, target=target, flag=flag)
    if not objects:
        raise FileNotFoundError(f"nothing under {redact(text)}/; expected the files of a save_pretrained directory")
    for key, size in objects:
        rel = key[len(prefix) + 1 :]
        if not rel or rel.endswith("/"):
            continue
        dest = target / _safe_relpath(rel, text)
        if dest.is_file() and dest.stat().st_size == size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_in(dest)
        try:
            _s3_call(lambda: client.download_file(bucket, key, str(tmp)), f"s3://{bucket}/{key}", target=target,
                     flag=flag)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
    marker.write_text("")
    return target


# ----------------------------------------------------------------------------------------------------------- SAM


def _count(shapes: Mapping[str, Any], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    if ids != set(range(len(ids))):
        raise ValueError(f"state dict has non-contiguous {prefix}N entries: {sorted(ids)}")
    return len(ids)


def infer_sam_arch(shapes: Mapping[str, Sequence[int]]):
    """The ``tiny.SamArch`` a SAM state dict was saved from, read off its parameter shapes.

    shapes: parameter name -> shape (a state dict's ``{k: v.shape}``; tensors themselves are not needed, so a
    full-size model on the meta device works). Reads: embed dim and patch size from ``patch_embed.proj.weight``,
    image size from ``pos_embed``, depth from the block count, heads from ``embed_dim // rel_pos_h.shape[1]``,
    global blocks as those whose ``rel_pos_h`` spans the whole grid (2 * 64 - 1 rows) and the window size from the
    others (2 * 14 - 1), prompt dim from the neck, the mask decoder's depth / MLP / IoU head from theirs.
    The decoder's head count cannot be read from shapes; SAM uses 8 everywhere.
    """
    from finedetail.models.tiny import SamArch

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(
                f"not a segment-anything state dict: missing {name!r}; expected the contents of a sam_vit_*.pth file"
            )
        return tuple(int(s) for s in shapes[name])

    enc = "image_encoder."
    embed_dim, _, patch, _ = shape(enc + "patch_embed.proj.weight")
    grid = shape(enc + "pos_embed")[1]
    depth = _count(shapes, enc + "blocks.")
    head_dim = shape(enc + "blocks.0.attn.rel_pos_h")[1]
    global_idx, windows = [], set()
    for i in range(depth):
        rows = shape(f"{enc}blocks.{i}.attn.rel_pos_h")[0]
        if rows == 2 * grid - 1:
            global_idx.append(i)
        else:
            windows.add((rows + 1) // 2)
    if len(windows) > 1:
        raise ValueError(f"windowed blocks disagree on the window size: {sorted(windows)}")
    iou_prefix = "mask_decoder.iou_prediction_head.layers."
    return SamArch(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=tuple(global_idx),
        prompt_embed_dim=shape(enc + "neck.0.weight")[0],
        image_size=grid * patch,
        patch_size=patch,
        window_size=windows.pop() if windows else 14,
        mlp_ratio=shape(enc + "blocks.0.mlp.lin1.weight")[0] / embed_dim,
        decoder_depth=_count(shapes, "mask_decoder.transformer.layers."),
        decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        iou_head_depth=_count(shapes, iou_prefix),
        iou_head_hidden_dim=shape(iou_prefix + "0.weight")[0],
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
    )


def load_sam(
    uri: str | os.PathLike | None = None,
    *,
    model_type: str | None = None,
    device: Any = "cpu",
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
):
    """A ``segment_anything.modeling.Sam`` in eval mode, fp32, on ``device`` (None / "auto": cuda if available), with
    the weights of ``uri``.

    uri: anything ``resolve_checkpoint`` takes, or None / a model type ("vit_b", "vit_l", "vit_h") for the official
        weights from ``SAM_URLS``.
    sha256: expected hex digest; None checks the official URLs against ``SAM_SHA256`` (verification is on by
        default for them) and nothing else; ``"skip"`` checks nothing (a file you trust whose digest differs).
    model_type: a key of ``tiny.SAM_ARCHS``; None infers the architecture from the state dict (``infer_sam_arch``),
        which also covers the tiny test models.
    The model is built on the meta device and the checkpoint's tensors are assigned into it (strict: every key must
    match), so a full-size model never allocates a random initialisation first.
    """
    import torch

    from finedetail.models.tiny import SAM_ARCHS, build_sam

    if model_type is not None and model_type not in SAM_ARCHS:
        raise ValueError(f"model_type must be one of {sorted(SAM_ARCHS)} or None (infer), got {model_type!r}")
    if uri is None or os.fspath(uri) in SAM_URLS:
        key = model_type if uri is None else os.fspath(uri)
        if key is None:
            raise ValueError("load_sam needs a checkpoint URI or a model_type naming official weights (vit_b/l/h)")
        uri = SAM_URLS[key]
    uri = os.fspath(uri)
    if sha256 is None:
        sha256 = next((SAM_SHA256[k] for k, url in SAM_URLS.items() if url == uri), None)
    path = resolve_checkpoint(uri, cache_dir=cache_dir, sha256=sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not a torch file, or a pickle that wants to run code
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read {path} as a SAM checkpoint ({type(exc).__name__}: {first}); it may be "
                         "truncated, corrupt or not a .pth file: compare its sha256 with the source's") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a SAM state dict (dict of tensors)")
    for wrapper in ("model", "state_dict"):
        if set(state) == {wrapper} and isinstance(state[wrapper], dict):
            state = state[wrapper]
    arch = SAM_ARCHS[model_type] if model_type else infer_sam_arch({k: tuple(v.shape) for k, v in state.items()})
    with torch.device("meta"):
        sam = build_sam(arch, seed=None)
    try:
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        hint = " (omit model_type to infer the architecture)" if model_type else ""
        raise ValueError(f"{path} does not fit SAM architecture {arch}{hint}: {exc}") from exc
    # pixel_mean / pixel_std are non-persistent buffers: not in the file, still on meta after assign.
    sam.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
    leftover = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left unloaded after reading {path}: {leftover[:5]}")
    return sam.to(device=resolve_device(device), dtype=torch.float32).eval()


# -------------------------------------------------------------------------------------------------------- SegGPT


def load_seggpt(
    uri_or_dir: str | os.PathLike = DEFAULT_SEGGPT,
    *,
    device: Any = "cpu",
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    s3_client: Any = None,
):
    """(``SegGptForImageSegmentation`` in eval mode, fp32, on ``device`` (None / "auto": cuda if available),
    ``SegGptImageProcessor``).

    uri_or_dir: a ``save_pretrained`` directory (model + ``preprocessor_config.json``), ``file://DIR``, an
        ``s3://bucket/prefix`` holding such a directory (mirrored into the cache), or a Hub id such as
        ``"BAAI/seggpt-vit-large"`` (Hub files are cached under ``CACHE/huggingface``; the cache is tried first, so
        a pre-seeded cache works without network).
    offline: True never touches the network; None follows ``HF_HUB_OFFLINE``.
    Raises CheckpointUnavailableError with the fix when a Hub id is neither cached nor downloadable.
    """
    from transformers import SegGptForImageSegmentation, SegGptImageProcessor

    text = os.fspath(uri_or_dir)
    scheme = urllib.parse.urlparse(text).scheme
    looks_local = text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().is_dir()
    if scheme in ("s3", "file") or looks_local:
        source = resolve_checkpoint_dir(text, cache_dir=cache_dir, s3_client=s3_client)
        model = SegGptForImageSegmentation.from_pretrained(source, local_files_only=True)
        processor = SegGptImageProcessor.from_pretrained(source, local_files_only=True)
    else:
        if offline is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        hub_cache = root / "huggingface"
        model = processor = None
        errors = []
        for local_only in (True,) if offline else (True, False):
            try:
                model = SegGptForImageSegmentation.from_pretrained(text, cache_dir=hub_cache,
                                                                   local_files_only=local_only)
                processor = SegGptImageProcessor.from_pretrained(text, cache_dir=hub_cache,
                                                                 local_files_only=local_only)
                break
            except (OSError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if model is None:
            raise CheckpointUnavailableError(
                f"cannot load SegGPT {text!r} from the Hub or the cache ({'; '.join(errors)}); pass --seggpt DIR with "
                f"a save_pretrained directory, or pre-seed the cache with "
                f"`hf download {text} --cache-dir {hub_cache}`"
            )
    import torch

    return model.to(device=resolve_device(device), dtype=torch.float32).eval(), processor
