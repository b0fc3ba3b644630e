"""What a job's outputs depend on besides its settings: the bytes of the prompt set and the identity of the weights.

``fingerprint(cfg)`` is computed once, in the driver (``job.run.run_job``, before any work starts), carried to the
workers in ``JobConfig.fingerprint`` and folded into ``JobConfig.config_hash``, the key of resume. It hashes contents,
never the spelling of a path, so the same prompts given as ``prompts`` or ``/abs/path/prompts`` give one hash, and a
prompt or a checkpoint replaced at the same path gives another:

- **prompts** (``--prompts``; not used when ``--coarse`` replaces the coarse model): SHA-256 over every file
  ``job.models.load_prompts`` reads (``images/*``, ``masks/*.png``, ``classes.yaml``), each with its path relative
  to the prompt root.
- **SAM checkpoint** (backend ``seggpt-sam``): a digest the loader verifies, when there is one (``--sam-sha256``
  given as 64 hex digits, or the pinned digest of an official URL: any other file is refused at load); else a local
  file's SHA-256; an ``s3://`` object's ETag and size; an ``http(s)://`` resource's ETag (or Last-Modified) and size
  from a HEAD request. Unreachable from the driver: the SHA-256 of the driver's cached copy, else the location.
- **SAM-HQ / SAM 2 checkpoint** (``--refiner sam-hq|sam2``): the refiner's name, and its transformers directory,
  prefix or Hub id identified as SegGPT's below.
- **SegGPT checkpoint**: a local directory: every file's relative path, size and SHA-256; an ``s3://`` prefix: every
  object's relative key, ETag and size; a Hub id: the commit the driver's Hub cache holds for it, else the id.
- **coarse masks** (``--coarse``): the location, normalised (absolute real path). Like the input images, they are
  per input and not content-hashed: an input or coarse mask replaced under the same name is not detected.

SHA-256 of local files is cached in ``$FINEDETAIL_CACHE/digests.json`` keyed by real path, size, mtime, ctime and
inode (ctime changes on any write and can't be set back), so a multi-GB checkpoint is read once, not every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from job import io as jio

#: the prompt folder's class list file (read by ``job.models``, part of the prompt set's digest here)
CLASSES_FILE = "classes.yaml"

log = logging.getLogger("finedetail.job")

__all__ = ["CLASSES_FILE", "checkpoint_identity", "fingerprint", "local_sha256", "prompt_digest", "sam_source", "seggpt_identity"]

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_DIGESTS_FILE = "digests.json"
_HEAD_TIMEOUT_S = 10.0


def fingerprint(cfg: Any) -> str:
    """16 hex digits over the contents ``cfg``'s outputs depend on (module docstring). Never raises: what can't be
    read is identified by its location (a job that needs it fails or is refused elsewhere, naming it)."""
    parts: dict[str, Any] = {"v": 1}
    if cfg.prompts is not None and cfg.coarse is None:
        parts["prompts"] = _guarded(prompt_digest, cfg.prompts)
    if cfg.coarse is not None:
        parts["coarse"] = _location(cfg.coarse)
    if cfg.backend == "seggpt-sam":
        from finedetail.models.weights import DEFAULT_SEGGPT, SAM_URLS

        if getattr(cfg, "refiner", "sam") == "sam":
            sam = cfg.sam_checkpoint or SAM_URLS[cfg.sam_model_type or "vit_h"]
            parts["sam"] = _guarded(checkpoint_identity, SAM_URLS.get(sam, sam), sha256=cfg.sam_sha256)
        else:  # a transformers directory / prefix / Hub id, identified as SegGPT's are
            parts["refiner"] = cfg.refiner
            parts["sam"] = _guarded(seggpt_identity, sam_source(cfg))
        parts["seggpt"] = _guarded(seggpt_identity, cfg.seggpt_checkpoint or DEFAULT_SEGGPT)
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _guarded(fn, uri: str, **kwargs: Any) -> Any:
    try:
        return fn(uri, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the job reports the real problem where it reads the thing
        log.info("resume hash: %s not readable from the driver (%s); identified by its location", jio.redact(uri),
                 jio.redact(f"{type(exc).__name__}: {exc}"))
        return {"unreadable": _location(uri)}


def _location(uri: str) -> str:
    """A location without spelling variants: local paths as absolute real paths, URIs without trailing slashes."""
    text = os.fspath(uri)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and text[1:2] == ":"):
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else text
        return os.path.realpath(os.path.expanduser(path))
    return text.rstrip("/")


def prompt_digest(uri: str) -> str:
    """SHA-256 over the prompt set's files that ``load_prompts`` reads, each with its path relative to ``uri``."""

    storage = jio.open_storage(uri)[0]
    names = [f"images/{k}" for k in jio.list_files(storage, "images", extensions=jio.IMAGE_EXTS)]
    names += [f"masks/{k}" for k in jio.list_files(storage, "masks", extensions=(".png",))]
    if jio.exists(storage, CLASSES_FILE):
        names.append(CLASSES_FILE)
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}\0{hashlib.sha256(jio.read_bytes(storage, name)).hexdigest()}\n".encode())
    return digest.hexdigest()


