"""S3 connection settings and the pyarrow S3 filesystem built from them (no credentials ever stored).

`S3Settings.from_env` reads the non-secret settings (endpoint, region) on the driver; they travel with a pickled
`finedetail.storage.Storage`, and each process builds its own filesystem with `s3_filesystem`, resolving
credentials itself from the standard AWS chain. Imports neither ray nor torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from finedetail.redaction import redact

__all__ = ["S3Settings", "s3_filesystem"]


@dataclass(frozen=True)
class S3Settings:
    """Non-secret S3 connection settings (picklable; credentials are never stored here).

    ``endpoint`` is ``host[:port]`` for S3-compatible servers (None = AWS),
    ``scheme`` "http" or "https", ``region`` None = resolve from the bucket
    when the filesystem is first created (AWS only).  Timeouts in seconds.
    ``sdk_max_attempts`` is the AWS SDK's own (fast) retry layer inside each of
    our tries; Ray Data reading through `Storage.filesystem` relies on it.
    """

    endpoint: str | None = None
    scheme: str = "https"
    region: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 60.0
    sdk_max_attempts: int = 3

    def __post_init__(self):
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', got {self.scheme=}")
        if self.sdk_max_attempts < 1:
            raise ValueError(f"sdk_max_attempts must be >= 1, got {self.sdk_max_attempts=}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Settings:
        """Settings from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_REGION / AWS_DEFAULT_REGION.

        The S3-specific endpoint variable wins over the global one, AWS_REGION
        over AWS_DEFAULT_REGION (AWS SDK precedence).  With a custom endpoint
        and no region, the region is "us-east-1" (what S3-compatible servers expect).
        """
        env = os.environ if environ is None else environ
        url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        if url is None:
            return cls(region=region)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"AWS endpoint URL must look like http(s)://host[:port], got {redact(url)!r}")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(
                f"AWS endpoint URL must have no path, query or user info, got {redact(url)!r}; "
                "the bucket goes in the s3:// URI")
        return cls(endpoint=parts.netloc, scheme=parts.scheme, region=region or "us-east-1")


def s3_filesystem(s: S3Settings, *, region: str | None) -> pafs.S3FileSystem:
    """The pyarrow S3 filesystem for settings `s` in `region` (None: the SDK's default)."""
    return pafs.S3FileSystem(
        region=region,
        endpoint_override=s.endpoint,
        scheme=s.scheme,
        connect_timeout=s.connect_timeout,
        request_timeout=s.request_timeout,
        # Small objects then go up in one PutObject instead of a multipart upload.
        allow_delayed_open=True,
        background_writes=False,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s.sdk_max_attempts),
    )
