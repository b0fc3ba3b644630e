"""The S3 side of the streaming listing: a bucket prefix's keys in key order, page by page, folders listed ahead.

Every folder, at every depth, is listed one level at a time (``ListObjectsV2`` with ``Delimiter='/'``) by a thread of
its own, and the next `S3_LOOKAHEAD` folders in key order are listed while the reader works through the current one
(`walk_s3`). A reply's XML is read for the keys alone (`_parse_listing`): botocore's own parser builds a dict and
parses a date per object, ~55 µs a key here, 4x the rest of the listing. `job.listing` merges these keys with the
done set and feeds them to the pipeline.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any, Callable, Iterator

from job import io as jio

__all__ = ["S3_LOOKAHEAD", "S3_PAGE_KEYS", "walk_s3"]

#: keys per ``ListObjectsV2`` page asked for (S3's maximum)
S3_PAGE_KEYS = 1000
#: S3 folders (any depth) listed ahead of the reader, in parallel (`walk_s3`)
S3_LOOKAHEAD = 8


def _s3_client(storage: jio.Storage):
    import boto3
    from botocore.config import Config

    s = storage.s3
    endpoint = f"{s.scheme}://{s.endpoint}" if s.endpoint else None
    config = Config(retries={"max_attempts": max(3, storage.retry.max_tries), "mode": "standard"},
                    max_pool_connections=S3_LOOKAHEAD + 2,
                    connect_timeout=s.connect_timeout, read_timeout=s.request_timeout,
                    s3={"addressing_style": "path" if endpoint else "auto"})
    # a session of its own: boto3's default session keeps the credentials it first found for the process's life
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=s.region, config=config)
    client.meta.events.register("before-parse.s3.ListObjectsV2", _keep_raw_listing)
    return client


def _list_error(storage: jio.Storage, exc: BaseException) -> jio.StorageError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return jio.StorageError(
        f"cannot list {storage.uri}: {jio.redact(f'{type(exc).__name__}: {exc}')}; "
        + ("the bucket does not exist: check the URI" if code == "NoSuchBucket"
           else "check the URI, the endpoint and the credentials"),
        uri=storage.uri, op="list", attempts=1)


_EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>'
                  b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></ListBucketResult>')


def _keep_raw_listing(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """botocore ``before-parse`` hook of the listing client: a successful ``ListObjectsV2`` reply's XML is kept as
    ``RawListing`` and botocore parses an empty one instead (`_parse_listing` reads the keys). Error replies are left
    to botocore (its error codes and retries)."""
    if response_dict.get("status_code") == 200:
        customized_response_dict["RawListing"] = response_dict["body"]
        response_dict["body"] = _EMPTY_LISTING


def _parse_listing(xml: bytes) -> tuple[list[str], list[str], str | None]:
    """(keys, folders, next continuation token or None) of a ``ListObjectsV2`` reply, keys URL-decoded as botocore
    decodes them when the reply says ``EncodingType=url`` (botocore asks for it)."""
    from urllib.parse import unquote_plus
    from xml.etree import ElementTree

    root = ElementTree.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    decode = unquote_plus if root.findtext(f"{ns}EncodingType") == "url" else (lambda v: v)
    keys = [decode(e.text or "") for e in root.iterfind(f"{ns}Contents/{ns}Key")]
    folders = [decode(e.text or "") for e in root.iterfind(f"{ns}CommonPrefixes/{ns}Prefix")]
    more = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
    return keys, folders, (root.findtext(f"{ns}NextContinuationToken") or None) if more else None


def _reply_listing(reply: dict[str, Any]) -> tuple[list[str], list[str], str | None]:
    """(keys, folders, next continuation token or None) of a ``list_objects_v2`` reply: from the XML the
    `_keep_raw_listing` hook kept, or from botocore's parse where the hook did not run."""
    if "RawListing" in reply:
        return _parse_listing(reply["RawListing"])
    keys = [o["Key"] for o in reply.get("Contents", ())]
    folders = [c["Prefix"] for c in reply.get("CommonPrefixes", ())]
    return keys, folders, reply.get("NextContinuationToken") if reply.get("IsTruncated") else None


