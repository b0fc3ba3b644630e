"""Archive scale: manifest compaction, the bounded done set, streaming listing, resume (issue 18)."""

from __future__ import annotations

import dataclasses
import io
import os
import time

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
    assert (first.rows_read, first.rows, first.shards, first.old_shards) == (58, 50, 4, 0) and first.parts > 10
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
    stats = jc.compact(storage, full=True)
    assert (stats.rows_read, stats.rows, stats.shards, stats.parts, stats.old_shards) == (20 + 2 + 2, 21, 1, 2, 2)
    assert _latest(storage) == before and jc.manifest_files(storage)[0] == []


def test_compaction_is_tiered_new_parts_make_a_generation_until_too_many(tmp_path, monkeypatch):
    """A short run on a compacted archive does not rewrite it: its parts make a new generation; the generation
    that would exceed MAX_GENERATIONS merges everything into one."""
    monkeypatch.setattr(jc, "MAX_GENERATIONS", 3)
    storage = jio.open_storage(str(tmp_path))[0]
    _write_parts(storage, [_row(f"k{i}.png", float(i)) for i in range(10)], per_part=5)
    assert jc.compact(storage).rows == 10
    _write_parts(storage, [_row("k1.png", 20.0, "error")], per_part=1)
    small = jc.compact(storage)
    assert (small.rows_read, small.rows, small.old_shards, small.shards_kept) == (1, 1, 0, 1)
    assert jc.compact(storage).rows == 0  # no parts: nothing to do, two generations stay
    _write_parts(storage, [_row("k2.png", 21.0)], per_part=1)
    jc.compact(storage)
    _write_parts(storage, [_row("new.png", 22.0)], per_part=1)
    merged = jc.compact(storage)  # a fourth generation would be one too many
    assert (merged.rows, merged.old_shards) == (11, 3) and len(jc._generations(jc.manifest_files(storage)[1])) == 1
    assert list(jc.iter_done_keys(storage, "h")) == ["k0.png", *[f"k{i}.png" for i in range(2, 10)], "new.png"]


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


# ------------------------------------------------------------------------------------------- streaming listing

from job import listing as jl  # noqa: E402
from job import s3walk as s3w  # noqa: E402


def _touch(root, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_local_walk_streams_the_same_sorted_keys_as_list_files(tmp_path):
    """Folders sort as ``name/``: ``a-b.png`` < ``a.png`` < ``a/x.png`` < ``a0.png``, exactly S3's (and sorted()'s)
    order, which the merge with the sorted done set relies on. Hidden entries, other extensions, the excluded
    folder and symlinked folders are left out as `jio.list_files` leaves them out."""
    for rel in ("a-b.png", "a.png", "a/x.png", "a/b/y.JPG", "a0.png", "z/.hidden.png", ".h/q.png", "out/m.png",
                "b/readme.txt", "b/c/d/e.webp", "é.png", "Z.png"):
        _touch(tmp_path, rel)
    os.symlink(tmp_path / "a", tmp_path / "link")
    storage = jio.open_storage(str(tmp_path))[0]
    got = list(jl.iter_keys(storage, extensions=jio.IMAGE_EXTS, exclude=("out",)))
    assert got == sorted(got) == jio.list_files(storage, "", exclude=("out",))
    assert got == ["Z.png", "a-b.png", "a.png", "a/b/y.JPG", "a/x.png", "a0.png", "b/c/d/e.webp", "é.png"]


def test_a_missing_folder_lists_empty_and_a_file_root_is_a_storage_error(tmp_path):
    assert list(jl.iter_keys(jio.open_storage(str(tmp_path / "nope"))[0], extensions=(".png",))) == []
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(jio.StorageError, match="cannot list"):
        list(jl.iter_keys(jio.open_storage(str(tmp_path / "f.png"))[0], extensions=(".png",)))


@pytest.mark.parametrize("keys, clashes", [
    (["a.jpg", "a.png"], [("a.png", "a.jpg")]),
    (["a.b.png", "a.jpg", "a.png", "ab.png"], [("a.png", "a.jpg")]),  # a.b.png sorts between: not a clash
    (["a.jpg", "a.x.png", "a.x.tif", "a/a.png", "b.png"], [("a.x.tif", "a.x.png")]),
    (["x/a.png", "x/b.png", "y/a.png"], []),
])
def test_stem_check_finds_inputs_that_would_write_the_same_mask(keys, clashes):
    check = jl.StemCheck()
    found = [(k, check.clash(k)) for k in keys]
    assert [(k, e) for k, e in found if e is not None] == clashes


def test_limit_stops_the_listing_and_done_keys_are_skipped():
    pulled = []

    def keys():
        for i in range(1_000_000):
            pulled.append(i)
            yield f"k{i:07d}.png"

    counts = jl.ListingCounts()
    done = [f"k{i:07d}.png" for i in (0, 2, 3)]
    todo = list(jl.iter_todo(keys(), done, counts, limit=4))
    assert todo == ["k0000001.png", "k0000004.png", "k0000005.png", "k0000006.png"]
    assert len(pulled) == 8 and (counts.listed, counts.done, counts.todo, counts.cut) == (7, 3, 4, True)


def test_s3_listing_goes_page_by_page_in_key_order(s3_env, monkeypatch):
    """1100 images and a text file in one folder, pages of 100: twelve ListObjectsV2 pages, the same keys and order as
    `jio.list_files`; the first key comes after a few pages (the folder's thread runs at most 2 pages ahead of the
    reader), not after the whole folder."""
    from concurrent.futures import ThreadPoolExecutor

    client = s3_env.client()
    bucket = s3_env.make_bucket("archive-listing")
    names = [f"in/{i:05d}.png" for i in range(1100)] + ["in/notes.txt", "other/x.png"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), names))
    storage = jio.open_storage(f"s3://{bucket}/in")[0]
    calls = []
    real = s3w._s3_client

    def counting(storage):
        c = real(storage)
        c.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
        return c

    monkeypatch.setattr(s3w, "S3_PAGE_KEYS", 100)
    s3w._s3_client = counting
    try:
        it = jl.iter_keys(storage, extensions=(".png",))
        assert next(it) == "00000.png"
        time.sleep(0.5)
        assert len(calls) <= 4
        got = ["00000.png", *it]
    finally:
        s3w._s3_client = real
    assert len(calls) == 12 and got == jio.list_files(storage, "", extensions=(".png",)) and len(got) == 1100


