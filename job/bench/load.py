"""Load benchmark: many small images through the whole job; memory stays flat and nothing spills.

Writes ``--images`` generated ``--size`` x ``--size`` PNG scenes, runs the job over them with the cheapest real
pipeline (proxy backend, scales [1], tta [identity], no crop refinement; default resources), and while it runs
samples every ``--interval`` s the resident memory (RSS) of the driver (this process) and of every Ray worker
process of the local cluster (``ray::*`` processes below this process; a remote cluster's workers are not visible
from here). Reports peak RSS of the driver, of the largest worker and of all workers together, how much each grew
from the middle third of the run to the last third (a leak grows; a flat profile does not), throughput, and the
object store's spilled bytes during the run (Ray's raylet counters, read before and after).

Usage: ``python -m job.bench load --images 2000 --json`` (or call ``main(argv)``; tests call ``run_load``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "run_load", "spill_stats", "write_images"]

MB = 1024 * 1024


def write_images(folder: Path, n: int, *, size: int = 64, seed: int = 0) -> list[str]:
    """n distinct size x size RGB PNG scenes (a few drawn scenes, each image a different circular shift of one),
    plus one prompt pair under ``folder/prompts``; returns the input keys."""
    from finedetail import synthetic
    from finedetail.codecs import encode_png

    src = folder / "in"
    src.mkdir(parents=True, exist_ok=True)
    base = [synthetic.make_scene(k, seed=seed + i, size=(size, size)) for i, k in enumerate(synthetic.KINDS * 4)]
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(n):
        image = np.roll(base[i % len(base)].image, tuple(rng.integers(0, size, 2)), axis=(0, 1))
        key = f"{i // 500:02d}/img_{i:05d}.png"
        (src / key).parent.mkdir(exist_ok=True)
        (src / key).write_bytes(encode_png(np.ascontiguousarray(image)))
        keys.append(key)
    prompts = folder / "prompts"
    for sub in ("images", "masks"):
        (prompts / sub).mkdir(parents=True, exist_ok=True)
    p_image, p_mask = synthetic.make_prompt_pair("fur", seed=10_000 + seed, size=(size, size))
    (prompts / "images/p0.png").write_bytes(encode_png(p_image))
    (prompts / "masks/p0.png").write_bytes(encode_png(p_mask.astype(np.uint8) * 255))
    return keys


def spill_stats() -> dict[str, int] | None:
    """Cluster-wide object store counters (``used_bytes`` now, the others cumulative for the Ray session), or None
    where Ray does not say.

    Uses Ray's internal memory-info call (what ``ray memory --stats-only`` prints as "Spilled N MiB")."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        # this session's GCS: without it Ray reads "the current cluster" from /tmp/ray, maybe another one's
        s = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
        return {"used_bytes": int(s.object_store_bytes_used),
                "spilled_bytes": int(s.spilled_bytes_total), "spilled_objects": int(s.spilled_objects_total),
                "restored_bytes": int(s.restored_bytes_total), "fallback_bytes": int(s.object_store_bytes_fallback)}
    except Exception:  # noqa: BLE001 - private API: absent or changed in another Ray version
        return None