def _s3_pages(storage: jio.Storage, client: Any, bucket: str, prefix: str) -> Iterator[tuple[list[str], list[str]]]:
    """One level of ``ListObjectsV2`` pages under ``prefix`` (``Delimiter='/'``) as (keys, folders), errors as
    `jio.StorageError`. ``client`` comes from `_s3_client` (its raw-listing hook)."""
    from botocore.exceptions import BotoCoreError, ClientError

    args = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": S3_PAGE_KEYS, "Delimiter": "/"}
    token = None
    while True:
        try:
            reply = client.list_objects_v2(**args, **({"ContinuationToken": token} if token else {}))
        except (BotoCoreError, ClientError) as exc:
            raise _list_error(storage, exc) from None
        keys, folders, token = _reply_listing(reply)
        yield keys, folders
        if token is None:
            return


class _FolderFeed:
    """One S3 folder listed one level deep (``Delimiter='/'``) by a thread of its own, page by page into a bounded
    queue (at most 2 pages ahead of the reader): each page as sorted ``(key, is_folder)`` entries, a folder as
    ``prefix/`` where its keys sort. Ends with None; an error is put instead and re-raised by `entries`."""

    def __init__(self, storage: jio.Storage, client: Any, bucket: str, folder: str, stop: threading.Event):
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._stop = stop
        self.thread = threading.Thread(target=self._run, args=(storage, client, bucket, folder),
                                       name="finedetail-list", daemon=True)
        self.thread.start()

    def _offer(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, storage: jio.Storage, client: Any, bucket: str, folder: str) -> None:
        try:
            for keys, folders in _s3_pages(storage, client, bucket, folder):
                if not self._offer(sorted([(k, False) for k in keys] + [(f, True) for f in folders])):
                    return
            self._offer(None)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the reader, in order
            self._offer(exc)

    def pages(self) -> Iterator[list[tuple[str, bool]]]:
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Ahead:
    """Folders listed ahead of the reader, at every depth: the reader `hint`s the sub-folders of each page it gets
    (the latest first: in key order they come before the older hints), and at most ``ahead`` hinted folders are
    being listed before the reader `take`s them. Taking a folder nobody started starts it."""

    def __init__(self, start: Callable[[str], _FolderFeed], ahead: int):
        self._start, self._ahead = start, ahead
        self._started: dict[str, _FolderFeed] = {}
        self._hinted: deque[str] = deque()
        self.feeds: list[_FolderFeed] = []

    def _begin(self, folder: str) -> _FolderFeed:
        feed = self._start(folder)
        self.feeds = [f for f in self.feeds if f.thread.is_alive()] + [feed]
        return feed

    def _fill(self) -> None:
        while len(self._started) < self._ahead and self._hinted:
            folder = self._hinted.popleft()
            self._started[folder] = self._begin(folder)

    def hint(self, folders: list[str]) -> None:
        self._hinted.extendleft(reversed(folders))
        self._fill()

    def take(self, folder: str) -> _FolderFeed:
        feed = self._started.pop(folder, None)
        if feed is None:
            if self._hinted and self._hinted[0] == folder:
                self._hinted.popleft()
            elif folder in self._hinted:
                self._hinted.remove(folder)
            feed = self._begin(folder)
        self._fill()
        return feed


def walk_s3(storage: jio.Storage, *, lookahead: int | None = None) -> Iterator[str]:
    """Relative keys under the storage's bucket/prefix in S3's order, page by page (pyarrow's S3 filesystem lists a
    whole tree before returning, so the paging is boto3's). Every folder, at every depth, is listed one level at a
    time (``Delimiter='/'``), and the next ``lookahead`` folders (default `S3_LOOKAHEAD`) in key order are listed by
    threads while the reader works through the current one: one ``ListObjectsV2`` round trip at a time is the
    listing's whole cost otherwise, and an archive's first level may hold only a few large folders (``2019/``,
    ``2020/``). A single flat folder is still paged one round trip at a time (S3's continuation tokens)."""
    lookahead = S3_LOOKAHEAD if lookahead is None else lookahead
    bucket, _, prefix = storage.root.partition("/")
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    client = _s3_client(storage)
    stop = threading.Event()
    ahead = _Ahead(lambda folder: _FolderFeed(storage, client, bucket, folder, stop), lookahead)

    def entries(folder: str) -> Iterator[tuple[str, bool]]:
        for page in ahead.take(folder).pages():
            ahead.hint([k for k, is_folder in page if is_folder])
            yield from page

    stack = [entries(prefix)]
    try:
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            elif item[1]:
                stack.append(entries(item[0]))
            elif not item[0].endswith("/"):  # a folder marker object ("photos/") is not an input
                yield item[0][len(prefix):]
    finally:
        stop.set()
        for feed in ahead.feeds:
            feed.thread.join(timeout=30)