def checkpoint_identity(uri: str, *, sha256: str | None = None) -> dict[str, Any]:
    """Identity of one checkpoint file (module docstring, SAM); ``sha256`` is the digest the loader verifies."""
    from finedetail.models.weights import SAM_SHA256, SAM_URLS, cache_path_for

    if sha256 is None:
        sha256 = next((SAM_SHA256[k] for k, url in SAM_URLS.items() if url == uri), None)
    if sha256 is not None and _HEX64.match(sha256):
        return {"sha256": sha256.lower()}  # the loader refuses any file with another digest
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("s3", "http", "https"):
        return {"sha256": local_sha256(_location(uri))}
    try:
        return _s3_head(uri) if parsed.scheme == "s3" else _http_head(uri)
    except Exception as exc:  # noqa: BLE001 - offline: what this machine would load is its cached copy
        cached = cache_path_for(uri)
        if not cached.is_file():
            raise
        log.warning("resume hash: cannot reach %s (%s); hashing its cached copy %s", jio.redact(uri),
                    jio.redact(f"{type(exc).__name__}: {exc}"), cached)
        return {"sha256": local_sha256(cached)}


def _s3_client():
    """A boto3 S3 client on the endpoint and region the job's storage uses (``jio.S3Settings.from_env``).

    The one boto3 use left: the identity of an S3 checkpoint is its ETag (a digest of the content, free with
    HEAD / LIST); pyarrow's S3 filesystem, which every read and write goes through, reports size and mtime but no
    ETag, and an mtime (1 s resolution) misses a same-size object replaced within that second."""
    import boto3
    from botocore.config import Config

    s = jio.S3Settings.from_env()
    endpoint = f"{s.scheme}://{s.endpoint}" if s.endpoint else None
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=s.connect_timeout,
                    read_timeout=s.request_timeout, s3={"addressing_style": "path" if endpoint else "auto"})
    return boto3.client("s3", endpoint_url=endpoint, region_name=s.region, config=config)


def _s3_head(uri: str) -> dict[str, Any]:
    bucket, key = uri[len("s3://"):].split("/", 1)
    head = _s3_client().head_object(Bucket=bucket, Key=key)
    return {"etag": head.get("ETag"), "size": int(head["ContentLength"])}


def _http_head(uri: str) -> dict[str, Any]:
    request = urllib.request.Request(uri, method="HEAD", headers={"User-Agent": "finedetail"})
    with urllib.request.urlopen(request, timeout=_HEAD_TIMEOUT_S) as response:
        headers = response.headers
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if etag is None and modified is None:
        raise ValueError(f"{uri} sends neither ETag nor Last-Modified: no way to tell a replaced file")
    return {"etag": etag, "last_modified": None if etag else modified, "size": headers.get("Content-Length")}


def seggpt_identity(uri: str) -> dict[str, Any]:
    """Identity of a SegGPT checkpoint (module docstring): a directory's files, an s3 prefix's objects, a Hub id's
    cached commit."""
    from finedetail.models.weights import default_cache_dir

    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "s3":
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        prefix = prefix.rstrip("/") + "/"
        objects = []
        for page in _s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(o["Key"][len(prefix):], o.get("ETag"), int(o["Size"])) for o in page.get("Contents", [])]
        if not objects:
            raise FileNotFoundError(f"nothing under {uri}")
        return {"objects": sorted(objects)}
    local = _location(uri)
    if parsed.scheme == "file" or os.path.isdir(local) or uri.startswith(("/", "./", "../", "~")):
        root = Path(local)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"no files under {local}")
        return {"files": [(p.relative_to(root).as_posix(), p.stat().st_size, local_sha256(p)) for p in files]}
    ref = default_cache_dir() / "huggingface" / f"models--{uri.replace('/', '--')}" / "refs" / "main"
    return {"hub": uri, "commit": ref.read_text().strip() if ref.is_file() else None}


def local_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a local file, cached in ``$FINEDETAIL_CACHE/digests.json`` by (real path, size, mtime, ctime,
    inode): any write to the file changes its ctime, so a stale digest is never returned."""
    from finedetail.models.weights import default_cache_dir, file_sha256

    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    cache_file = default_cache_dir() / _DIGESTS_FILE
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(real)
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return str(hit["sha256"])
    digest = file_sha256(real)
    cache[real] = {"stamp": stamp, "sha256": digest}
    try:  # best effort: a read-only cache only costs the re-hash next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests.", dir=cache_file.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return digest


def sam_source(cfg: Any) -> str:
    """The refiner weights of a ``seggpt-sam`` job: ``--sam-checkpoint``, else the default of ``cfg.refiner``: SAM's
    official URL of its model type, or the Hub id of ``hf_checkpoints.default_hf_checkpoint``."""
    if cfg.sam_checkpoint:
        return cfg.sam_checkpoint
    if cfg.refiner != "sam":
        from finedetail.models.hf_checkpoints import default_hf_checkpoint

        return default_hf_checkpoint(cfg.refiner, cfg.sam_model_type)
    from finedetail.models.weights import SAM_URLS

    return SAM_URLS[cfg.sam_model_type or "vit_h"]
