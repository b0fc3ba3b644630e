"""Archive scale: manifest compaction, the bounded done set, streaming listing, resume (issue 18)."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pytest

from job import compact as jc
from job import io as jio
from job import manifest as jm


def _row(key: str, t: float, status: str = "ok", h: str = "h") -> dict:
    return {"key": key, "status": status, "config_hash": h, "finished_at": t, "error": "" if status == "ok" else "x"}


def _table(keys_times: list[tuple[str, float]]) -> pa.Table:
    return pa.Table.from_pylist([{"key": k, "finished_at": float(t)} for k, t in keys_times],
                                schema=pa.schema([("key", pa.string()), ("finished_at", pa.float64())]))


@pytest.mark.parametrize("sources, expected", [
    ([[[("a", 1)], [("b", 1)]], [[("a", 2), ("c", 1)]]], [("a", 2), ("b", 1), ("c", 1)]),
    # one key spread over several batches of one source, and a later version in another source
    ([[[("a", 1), ("k", 1)], [("k", 2)], [("k", 3), ("z", 1)]], [[("k", 2.5)]]], [("a", 1), ("k", 3), ("z", 1)]),
    ([[], [[("b", 1)]], []], [("b", 1)]),
])
def test_merge_latest_keeps_each_keys_latest_row_once_in_key_order(sources, expected):
    merged = list(jc.merge_latest([[_table(b) for b in src] for src in sources]))
    got = [(r["key"], r["finished_at"]) for t in merged for r in t.to_pylist()]
    assert got == [(k, float(t)) for k, t in expected]


def _write_parts(storage, rows: list[dict], per_part: int) -> None:
    for i in range(0, len(rows), per_part):
        jm.write_part(storage, rows[i:i + per_part])


def _latest(storage) -> dict:
    return {k: (r["status"], r["finished_at"]) for k, r in jm.latest_rows(jm.read_manifest(storage)).items()}


def test_compaction_twice_equals_once_and_one_row_per_key(tmp_path, monkeypatch):
    storage = jio.open_storage(str(tmp_path))[0]
    rows = [_row(f"k{i:03d}.png", 1.0 + i) for i in range(50)]
    rows += [_row(f"k{i:03d}.png", 100.0 + i, "error") for i in range(0, 50, 7)]  # later error rows win
    _write_parts(storage, rows, per_part=3)
    before = _latest(storage)
    monkeypatch.setattr(jc, "RUN_ROWS", 10)  # several spilled runs, several shards: the external-sort path
    first = jc.compact(storage, shard_rows=16)
    assert (first.rows, first.shards, first.old_shards) == (50, 4, 0) and first.parts > 10
    parts, shards = jc.manifest_files(storage)
    assert parts == [] and len(shards) == 4
    table = jm.read_manifest(storage)
    assert table.num_rows == 50 and table["key"].to_pylist() == sorted(table["key"].to_pylist())
    assert _latest(storage) == before
    again = jc.compact(storage, shard_rows=16)
    assert again.rows == 0 and again.shards_kept == 4 and jc.manifest_files(storage) == (parts, shards)
    assert jm.read_manifest(storage).to_pylist() == table.to_pylist()


def test_a_compaction_killed_before_its_deletes_leaves_duplicates_only_and_the_rerun_cleans_up(tmp_path,
                                                                                                monkeypatch):
    storage = jio.open_storage(str(tmp_path))[0]
    _write_parts(storage, [_row(f"k{i}.png", float(i)) for i in range(20)], per_part=4)
    jc.compact(storage)
    _write_parts(storage, [_row("k3.png", 50.0, "error"), _row("new.png", 51.0)], per_part=1)
    before = _latest(storage)
    monkeypatch.setattr(jc, "_delete_all", lambda storage, keys: None)  # killed after writing, before deleting
    jc.compact(storage)
    parts, shards = jc.manifest_files(storage)
    assert len(parts) == 2 and len(jc._generations(shards)) == 2
    assert _latest(storage) == before  # duplicates only: every reader still sees the same latest rows
    monkeypatch.undo()
    stats = jc.compact(storage)
    assert (stats.rows, stats.shards, stats.parts, stats.old_shards) == (21, 1, 2, 2)
    assert _latest(storage) == before and jc.manifest_files(storage)[0] == []


def test_done_keys_stream_sorted_latest_ok_with_the_config_hash(tmp_path):
    storage = jio.open_storage(str(tmp_path))[0]
    _write_parts(storage, [_row("b.png", 1), _row("a.png", 1), _row("c.png", 1, h="other"),
                           _row("d.png", 1), _row("d.png", 2, "error"), _row("e.png", 1, "error"),
                           _row("e.png", 2)], per_part=2)
    expected = ["a.png", "b.png", "e.png"]
    assert list(jc.iter_done_keys(storage, "h")) == expected  # from parts
    jc.compact(storage)
    assert list(jc.iter_done_keys(storage, "h")) == expected  # from the compacted shard
    assert sorted(jm.done_keys(storage, "h")) == expected  # the old reader agrees
