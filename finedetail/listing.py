"""Listing the files under a storage root: recursive, sorted, filtered by extension, unsafe names accounted for.

``list_files(storage, "masks")`` -> ``["a/1.png", ...]`` (keys relative to the folder); `relative_root` says where
one root lies inside another (so a job can leave its own outputs out of its input listing). Every listing retries
through `finedetail.storage.retrying`. Imports neither ray nor torch.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable

import pyarrow.fs as pafs

from finedetail.storage import Storage, _as_storage, retrying, safe_key

__all__ = ["IMAGE_EXTS", "list_files", "relative_root"]

log = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
"""Extensions `list_files` keeps by default (compared case-insensitively)."""


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


def _list_local(folder: str, exclude: frozenset[str] = frozenset()) -> list[str]:
    if not os.path.exists(folder):
        return []
    if not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", folder)
    keys = []
    # Symlinked folders are not followed (no cycles); symlinked files are listed, and reading one that points
    # outside the root is refused (see "Symbolic links" above), so it becomes an error row, not a silent skip.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise):
        rel = os.path.relpath(dirpath, folder)
        sub = "" if rel == "." else f"{rel.replace(os.sep, '/')}/"
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and f"{sub}{d}" not in exclude]
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
               refused: list[str] | None = None, exclude: Iterable[str] = ()) -> list[str]:
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
    `exclude`: folders (keys relative to ``root/prefix``, e.g. ``"out"``) whose
    files are left out, at any depth (a local walk does not enter them).
    """
    storage = _as_storage(uri_or_storage)
    exts = _normalise_exts(extensions)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit=}")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str key prefix like 'masks', got {prefix!r}")
    sub = "" if prefix.strip("/") in ("", ".") else safe_key(prefix.rstrip("/"))
    folder = f"{storage.root.rstrip('/')}/{sub}" if sub else storage.root
    if isinstance(exclude, str):
        raise ValueError(f"exclude must be a sequence of folder keys like ('out',), got the string {exclude!r}")
    skip = frozenset(safe_key(e.rstrip("/")) for e in exclude)
    if storage.kind == "local":
        raw = retrying(storage, "list", sub or None, lambda: _list_local(folder, skip))
    else:
        raw = retrying(storage, "list", sub or None, lambda: _list_s3(storage, folder))
    keys, unsafe = [], []
    for key in raw:
        if skip and any(key.startswith(f"{e}/") for e in skip):
            continue
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


def relative_root(inner: str | Storage, outer: str | Storage) -> str | None:
    """Where `inner`'s root lies under `outer`'s root, as a key prefix: ``""`` when they are the same place,
    ``"a/b"`` when inner is the folder ``a/b`` of outer, None when inner is not within outer (another bucket,
    endpoint or kind, a sibling prefix: ``s3://b/photos-out`` is not within ``s3://b/photos``). Local roots are
    compared after resolving symlinks. Nothing is contacted.
    """
    inner, outer = _as_storage(inner), _as_storage(outer)
    if inner.kind != outer.kind or (inner.kind == "s3" and inner.s3.endpoint != outer.s3.endpoint):
        return None
    if inner.kind == "local":
        a, b = os.path.realpath(inner.root), os.path.realpath(outer.root)
        if os.path.commonpath([a, b]) != b:
            return None
        rel = os.path.relpath(a, b)
        return "" if rel == "." else rel.replace(os.sep, "/")
    if inner.root == outer.root:
        return ""
    head = outer.root.rstrip("/") + "/"
    return inner.root[len(head):] if inner.root.startswith(head) else None
