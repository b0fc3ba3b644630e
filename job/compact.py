"""Manifest compaction and the bounded-memory done set (resume of an archive of millions).

The write stage adds one small Parquet part per written batch (``job.manifest``): a million images leave a quarter
of a million parts, and a resume that reads them all into one table holds every row in the driver. Compaction
rewrites parts as a generation of a few **shards sorted by key, one row per key** (its latest, by ``finished_at``),
named ``manifest/compact-<generation>-<shard>.parquet``, and only then deletes the parts it read. It is tiered (an
LSM tree's levels, flattened): a run's new parts make a generation of their own, so a ``--limit 8`` trial on a
compacted million does not rewrite the million; when `MAX_GENERATIONS` would be exceeded (or ``full=True``) every
generation is merged into one, one row per key overall.

Crash safety rests on one property of the manifest: readers keep each key's latest row, so a row present twice is
harmless. A compaction killed at any point leaves old inputs and some new shards side by side (duplicates only);
the next compaction reads them all and writes a new generation. Compacting twice gives the same rows as once.
Run it only while holding the output's lease (`job.lease`): nothing else may write the manifest meanwhile.

Memory: an external merge sort. Unsorted parts are read in runs of `RUN_ROWS` rows, each sorted and spilled to a
local temp file; the runs and the existing shards (each sorted) are then merged batch by batch
(`merge_latest`), holding one Arrow batch per source. The done set (`iter_done_keys`) streams keys in sorted
order from that merge, so the job can walk it side by side with a sorted listing (`job.listing`)::

    compact(storage)                                # under the lease; a no-op when there are no parts
    for key in iter_done_keys(storage, "cfg-hash"):  # sorted, each once
        ...
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from job import io as jio
from job.manifest import SCHEMA

__all__ = ["CompactStats", "compact", "iter_done_keys", "manifest_files", "merge_latest"]

#: rows of unsorted parts sorted in memory at once before spilling them to a local run file
RUN_ROWS = 100_000
#: rows per compacted shard
SHARD_ROWS = 250_000
#: generations kept side by side before a compaction merges them all (`compact`)
MAX_GENERATIONS = 8
#: rows per batch read from a sorted source during the merge
BATCH_ROWS = 16_384
#: parallel reads / deletes of small objects (IO bound)
IO_THREADS = 16
SHARD_PREFIX = "compact-"
DONE_COLUMNS = ("key", "status", "config_hash", "finished_at")


@dataclass(frozen=True)
class CompactStats:
    """What one `compact` call did: ``rows_read`` (every version of every key), ``rows`` written (one per key),
    ``shards`` written, ``parts`` and ``old_shards`` read and removed, ``seconds`` taken; all zero but
    ``shards_kept`` when there was nothing to do."""

    rows_read: int = 0
    rows: int = 0
    shards: int = 0
    parts: int = 0
    old_shards: int = 0
    shards_kept: int = 0
    seconds: float = 0.0


def manifest_files(storage: jio.Storage) -> tuple[list[str], list[str]]:
    """(parts, shards): keys under ``manifest/`` of the uncompacted parts and of the compacted shards, sorted."""
    names = jio.list_files(storage, "manifest", extensions=(".parquet",))
    shards = [f"manifest/{n}" for n in names if n.startswith(SHARD_PREFIX) and "/" not in n]
    parts = [f"manifest/{n}" for n in names if not (n.startswith(SHARD_PREFIX) and "/" not in n)]
    return parts, shards


def _generations(shards: Sequence[str]) -> set[str]:
    return {s.rsplit("/", 1)[-1][len(SHARD_PREFIX):].split("-", 1)[0] for s in shards}


def _read_part(storage: jio.Storage, key: str, columns: Sequence[str] | None) -> pa.Table:
    table = pq.read_table(io.BytesIO(jio.read_bytes(storage, key)), columns=list(columns) if columns else None)
    schema = pa.schema([SCHEMA.field(c) for c in columns]) if columns else SCHEMA
    return table.cast(schema)


def _sort(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("key", "ascending"), ("finished_at", "ascending")]))


def _spill_runs(storage: jio.Storage, parts: Sequence[str], tmp: str, columns: Sequence[str] | None
                ) -> list[str]:
    """Read the parts (a thread pool), sort them in runs of about `RUN_ROWS` rows, write each run to a local
    Parquet file under ``tmp``; returns the run files."""
    runs: list[str] = []
    pending: list[pa.Table] = []
    held = 0

    def spill() -> None:
        nonlocal pending, held
        if not pending:
            return
        path = os.path.join(tmp, f"run-{len(runs):05d}.parquet")
        pq.write_table(_sort(pa.concat_tables(pending)), path)
        runs.append(path)
        pending, held = [], 0

    with ThreadPoolExecutor(IO_THREADS) as pool:
        for table in pool.map(lambda k: _read_part(storage, k, columns), parts):
            pending.append(table)
            held += table.num_rows
            if held >= RUN_ROWS:
                spill()
    spill()
    return runs


@contextlib.contextmanager
def _sorted_sources(storage: jio.Storage, parts: Sequence[str], shards: Sequence[str],
                    columns: Sequence[str] | None):
    """Local paths of sorted Parquet files covering every row of ``parts`` and ``shards`` (S3 shards are downloaded,
    parts spilled to sorted runs); the temp folder is removed on exit."""
    with tempfile.TemporaryDirectory(prefix="fd-compact-") as tmp:
        paths = _spill_runs(storage, parts, tmp, columns)
        for i, key in enumerate(shards):
            if storage.kind == "local":
                paths.append(storage.path(key))
            else:
                local = os.path.join(tmp, f"shard-{i:05d}.parquet")
                jio.read_to_file(storage, key, local)
                paths.append(local)
        yield paths


def _batches(path: str, columns: Sequence[str] | None) -> Iterator[pa.Table]:
    f = pq.ParquetFile(path)
    schema = pa.schema([SCHEMA.field(c) for c in columns]) if columns else SCHEMA
    for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=list(columns) if columns else None):
        if batch.num_rows:
            yield pa.Table.from_batches([batch]).cast(schema)


def _latest_only(table: pa.Table) -> pa.Table:
    """Rows sorted by (key, finished_at) -> the last row of each key."""
    if table.num_rows <= 1:
        return table
    keys = table["key"]
    last = pc.not_equal(keys.slice(0, table.num_rows - 1), keys.slice(1))
    return table.filter(pa.concat_arrays([last.combine_chunks(), pa.array([True])]))


def merge_latest(sources: Iterable[Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """K-way merge of key-sorted table streams into key-sorted tables holding each key's latest row (by
    ``finished_at``) once. Holds about one batch per source: rows below the smallest "last key" of the sources
    that may still produce are final and are yielded; a key that fills a source's whole buffer pulls its next
    batch."""
    its = [iter(s) for s in sources]
    bufs: list[pa.Table | None] = [None] * len(its)
    more = [True] * len(its)

    def pull(i: int) -> None:
        nxt = next(its[i], None)
        if nxt is None:
            more[i] = False
        else:
            bufs[i] = nxt if bufs[i] is None else pa.concat_tables([bufs[i], nxt])

    while True:
        for i in range(len(its)):
            while more[i] and (bufs[i] is None or bufs[i].num_rows == 0):
                pull(i)
        live = [i for i in range(len(its)) if bufs[i] is not None and bufs[i].num_rows]
        if not live:
            return
        bounds = [bufs[i]["key"][-1].as_py() for i in live if more[i]]
        taken = []
        if not bounds:  # every source is exhausted: all that is buffered is final
            taken = [bufs[i] for i in live]
            for i in live:
                bufs[i] = None
        else:
            bound = min(bounds)
            for i in live:
                n = pc.sum(pc.less(bufs[i]["key"], bound)).as_py() or 0
                if n:
                    taken.append(bufs[i].slice(0, n))
                    bufs[i] = bufs[i].slice(n)
            if not taken:  # a source's buffer holds only the bound key: read on until it shows a larger one
                for i in live:
                    if more[i] and bufs[i]["key"][-1].as_py() == bound:
                        pull(i)
                continue
        yield _latest_only(_sort(pa.concat_tables(taken)))


def _shard_key(gen: str, i: int) -> str:
    return f"manifest/{SHARD_PREFIX}{gen}-{i:05d}.parquet"


def _delete_all(storage: jio.Storage, keys: Sequence[str]) -> None:
    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(lambda k: jio.delete(storage, k), keys))


def compact(storage: jio.Storage | str, *, shard_rows: int = SHARD_ROWS, full: bool = False) -> CompactStats:
    """Compact the manifest under ``storage`` into a new generation of key-sorted shards holding each key's latest
    row, then delete the parts and shards it read. Tiered, so that a short run on a big archive does not rewrite
    it: the new parts alone make the new generation while there are fewer than `MAX_GENERATIONS`; every
    generation and part are merged into one when there would be more, or with ``full``. A no-op when there is no
    part (and, with ``full``, at most one generation). Crash-safe and repeatable (module docstring); call it only
    while holding the output's lease."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows=}")
    storage = storage if isinstance(storage, jio.Storage) else jio.open_storage(storage)[0]
    t0 = time.perf_counter()
    parts, shards = manifest_files(storage)
    gens = _generations(shards)
    merge_all = full or len(gens) >= MAX_GENERATIONS
    if not parts and (len(gens) <= 1 or not merge_all):
        return CompactStats(shards_kept=len(shards))
    shards, kept = (shards, 0) if merge_all else ([], len(shards))
    gen = f"{time.time_ns() // 1_000_000:013d}"
    while any(s.startswith(f"manifest/{SHARD_PREFIX}{gen}-") for s in shards):  # same ms as a crashed one: next
        gen = f"{int(gen) + 1:013d}"
    rows = written = read = 0
    with _sorted_sources(storage, parts, shards, None) as paths, \
            tempfile.TemporaryDirectory(prefix="fd-shard-") as tmp:
        writer, local, in_shard = None, os.path.join(tmp, "shard.parquet"), 0

        def finish() -> None:
            nonlocal writer, written, in_shard
            if writer is not None:
                writer.close()
                jio.write_file(storage, _shard_key(gen, written), local)
                written, writer, in_shard = written + 1, None, 0

        read = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        for chunk in merge_latest(_batches(p, None) for p in paths):
            while chunk.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(local, SCHEMA)
                take = chunk.slice(0, shard_rows - in_shard)
                writer.write_table(take)
                in_shard += take.num_rows
                rows += take.num_rows
                chunk = chunk.slice(take.num_rows)
                if in_shard >= shard_rows:
                    finish()
        finish()
    # Every row read is now in the new generation: only now may its sources go (a crash before: duplicates only).
    _delete_all(storage, [*parts, *shards])
    return CompactStats(rows_read=read, rows=rows, shards=written, parts=len(parts), old_shards=len(shards),
                        shards_kept=kept, seconds=round(time.perf_counter() - t0, 3))