# ----------------------------------------------------------------------------------------------- the job, resumed

MINIMAL = {"backend": "proxy", "scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}}


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict({**MINIMAL, **values})


def _mask_stamps(out) -> dict[str, int]:
    return {p.relative_to(out / "masks").as_posix(): p.stat().st_mtime_ns for p in (out / "masks").rglob("*.png")}


def test_resume_after_a_half_done_run_writes_each_missing_mask_once(ray_local, tmp_path):
    """A ``--limit`` run does half, the rerun does the rest: each missing mask is written once (the done ones are
    not touched), and the manifest ends compacted, one ok row per key."""
    from jobkit import read_manifest_rows, write_inputs, write_prompts

    from job.run import run_job

    keys = write_inputs(tmp_path / "in", n_good=6, corrupt=False)
    write_prompts(tmp_path / "prompts")
    out = tmp_path / "out"
    cfg = _cfg(input=str(tmp_path / "in"), output=str(out), prompts=str(tmp_path / "prompts"))
    log = io.StringIO()
    first = run_job(dataclasses.replace(cfg, limit=3), out=log)
    assert (first["ok"], first["skipped"]) == (3, 0) and "(listing stopped at --limit 3)" in log.getvalue()
    half = _mask_stamps(out)
    assert sorted(half) == [jio.mask_key(k) for k in keys[:3]]  # the listing's order: the first three keys
    parts, shards = jc.manifest_files(jio.open_storage(str(out))[0])
    assert parts == [] and len(shards) == 1
    log = io.StringIO()
    second = run_job(cfg, out=log)
    assert (second["ok"], second["images"], second["skipped"]) == (3, 3, 3), log.getvalue()
    assert "6 inputs, 3 already done" in log.getvalue()
    stamps = _mask_stamps(out)
    assert {k: stamps[k] for k in half} == half and len(stamps) == 6
    rows = read_manifest_rows(out)
    assert sorted(r["key"] for r in rows) == keys and {r["status"] for r in rows} == {"ok"}


def test_the_key_feed_hands_each_block_on_at_once():
    """Ray Data holds a task's output until it reaches the dataset's target block size: every block of keys the
    feed's read task yields is padded to it, so it is not held until the listing ends."""

    class Pages:
        def __init__(self, pages):
            self.pages = list(pages)

        def get(self, block=True):
            return self.pages.pop(0)

    keys = [f"k{i}.png" for i in range(11)]
    blocks = list(jl._queue_read(Pages([keys[:5], keys[5:], None]), 3))
    assert [b.column("key").to_pylist() for b in blocks] == [keys[0:3], keys[3:5], keys[5:8], keys[8:11]]
    assert all(b.nbytes >= jl.BLOCK_BYTES for b in blocks)


def test_an_archive_of_more_keys_than_may_be_in_flight_runs_to_the_end(ray_local, tmp_path, monkeypatch):
    """More inputs than `KeyFeed.max_in_flight` (made small here: pages of 2 keys, one input per block): the run
    finishes with every input done. Before the blocks of keys were padded, Ray Data held them in the read task
    until the listing ended, the feed waited for rows that never came, and the run hung with no mask written."""
    import threading

    from jobkit import write_inputs, write_prompts

    from job.run import run_job

    keys = write_inputs(tmp_path / "in", n_good=24, size=(32, 40), corrupt=False)
    write_prompts(tmp_path / "prompts")
    monkeypatch.setattr(jl, "PAGE_KEYS", 2)
    cfg = _cfg(input=str(tmp_path / "in"), output=str(tmp_path / "out"), prompts=str(tmp_path / "prompts"),
               resources={"read_batch": 1, "batch_size": 1})
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run_job(cfg, out=io.StringIO())), daemon=True)
    runner.start()
    runner.join(timeout=240)
    assert not runner.is_alive(), f"the run hung; masks written: {len(list((tmp_path / 'out').rglob('*.png')))}"
    assert result["ok"] == len(keys) == 24


