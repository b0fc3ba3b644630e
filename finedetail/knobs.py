"""Documented config fields (pure: dataclasses only).

A config dataclass declares each user-facing knob with `knob`, which is ``dataclasses.field`` plus what a user
needs to read about it, kept in the field's metadata::

    radius: int = knob(4, "guided filter window radius (px)", range=">= 1")

``python -m job config --doc`` (``job.configdoc``) prints every key from these metadata, and a test fails when a
field has none.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["knob"]


def knob(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None,
         range: str | None = None, backends: str | None = None) -> Any:
    """A dataclass field with its documentation.

    doc: what the knob does (one or two sentences, the user's words). range: the values ``__post_init__`` accepts,
    as text (``">= 0"``, ``"in (0, 1]"``, ``"one of: a, b"``). backends: the backends that read it (None: every
    backend). factory: ``default_factory`` (then ``default`` stays unset).
    """
    if not doc:
        raise ValueError("knob needs a doc: say what the knob does")
    meta = {"doc": doc, "range": range, "backends": backends}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
