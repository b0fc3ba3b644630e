"""The job's storage: the storage core of `finedetail` (`storage`: keys, atomic reads and writes; `listing`;
`retry`: one retry policy; `s3`: S3 settings) under one name, plus the job's output layout (`mask_key`,
`output_key`, `output_path`).

The storage core lives in ``finedetail`` so that the checkpoint loader, which must not import ``job``, shares it;
the job keeps calling it by this name (``jio.read_bytes(...)``)::

    out, _ = open_storage("s3://out/run1")
    write_bytes_atomic(out, output_key("masks", "a/b.jpg", suffix=".png"), png)   # s3://out/run1/masks/a/b.png
"""

from __future__ import annotations

import posixpath
import re

from finedetail import listing, retry, s3, storage
from finedetail.listing import *  # noqa: F403 - the storage core, under the job's name
from finedetail.retry import *  # noqa: F403
from finedetail.s3 import *  # noqa: F403
from finedetail.storage import *  # noqa: F403
from finedetail.storage import safe_key

__all__ = [*storage.__all__, *listing.__all__, *retry.__all__, *s3.__all__, "mask_key", "output_key", "output_path"]

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