def iter_done_keys(storage: jio.Storage | str, config_hash: str) -> Iterator[str]:
    """Keys whose latest manifest row is ``ok`` with ``config_hash``, sorted (Python str order = the UTF-8 byte
    order of S3 listings and of Arrow's sort), each once, in bounded memory. Fast after `compact` (sorted shards
    read column by column); parts left by a killed run are sorted through local runs first."""
    storage = storage if isinstance(storage, jio.Storage) else jio.open_storage(storage)[0]
    parts, shards = manifest_files(storage)
    with _sorted_sources(storage, parts, shards, DONE_COLUMNS) as paths:
        for chunk in merge_latest(_batches(p, DONE_COLUMNS) for p in paths):
            ok = pc.and_(pc.equal(chunk["status"], "ok"), pc.equal(chunk["config_hash"], config_hash))
            yield from chunk["key"].filter(ok).to_pylist()


def main(argv: list[str] | None = None) -> int:
    """``python -m job.compact OUTPUT [--full]``: compact an output's manifest now, holding its lease (refused while
    a job runs there). The job does this itself at its start and end; ``--full`` merges every generation."""
    import argparse
    import uuid

    from job import lease as jl

    p = argparse.ArgumentParser(prog="python -m job.compact", description=main.__doc__)
    p.add_argument("output", help="the job's --output (local folder or s3://bucket/prefix)")
    p.add_argument("--full", action="store_true", help="merge every generation into one (one row per key)")
    args = p.parse_args(argv)
    storage = jio.open_storage(args.output)[0]
    try:
        lease = jl.acquire(storage, f"compact-{uuid.uuid4().hex[:8]}")
    except (jl.LeaseHeld, jio.StorageError) as exc:
        p.exit(2, f"finedetail: error: {' '.join(jio.redact(exc).split())}\n")
    try:
        stats = compact(storage, full=args.full)
    finally:
        lease.release()
    print(f"compacted {stats.rows_read} rows ({stats.parts} parts, {stats.old_shards} shards) -> {stats.rows} keys "
          f"in {stats.shards} shard(s), {stats.shards_kept} kept, {stats.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
