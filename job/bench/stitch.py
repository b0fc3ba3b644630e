"""Benchmark of the raster stitch (``job.raster.stitch.stitch_scene``) with and without the post-processing morphology.

For each ``--sizes`` scene (``HxW``), window probability maps (``--window`` px, ``--overlap``) are written to a local
scratch output, then ``stitch_scene`` runs in a fresh process per post setting:

- ``off``:  threshold only (what the raster path did before it post-processed);
- ``post``: ``PostprocessConfig``'s defaults (closing, hole filling, opening by reconstruction, island removal),
            block by block (``finedetail.blockmorph``).

The maps are a procedural soft field (blobs with holes of every size, thin stripes, salt-and-pepper specks), so
thousands of components and holes cross the 512-px block seams. Reports the stitch's wall seconds, megapixels per
second, its CPU seconds (what load from other processes inflates least), its process's peak RSS (``VmHWM``; the target: flat in the scene size) and the union-find entries held.
Usage: ``python -m job.bench stitch --sizes 4096x4096 8192x8192 --json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

__all__ = ["main", "run", "window_map"]


def window_map(win: Any, *, seed: int = 0) -> np.ndarray:
    """(1, win.h, win.w) uint8 probability of the procedural scene in the window's pixels (scene frame)."""
    yy, xx = np.mgrid[win.y0:win.y1, win.x0:win.x1].astype(np.float32)
    p = 0.5 + 0.45 * np.sin(yy / 41.0) * np.cos(xx / 29.0) + 0.3 * np.sin((xx + 2 * yy) / 7.3)
    rng = np.random.default_rng([seed, win.y0, win.x0])
    p += (rng.random(p.shape, np.float32) < 0.002) * rng.choice(np.float32([-1, 1]), p.shape)
    return np.clip(np.rint(p * 255), 0, 255).astype(np.uint8)[None]


def _stitch(root: str, hw: tuple[int, int], window: int, overlap: int, post: str, queue: Any) -> None:
    import time

    from finedetail.rasters import Stretch, plan_windows
    from job.config import job_config_from_dict
    from job.raster.stitch import stitch_scene
    from job.raster.windows import SceneInfo

    knobs = {} if post == "post" else {"close_size": 0, "hole_area": 0, "opening": "none", "island_area": 0}
    cfg = job_config_from_dict({"input": root, "output": root, "prompts": root, "window": window,
                                "window_overlap": overlap, "window_pixels": window * window, "post": knobs})
    info = SceneInfo(key="scene.png", hw=hw, count=3, dtype="uint8", bands=(1, 2, 3), stretch=Stretch(),
                     crs_wkt=None, transform=(0.0, 1.0, 0.0, 0.0, 0.0, 1.0), masked=False, source="scene.png")
    wins = plan_windows(hw, window=window, overlap=overlap, window_pixels=window * window)
    t0, c0 = time.perf_counter(), time.process_time()
    res = stitch_scene(cfg, info, wins)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    with open("/proc/self/status") as f:
        hwm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    queue.put({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": hwm / 2**20, "pieces": res["pieces"],
               "mask_area": res["mask_area"], "window_loads": res["window_loads"]})


def run(sizes: Sequence[tuple[int, int]], *, window: int = 2048, overlap: int = 256) -> list[dict[str, Any]]:
    from finedetail.rasters import plan_windows
    from job.raster.windows import encode_window_prob, window_prob_key
    from job.io import open_storage, write_bytes_atomic

    rows = []
    ctx = mp.get_context("spawn")  # a fresh process per stitch: its peak RSS is the stitch's alone
    for hw in sizes:
        root = tempfile.mkdtemp(prefix="finedetail-bench-stitch-")
        try:
            out = open_storage(root)[0]
            wins = plan_windows(hw, window=window, overlap=overlap, window_pixels=window * window)
            for win in wins:
                write_bytes_atomic(out, window_prob_key("scene.png", win), encode_window_prob(window_map(win)))
            for post in ("off", "post"):
                queue = ctx.Queue()
                proc = ctx.Process(target=_stitch, args=(root, hw, window, overlap, post, queue))
                proc.start()
                res = queue.get()
                proc.join()
                rows.append({"size": f"{hw[0]}x{hw[1]}", "post": post, "windows": len(wins),
                             "mpx_per_s": hw[0] * hw[1] / 1e6 / res["seconds"], **res})
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench stitch", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["4096x4096", "8192x8192"], help="scenes, HxW")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--overlap", type=int, default=256)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    rows = run(sizes, window=args.window, overlap=args.overlap)
    if args.json:
        print(json.dumps({"rows": rows, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}))
        return 0
    print(f"{'size':>11} {'post':>5} {'windows':>7} {'seconds':>8} {'cpu s':>7} {'Mpx/s':>6} {'peak MB':>8} "
          f"{'pieces':>7}")
    for r in rows:
        print(f"{r['size']:>11} {r['post']:>5} {r['windows']:>7} {r['seconds']:8.1f} {r['cpu_seconds']:7.1f} "
              f"{r['mpx_per_s']:6.2f} {r['peak_rss_mb']:8.0f} {r['pieces']:>7}")
    return 0
