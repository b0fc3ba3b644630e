"""Credentials out of text: `redact` for every message, log line and traceback that may quote a URI, a header or
an environment.

Pure: imports only the standard library. The checkpoint loader (``finedetail.models.weights``) and the job
(``job.io.redact`` is this function) both use it, so a secret is masked the same way everywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["redact"]

_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
_MIN_SECRET_LEN = 4  # shorter env values are not credentials and would shred the message
_MASK = "***"
_ACCESS_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|APKA|ABIA|ACCA)[A-Z0-9]{12,}\b")
_ASSIGNMENT_RE = re.compile(
    r"(?i)(\b[\w.-]*(?:secret|token|password|passwd|credential|signature|access[_-]?key)[\w.-]*"
    r"[\"']?\s*[=:]\s*[\"']?)([^\s\"'&;,]+)"
)
#: query parameters that carry a signature under a short name (Azure SAS ``sig``, CloudFront ``Policy``)
_QUERY_SECRET_RE = re.compile(r"(?i)([?&](?:sig|policy|key-pair-id)=)([^\s&#\"']+)")
_AUTH_HEADER_RE = re.compile(r"(?i)(\bauthorization\s*[:=]\s*)([^\r\n]+)")
_URL_USERINFO_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)@", re.IGNORECASE)
#: ``scheme://TOKEN@host``: a user name alone is how tokens travel (``https://<token>@host/...``)
_URL_USER_ONLY_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/\s:@]+)@", re.IGNORECASE)


def redact(text: object, *, secrets: Iterable[str] = ()) -> str:
    """`text` as str with credentials replaced by ``***``.

    Removes: the values of AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    AWS_SECURITY_TOKEN and AWS_ACCESS_KEY_ID found in the environment (values
    of at least 4 characters) and any extra `secrets`; AWS access key IDs
    (AKIA..., ASIA..., ...); the value of ``name=value`` / ``name: value``
    pairs whose name mentions secret, token, password, credential, signature or
    access key (covers presigned-URL query parameters: X-Amz-Signature,
    X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature, Signature,
    AWSAccessKeyId); the ``sig``, ``Policy`` and ``Key-Pair-Id`` query
    parameters (Azure SAS, CloudFront); Authorization headers; the password in
    ``scheme://user:password@host`` and the user in ``scheme://token@host``.
    """
    out = str(text)
    values = {os.environ.get(name, "") for name in _SECRET_ENV_VARS} | set(secrets)
    for value in sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True):
        out = out.replace(value, _MASK)
    out = _AUTH_HEADER_RE.sub(lambda m: m.group(1) + _MASK, out)
    out = _URL_USERINFO_RE.sub(lambda m: m.group(1) + _MASK + "@", out)
    out = _URL_USER_ONLY_RE.sub(lambda m: m.group(1) + _MASK + "@", out)
    out = _ASSIGNMENT_RE.sub(lambda m: m.group(1) + _MASK, out)
    out = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + _MASK, out)
    return _ACCESS_KEY_ID_RE.sub(_MASK, out)

