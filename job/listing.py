"""Streaming input listing: the inputs in key order, page by page, merged with the done set, fed to Ray Data while
the listing goes on.

An archive of millions is never listed whole before work starts: S3 is read one ``ListObjectsV2`` page (1000 keys)
at a time, a local tree one folder at a time (``os.scandir``, entries sorted so keys come out in the same order as
S3's: Python str order = UTF-8 byte order). Keys are merged on the fly with the sorted done set
(`job.compact.iter_done_keys`), cut at ``--limit`` (``--limit 8`` lists one page, not the archive), and handed to the
dataset through a bounded queue (`KeyFeed`): the driver holds a few pages, whatever the archive's size.

Memory: a local folder's entries are sorted in memory, so the driver holds the names of the largest single folder;
everything else is bounded by a few pages.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from job import io as jio

__all__ = ["KeyFeed", "ListingCounts", "StemCheck", "iter_keys", "iter_todo", "pages"]

#: keys per page handed to the pipeline (S3's own page size)
PAGE_KEYS = 1000
#: Ray Data's target block size for the job's dataset (`KeyFeed.dataset`, `job.run.build_dataset`). A task's output
#: is held until it reaches this size (or the task ends), and the key feed's one read task ends only with the
#: listing: with Ray's default (128 MiB) no key reached the pipeline before the whole archive was listed, and an
#: archive of more keys than `KeyFeed.max_in_flight` deadlocked. Each block of keys is padded to this size
#: (`_queue_read`), so it leaves the read task at once; an image's row is larger, so each image is a block of its
#: own and the model pools share the work one batch at a time.
BLOCK_BYTES = 1024
#: pages the listing may run ahead of the pipeline
QUEUE_PAGES = 4


def _walk_local(root: str, exclude: frozenset[str]) -> Iterator[str]:
    """Relative keys of the files under ``root`` in sorted key order, one folder's entries in memory at a time.
    A folder sorts as ``name/`` so that its files come where their keys sort (``a-b`` < ``a.png`` < ``a/x``).
    Symlinked folders are not entered (no cycles); symlinked files are listed (reading one outside the root is
    refused later). Hidden entries and ``exclude`` folders are not entered."""
    if not os.path.exists(root):
        return
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a folder: {root}")

    def entries(rel: str) -> Iterator[tuple[str, bool]]:
        items = []
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                key = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir():
                    if not e.is_symlink() and key not in exclude:
                        items.append((f"{key}/", True))
                else:
                    items.append((key, False))
        items.sort()
        return iter(items)

    stack = [entries("")]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif item[1]:
            stack.append(entries(item[0][:-1]))
        else:
            yield item[0]


def _walk_local_checked(storage: jio.Storage, skip: frozenset[str]) -> Iterator[str]:
    """`_walk_local` with its OS errors (a root that is a file, a folder that cannot be read) as `jio.StorageError`."""
    try:
        yield from _walk_local(storage.root, skip)
    except OSError as exc:
        raise jio.StorageError(f"cannot list {storage.uri}: {jio.redact(exc)}; check the path and its permissions",
                               uri=storage.uri, op="list", attempts=1) from None


def iter_keys(storage: jio.Storage, *, extensions: tuple[str, ...], exclude: Iterable[str] = (),
              refused: Callable[[str], None] | None = None) -> Iterator[str]:
    """The input keys under ``storage``, sorted, streamed: the filter of `jio.list_files` (hidden names skipped,
    ``extensions`` case-insensitive, ``exclude`` folders left out, names `jio.safe_key` refuses passed to
    ``refused``) over a paged listing."""
    skip = frozenset(jio.safe_key(e.rstrip("/")) for e in exclude)
    exts = tuple(e.lower() for e in extensions)
    if storage.kind == "local":
        raw = _walk_local_checked(storage, skip)
    else:
        from job.s3walk import walk_s3

        raw = walk_s3(storage)
    for key in raw:
        if skip and any(key.startswith(f"{e}/") for e in skip):
            continue
        if any(seg.startswith(".") and seg not in (".", "..") for seg in key.split("/")):
            continue
        if not key.lower().endswith(exts):
            continue
        try:
            yield jio.safe_key(key)
        except ValueError:
            if refused is not None:
                refused(key)


class StemCheck:
    """Finds inputs that would write the same mask (``a.jpg`` and ``a.png`` -> ``masks/a.png``) in a sorted key
    stream, holding only the stems whose ``stem.`` prefix the current key still has (nested, so at most one per
    dot in the key): keys of one stem all start with ``stem.`` and are therefore contiguous in sorted order."""

    def __init__(self) -> None:
        self._open: list[tuple[str, str]] = []  # (stem, first key), each stem + "." a prefix of the next

    def clash(self, key: str) -> str | None:
        """The earlier key with the same stem as ``key``, or None. Keys must come sorted."""
        while self._open and not key.startswith(f"{self._open[-1][0]}."):
            self._open.pop()
        stem = os.path.splitext(key)[0]
        for s, first in self._open:
            if s == stem:
                return first
        self._open.append((stem, key))
        return None


@dataclass
class ListingCounts:
    """What the listing saw so far: ``listed`` inputs, ``done`` (skipped: already ok), ``todo`` handed to the
    pipeline, and whether it stopped early at ``--limit`` (``cut``) or ran to the end (``finished``)."""

    listed: int = 0
    done: int = 0
    todo: int = 0
    cut: bool = False
    finished: bool = False


def iter_todo(keys: Iterable[str], done: Iterable[str], counts: ListingCounts, *, limit: int | None = None,
              clash: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """Keys (sorted) that are not in ``done`` (sorted), walked side by side; at most ``limit``. A key with the stem
    of an earlier one is passed to ``clash(key, earlier)`` instead. Updates ``counts`` as it goes."""
    stems = StemCheck()
    done_it = iter(done)
    nxt = next(done_it, None)
    for key in keys:
        if limit is not None and counts.todo >= limit:
            counts.cut = True
            return
        counts.listed += 1
        while nxt is not None and nxt < key:
            nxt = next(done_it, None)
        earlier = stems.clash(key)
        if nxt == key:
            counts.done += 1
            continue
        if earlier is not None and clash is not None:
            clash(key, earlier)
            continue
        counts.todo += 1
        yield key
    counts.finished = True


def pages(keys: Iterable[str], size: int | None = None) -> Iterator[list[str]]:
    """``keys`` in lists of ``size`` (default `PAGE_KEYS`), the last one shorter."""
    size = PAGE_KEYS if size is None else size
    page: list[str] = []
    for k in keys:
        page.append(k)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


@dataclass
class KeyFeed:
    """Pages of keys, from a driver thread to the dataset's read tasks, through a bounded queue actor on the
    driver's node (`ray.util.queue.Queue`): the listing runs while the pipeline works, at most `QUEUE_PAGES` pages
    ahead, and at most ``max_in_flight`` keys beyond those whose rows came back (`done`). `dataset` is a Ray
    dataset of ``{"key"}`` rows of ``block_rows`` keys each; its read task also runs on the driver's node, so a worker node lost mid-run loses no key that was taken from the queue. `start` the thread
    before consuming the dataset; `error` holds what stopped the listing (re-raise it after the run)."""

    source: Iterator[list[str]]
    block_rows: int
    #: keys handed to the pipeline and not yet back as rows (`done`) before the listing waits: Ray Data's
    #: backpressure counts bytes, and blocks of a few keys are too small for it to ever hold the read back
    max_in_flight: int = 4 * PAGE_KEYS
    error: BaseException | None = None
    fed: int = 0
    returned: int = 0
    _queue: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows=}")

    def dataset(self):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        here = NodeAffinitySchedulingStrategy(node, soft=False)
        self._queue = Queue(maxsize=QUEUE_PAGES, actor_options={"num_cpus": 0, "scheduling_strategy": here})
        # the read task on this node too (Ray's node-id label: ``ray_remote_args`` goes away in Ray 2.64)
        ds = ray.data.read_datasource(_queue_datasource(self._queue, self.block_rows), override_num_blocks=1,
                                      num_cpus=0, label_selector={"ray.io/node-id": node})
        ds.context.target_max_block_size = BLOCK_BYTES
        return ds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="finedetail-listing", daemon=True)
        self._thread.start()

    def _put(self, item: list[str] | None) -> bool:
        from ray.util.queue import Full

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=1.0)
                return True
            except Full:
                continue
        return False

    def done(self, n: int) -> None:
        """``n`` more rows came back from the pipeline (the driver's loop calls this)."""
        self.returned += n

    def _run(self) -> None:
        try:
            for page in self.source:
                while self.fed - self.returned > self.max_in_flight and not self._stop.is_set():
                    self._stop.wait(0.05)
                if not self._put(page):
                    return
                self.fed += len(page)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread, which re-raises it
            self.error = exc
        self._put(None)

    def close(self) -> None:
        """Stop the listing thread and drop the queue (after the run, or when it failed)."""
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._queue is not None:
            ray.kill(self._queue.actor)
            self._queue = None


def _queue_read(queue: Any, block_rows: int):
    """The read task: blocks of ``block_rows`` keys, each padded to `BLOCK_BYTES` (a ``pad`` column the decode
    step ignores) so that Ray Data hands it on at once instead of gathering keys until the listing ends."""
    import pyarrow as pa

    while True:
        page = queue.get(block=True)
        if page is None:
            return
        for i in range(0, len(page), block_rows):
            keys = pa.array(page[i:i + block_rows], pa.string())
            pad = [b""] * len(keys)
            pad[0] = b"\0" * max(0, BLOCK_BYTES - keys.nbytes)
            yield pa.table({"key": keys, "pad": pa.array(pad, pa.binary())})


def _datasource_class():
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class QueueDatasource(Datasource):
        """One read task that yields the queue's pages as blocks of ``block_rows`` keys until the end marker."""

        def __init__(self, queue: Any, block_rows: int):
            super().__init__()
            self._queue, self._rows = queue, block_rows

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            queue, rows = self._queue, self._rows
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(lambda: _queue_read(queue, rows), meta)]

    return QueueDatasource


def _queue_datasource(queue: Any, block_rows: int) -> Any:
    """The `QueueDatasource` (its class is built on first use: Ray is imported late)."""
    return _datasource_class()(queue, block_rows)
