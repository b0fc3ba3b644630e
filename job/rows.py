"""How arrays travel in Ray rows: as self-describing ``.npy`` bytes in binary columns.

Variable-sized images and maps, and error rows that carry none, fit one binary column type (empty bytes = absent),
so every batch has the same schema whatever its rows hold.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["pack", "unpack", "column"]


def pack(array: np.ndarray | None) -> bytes:
    if array is None:
        return b""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def unpack(data: bytes | None) -> np.ndarray | None:
    if data is None or len(data) == 0:
        return None
    return np.load(io.BytesIO(data), allow_pickle=False)


def column(values: list) -> np.ndarray:
    """A list of python values -> a 1-D numpy column (object dtype for bytes/str so Arrow sees binary/string)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
