"""Where the transformers refiners' weights come from (SAM-HQ, SAM 2): defaults, resolving, checksums.

A refiner checkpoint is a ``save_pretrained`` directory (``config.json`` + ``model.safetensors``, and usually
``preprocessor_config.json``), given as a local directory, ``file://DIR``, an ``s3://bucket/prefix`` (mirrored into
the cache by ``checkpoints.resolve_checkpoint_dir``: ``CACHE/s3/BUCKET/PREFIX``, a ``.complete`` marker last) or a
Hugging Face Hub id (``owner/name``; cached under ``CACHE/huggingface``, the cache tried first, so a pre-seeded cache
works offline). The rules are SegGPT's and SAM's (``finedetail.models.checkpoints``): nothing already on disk is
ever deleted, and ``sha256`` (``--sam-sha256``) is checked against the directory's weights file
(``model.safetensors``, else the single ``*.safetensors`` / ``pytorch_model.bin``) on every resolve: a mismatch
raises ``ChecksumMismatchError`` naming both digests and keeps the files; ``"skip"`` / None check nothing.

Pure: no torch. The loaders live in ``finedetail.models.hf_sam``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from finedetail.models.weights import (
    CheckpointUnavailableError,
    check_sha,
    check_sha256_option,
    hub_settings,
    is_hub_id,
    mismatch_advice,
    resolve_checkpoint_dir,
)

if TYPE_CHECKING:
    from finedetail.retry import RetryPolicy

__all__ = ["HF_DEFAULTS", "HF_REFINERS", "default_hf_checkpoint", "resolve_hf_checkpoint", "weights_file"]

#: refiner name -> transformers model / image processor class names (``finedetail.config.REFINERS`` minus "sam")
HF_REFINERS: dict[str, tuple[str, str]] = {
    "sam-hq": ("SamHQModel", "SamImageProcessor"),
    "sam2": ("Sam2Model", "Sam2ImageProcessor"),
}
#: default Hub ids (transformers format). SAM-HQ by ``--sam-model-type`` (as SAM: vit_h unless told), from the
#: ``syscv-community`` organisation the transformers team maintains; SAM 2.1 Hiera-L, Meta's own repository (its
#: smaller siblings: facebook/sam2.1-hiera-base-plus / -small / -tiny). Not downloaded in this project's tests.
HF_DEFAULTS: dict[str, dict[str | None, str]] = {
    "sam-hq": {None: "syscv-community/sam-hq-vit-huge", "vit_h": "syscv-community/sam-hq-vit-huge",
               "vit_l": "syscv-community/sam-hq-vit-large", "vit_b": "syscv-community/sam-hq-vit-base"},
    "sam2": {None: "facebook/sam2.1-hiera-large"},
}
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def default_hf_checkpoint(refiner: str, model_type: str | None = None) -> str:
    """The Hub id a ``refiner`` loads when no checkpoint is given; ValueError for a model type it has no default
    for (SAM 2's sizes are picked by Hub id, not by ``--sam-model-type``)."""
    if refiner not in HF_DEFAULTS:
        raise ValueError(f"refiner must be one of {sorted(HF_DEFAULTS)}, got {refiner!r}")
    table = HF_DEFAULTS[refiner]
    if model_type not in table:
        raise ValueError(f"--sam-model-type {model_type} does not apply to refiner {refiner!r}; choose its size by "
                         f"--sam-checkpoint (a Hub id such as {table[None]}, a directory or an s3:// prefix)")
    return table[model_type]


def weights_file(directory: str | os.PathLike) -> Path:
    """The weights file of a ``save_pretrained`` directory: ``model.safetensors``, ``pytorch_model.bin``, else its
    single ``*.safetensors``; FileNotFoundError naming the directory when there is none (or several shards)."""
    root = Path(directory)
    for name in _WEIGHTS:
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"no single weights file in {root} (expected model.safetensors or pytorch_model.bin, "
                            f"found {[p.name for p in found] or 'none'}); pass the directory save_pretrained wrote")


def resolve_hf_checkpoint(
    uri: str | os.PathLike,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    retry: RetryPolicy | None = None,
    flag: str = "--sam-checkpoint",
    sha_flag: str = "--sam-sha256",
) -> Path:
    """The local ``save_pretrained`` directory of a refiner checkpoint (module docstring), fetched into the cache if
    needed and its weights file checked against ``sha256``, without loading it (a job's driver calls this before any
    worker starts).

    Raises FileNotFoundError (no such directory / prefix / weights file), ChecksumMismatchError (a ValueError; files
    kept), CheckpointUnavailableError (a Hub id neither cached nor downloadable; the message names ``flag`` and the
    cache folder to pre-seed)."""
    sha256 = check_sha256_option(sha256)
    text = os.fspath(uri)
    if is_hub_id(text):
        directory = _hub_snapshot(text, cache_dir=cache_dir, offline=offline, flag=flag)
    else:
        directory = resolve_checkpoint_dir(text, cache_dir=cache_dir, flag=flag, retry=retry)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json; expected a transformers save_pretrained directory "
                                f"(SamHQModel / Sam2Model), got {sorted(p.name for p in directory.iterdir())[:8]}")
    weights = weights_file(directory)
    check_sha(weights, sha256, source=str(weights), then=f"the file was left as it is; {mismatch_advice(sha_flag)}")
    return directory


def _hub_snapshot(repo: str, *, cache_dir, offline: bool | None, flag: str) -> Path:
    """A Hub repo's ``*.json`` files and weights in the Hub cache (cache first, then, unless offline, the network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    offline, hub_cache = hub_settings(offline, cache_dir)
    errors: list[str] = []
    for local_only in (True,) if offline else (True, False):
        try:
            snapshot = Path(snapshot_download(repo, cache_dir=hub_cache, local_files_only=local_only,
                                              allow_patterns=["*.json", *_WEIGHTS]))
        except (OSError, ValueError, HfHubHTTPError) as exc:
            errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            continue
        if (snapshot / "config.json").is_file() and any((snapshot / w).is_file() for w in _WEIGHTS):
            return snapshot
        errors.append("no config.json and weights in the snapshot")
    raise CheckpointUnavailableError(
        f"cannot load {repo!r} from the Hub or the cache ({'; '.join(errors)}); pass {flag} DIR with a "
        f"save_pretrained directory, or pre-seed the cache with `hf download {repo} --cache-dir {hub_cache}`")