def test_compact_command_holds_the_lease_and_merges_all_with_full(tmp_path, capsys):
    from job import lease as jlease

    storage = jio.open_storage(str(tmp_path))[0]
    _write_parts(storage, [_row("a.png", 1.0)], per_part=1)
    jc.compact(storage)
    _write_parts(storage, [_row("a.png", 2.0, "error")], per_part=1)
    assert jc.main([str(tmp_path), "--full"]) == 0
    assert "compacted 2 rows (1 parts, 1 shards) -> 1 keys in 1 shard(s)" in capsys.readouterr().out
    held = jlease.acquire(storage, "someone-else")
    try:
        with pytest.raises(SystemExit) as stop:
            jc.main([str(tmp_path)])
        assert stop.value.code == 2 and "someone-else" in capsys.readouterr().err
    finally:
        held.release()


def test_s3_folders_listed_ahead_in_parallel_keep_the_order_and_stop_early(s3_env):
    """The first level's folders are listed by threads ahead of the reader: same keys, same order as a listing one
    page at a time; a reader that stops early (``--limit``) ends the threads."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client = s3_env.client()
    bucket = s3_env.make_bucket("archive-fanout")
    names = ([f"in/f{i % 5}/{i:04d}.png" for i in range(300)] + ["in/f1.png", "in/a.png", "in/f4/", "in/z/x.png"]
             + [f"in/f2/deep/{i}.png" for i in range(3)])
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), names))
    storage = jio.open_storage(f"s3://{bucket}/in")[0]
    expected = sorted(n[len("in/"):] for n in names if not n.endswith("/"))
    for ahead in (0, 2, 8):
        assert list(s3w.walk_s3(storage, lookahead=ahead)) == expected, ahead
    before = threading.active_count()
    it = s3w.walk_s3(storage, lookahead=3)
    assert [next(it) for _ in range(3)] == expected[:3]
    it.close()
    assert threading.active_count() <= before


def test_a_listing_reply_is_read_as_botocore_reads_it():
    """The raw ``ListObjectsV2`` XML (kept from botocore's slow parser) gives botocore's keys: URL-decoded when the
    reply says ``EncodingType=url`` (``+`` is a space), folders from ``CommonPrefixes`` only (not the request's
    ``Prefix``), the continuation token only while truncated."""
    ns = "http://s3.amazonaws.com/doc/2006-03-01/"
    reply = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{ns}"><Name>b</Name>'
             "<Prefix>in%2F</Prefix><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
             "<NextContinuationToken>tok/1=</NextContinuationToken>"
             "<Contents><Key>in%2Fa+b.png</Key><Size>3</Size></Contents>"
             "<Contents><Key>in%2Fx%2By%25.png</Key></Contents>"
             "<CommonPrefixes><Prefix>in%2F%C3%BC%2F</Prefix></CommonPrefixes></ListBucketResult>").encode()
    assert s3w._parse_listing(reply) == (["in/a b.png", "in/x+y%.png"], ["in/ü/"], "tok/1=")
    plain = reply.replace(b"<EncodingType>url</EncodingType>", b"").replace(b"<IsTruncated>true", b"<IsTruncated>false")
    assert s3w._parse_listing(plain) == (["in%2Fa+b.png", "in%2Fx%2By%25.png"], ["in%2F%C3%BC%2F"], None)


def test_s3_keys_with_spaces_and_other_characters_list_as_they_were_put(s3_env):
    client = s3_env.client()
    bucket = s3_env.make_bucket("archive-names")
    names = ["in/a b.png", "in/x+y.png", "in/50%.png", "in/ü/ç.png", "in/q?&=.png", "in/t~!.png", "in/deep/a b/c.png"]
    for k in names:
        client.put_object(Bucket=bucket, Key=k, Body=b"x")
    storage = jio.open_storage(f"s3://{bucket}/in")[0]
    assert list(s3w.walk_s3(storage)) == sorted(n[len("in/"):] for n in names)


def test_s3_folders_below_the_first_level_are_listed_in_parallel(s3_env, monkeypatch):
    """An archive whose first level holds two folders (``2019/``, ``2020/``) of many sub-folders: the sub-folders
    are listed ahead too (several ``ListObjectsV2`` calls at once, each made slow here), and the keys come out in
    S3's order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client = s3_env.client()
    bucket = s3_env.make_bucket("archive-deep")
    names = [f"in/{y}/m{m:02d}/{i}.png" for y in (2019, 2020) for m in range(8) for i in range(3)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), names))
    storage = jio.open_storage(f"s3://{bucket}/in")[0]
    lock, now, peak = threading.Lock(), [0], [0]
    real = s3w._s3_client

    def begin(**kw):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.2)

    def end(**kw):
        with lock:
            now[0] -= 1

    def slow(storage):
        c = real(storage)
        c.meta.events.register("before-call.s3.ListObjectsV2", begin)
        c.meta.events.register("after-call.s3.ListObjectsV2", end)
        return c

    monkeypatch.setattr(s3w, "_s3_client", slow)
    got = list(s3w.walk_s3(storage, lookahead=8))
    assert got == sorted(n[len("in/"):] for n in names)
    assert peak[0] >= 4, peak[0]


