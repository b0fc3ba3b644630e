"""Retrying transient IO failures: the error types, what counts as transient, the backoff, and THE retry loop.

Every byte the project moves (storage reads, writes and listings in `finedetail.storage`, the job's streamed
uploads, checkpoint downloads over HTTP(S) and S3 in `finedetail.models.fetch`) runs through `retry_call`, so they
share one notion of transient (connection refused / reset, timeouts, 5xx, throttling: `is_transient`) and one
exponential backoff with jitter (`backoff_delay` under a `RetryPolicy`). What still fails becomes a `StorageError`
whose message has credentials removed (`redact`).

Imports neither ray nor torch (tests/test_layering.py checks it).
"""

from __future__ import annotations

import errno
import http.client
import logging
import random
import re
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa

from finedetail.redaction import redact

__all__ = [
    "ObjectNotFoundError",
    "RetryPolicy",
    "StorageError",
    "backoff_delay",
    "error_detail",
    "is_transient",
    "retry_call",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    unless it was try ``max_tries``.  ``max_tries=1`` disables retries.  ``quiet=True``: `retry_call` logs no
    warning per retried try (for a caller that reports the final failure itself, such as the driver's quick
    weights check).
    """

    max_tries: int = 8
    base_delay: float = 0.5
    max_delay: float = 10.0
    quiet: bool = False

    def __post_init__(self):
        if not isinstance(self.max_tries, int) or isinstance(self.max_tries, bool) or self.max_tries < 1:
            raise ValueError(f"max_tries must be an int >= 1, got {self.max_tries=}")
        if not self.base_delay >= 0:
            raise ValueError(f"base_delay must be >= 0 seconds, got {self.base_delay=}")
        if not self.max_delay >= self.base_delay:
            raise ValueError(
                f"max_delay must be >= base_delay, got {self.max_delay=} and {self.base_delay=}")
        if not isinstance(self.quiet, bool):
            raise ValueError(f"quiet must be a bool, got {self.quiet=}")


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

    Understands Python OS errors (by type and errno), urllib's HTTP errors (by status) and connection errors (by
    their reason), a truncated or garbled HTTP response (``http.client.IncompleteRead`` and kin), pyarrow's S3
    errors ("AWS Error NAME [(HTTP status NNN)]") and, as a fallback, the usual words for connection failures in a
    message.
    """
    if isinstance(exc, StorageError):
        return False
    if isinstance(exc, urllib.error.HTTPError):
        return _transient_status(exc.code)
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return is_transient(exc.reason)
    if isinstance(exc, http.client.HTTPException):
        return True  # the connection broke mid-response (IncompleteRead, RemoteDisconnected, BadStatusLine)
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
    status_match = _HTTP_STATUS_RE.search(message)
    if status_match is not None and _transient_status(int(status_match.group(1))):
        return True
    return bool(_TRANSIENT_TEXT_RE.search(message))


def error_detail(exc: BaseException) -> str:
    """``"TypeName: message"`` of `exc`, credentials removed: the detail every IO error message quotes."""
    return redact(f"{type(exc).__name__}: {exc}")


def retry_call(fn: Callable[[], T], policy: RetryPolicy, *, what: str,
               fail: Callable[[BaseException, int, bool], BaseException],
               catch: tuple[type[BaseException], ...] = (OSError, pa.ArrowException),
               sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried while it fails transiently: THE retry loop of the project.

    Storage operations (inputs, outputs, listings: `retrying`), checkpoint downloads (HTTP(S) and S3) and the job's
    streamed uploads all run through it, so they share one notion of transient (`is_transient`) and one backoff
    (`backoff_delay` under `policy`).  An exception of a `catch` type is retried when transient, with a warning
    naming `what` (redacted; none under ``policy.quiet``); a permanent one, or the one of try ``policy.max_tries``, is replaced by
    ``fail(exc, tries_made, transient)``, raised ``from None`` (the original's traceback may quote credentials).
    A `StorageError` from `fn` and exceptions of other types (programming errors) propagate unchanged.
    """
    for attempt in range(1, policy.max_tries + 1):
        try:
            return fn()
        except StorageError:
            raise
        except catch as exc:
            transient = is_transient(exc)
            if not transient or attempt == policy.max_tries:
                raise fail(exc, attempt, transient) from None
            delay = backoff_delay(policy, attempt)
            if not policy.quiet:
                log.warning("transient error on %s (try %d/%d): %s; retrying in %.2f s",
                            redact(what), attempt, policy.max_tries, error_detail(exc), delay)
            sleep(delay)
    raise AssertionError("unreachable")  # the loop always returns or raises