class _Sampler(threading.Thread):
    """RSS of this process and of the ``ray::`` worker processes below it, every ``interval`` seconds."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.interval, self.me = interval, psutil.Process()
        self.samples: list[tuple[float, float, float, float, int]] = []  # t, driver, worker max, workers sum, n
        self.stopped = threading.Event()

    def sample(self) -> None:
        import psutil

        workers = []
        for p in self.me.children(recursive=True):
            try:
                if p.name().startswith("ray::") or (p.cmdline()[:1] or [""])[0].startswith("ray::"):
                    workers.append(p.memory_info().rss)
            except psutil.Error:
                pass
        self.samples.append((time.perf_counter(), self.me.memory_info().rss / MB, max(workers, default=0) / MB,
                             sum(workers) / MB, len(workers)))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


def _growth(values: list[float]) -> float:
    """Peak of the last third minus peak of the middle third (MB): what a leak would show."""
    n = len(values)
    if n < 6:
        return 0.0
    return max(values[2 * n // 3:]) - max(values[n // 3: 2 * n // 3])


def _ensure_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def run_load(n: int, *, size: int = 64, workdir: str | os.PathLike | None = None, interval: float = 0.25,
             resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate n images, run the job over them (starting a local Ray unless one runs), return the report."""
    from job.config import job_config_from_dict
    from job.run import run_job

    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="fd-load-")) if own else Path(workdir)
    try:
        t0 = time.perf_counter()
        keys = write_images(root, n, size=size)
        gen_s = time.perf_counter() - t0
        cfg = job_config_from_dict({"input": str(root / "in"), "prompts": str(root / "prompts"),
                                    "output": str(root / "out"), "backend": "proxy", "scales": [1.0],
                                    "tta": ["identity"], "crop": {"enabled": False}, "overlays": True,
                                    **({"resources": resources} if resources else {})})
        _ensure_ray()
        spill_before = spill_stats()
        sampler = _Sampler(interval)
        sampler.sample()
        sampler.start()
        t0 = time.perf_counter()
        try:
            summary = run_job(cfg, out=io.StringIO())
        finally:
            sampler.stopped.set()
            sampler.join()
        seconds = time.perf_counter() - t0
        spill_after = spill_stats()
        s = sampler.samples
        driver, wmax, wsum = [x[1] for x in s], [x[2] for x in s], [x[3] for x in s]
        spilled = None
        if spill_before is not None and spill_after is not None:
            spilled = {k: spill_after[k] - spill_before[k] for k in spill_after}
        return {
            "images": n, "size": size, "ok": summary["ok"], "errors": summary["errors"], "keys": len(keys),
            "generate_s": round(gen_s, 2), "run_s": round(seconds, 2), "images_per_s": round(n / seconds, 2),
            "peak_rss_driver_mb": round(max(driver), 1), "peak_rss_worker_max_mb": round(max(wmax), 1),
            "peak_rss_workers_total_mb": round(max(wsum), 1), "max_workers": max(x[4] for x in s),
            "growth_driver_mb": round(_growth(driver), 1), "growth_worker_max_mb": round(_growth(wmax), 1),
            "growth_workers_total_mb": round(_growth(wsum), 1), "samples": len(s),
            "spilled": spilled, "load_avg_1m": round(os.getloadavg()[0], 2),
            "profile": [(round(t - s[0][0], 2), round(d, 1), round(m, 1), round(w, 1), k) for t, d, m, w, k in s],
        }
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=64, help="side of the square images (>= 32)")
    p.add_argument("--interval", type=float, default=0.25, help="RSS sampling period, seconds")
    p.add_argument("--workdir", help="keep inputs and outputs here (default: a temp folder, removed)")
    p.add_argument("--json", action="store_true", help="one JSON document (with the RSS profile) instead of a table")
    args = p.parse_args(argv)
    if args.images < 1 or args.size < 32:
        p.error(f"need --images >= 1 and --size >= 32, got {args.images=}, {args.size=}")
    report = run_load(args.images, size=args.size, workdir=args.workdir, interval=args.interval)
    if args.json:
        print(json.dumps(report))
    else:
        spilled = report["spilled"]
        rows = [("images (ok / errors)", f"{report['images']} ({report['ok']} / {report['errors']})"),
                ("run time", f"{report['run_s']} s ({report['images_per_s']} images/s)"),
                ("peak RSS driver", f"{report['peak_rss_driver_mb']} MB (growth {report['growth_driver_mb']})"),
                ("peak RSS largest worker",
                 f"{report['peak_rss_worker_max_mb']} MB (growth {report['growth_worker_max_mb']})"),
                ("peak RSS all workers", f"{report['peak_rss_workers_total_mb']} MB over "
                                         f"{report['max_workers']} workers (growth "
                                         f"{report['growth_workers_total_mb']})"),
                ("object store spilled", "unknown" if spilled is None else
                 f"{spilled['spilled_bytes']} bytes, {spilled['spilled_objects']} objects"),
                ("load average (1 min)", str(report["load_avg_1m"]))]
        for name, value in rows:
            print(f"{name:<26} {value}")
    ok = report["ok"] == args.images and (report["spilled"] or {}).get("spilled_bytes", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