def test_the_key_feed_waits_while_too_many_keys_are_in_flight(ray_local):
    """Ray Data's backpressure counts bytes and blocks of keys weigh nothing: the feed itself stops listing while
    ``max_in_flight`` keys have not come back as rows, and goes on as they do."""
    import time

    source = ([f"p{p:02d}k{k}" for k in range(10)] for p in range(50))
    feed = jl.KeyFeed(source, block_rows=5, max_in_flight=25)
    feed.dataset()  # makes the queue the read task would take pages from
    q = feed._queue
    feed.start()
    try:
        taken = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(taken) < 30:
            if not q.empty():
                taken += q.get()
            time.sleep(0.05)
        time.sleep(1.0)
        assert len(taken) == 30 and q.empty() and feed.fed == 30  # 3 pages: the 4th waits for rows to return
        feed.done(20)
        while time.monotonic() < deadline and len(taken) < 50:
            if not q.empty():
                taken += q.get()
            time.sleep(0.05)
        assert taken == [f"p{p:02d}k{k}" for p in range(5) for k in range(10)]
    finally:
        feed.close()


def test_a_batch_written_again_in_the_same_run_replaces_its_part(tmp_path):
    """Ray re-runs a finished write task whose output block was lost with its node: with the run's tag the part
    is replaced, so the manifest gains no row; without a tag (another run) the part is added."""
    storage = jio.open_storage(str(tmp_path))[0]
    first = jm.write_part(storage, [_row("a.png", 1.0), _row("b.png", 1.0)], tag=123)
    again = jm.write_part(storage, [_row("b.png", 2.0), _row("a.png", 2.0)], tag=123)
    assert first == again == jm.write_part(storage, [_row("a.png", 3.0), _row("b.png", 3.0)], tag=123)
    assert len(jm.read_manifest(storage)) == 2
    jm.write_part(storage, [_row("a.png", 4.0), _row("b.png", 4.0)])
    assert len(jm.read_manifest(storage)) == 4
