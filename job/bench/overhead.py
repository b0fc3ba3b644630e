"""Overhead of the Ray Data job over a plain loop doing the same work, in one run.

Usage: ``python -m job.bench overhead [--images 64] [--size 384x512] [--backend proxy|classical] [--json]``.

The same generated images (PNG files, ``finedetail.synthetic.make_scene``) and prompt pair go through

- ray:  ``job.run.run_job`` (read + decode tasks, coarse / variant / crop / fuse actor pools, write tasks; the
        plan ``job.run.plan_resources`` picks for the local Ray), output folder A;
- loop: in this process, per image: ``job.io.read_bytes`` + ``finedetail.codecs.decode_image``,
        ``finedetail.execute.run_image`` with the same models (``job.models.build_coarse`` / ``build_refiner``
        from the same ``JobConfig``), ``finedetail.outputs.render_outputs`` and ``job.io.write_bytes_atomic`` of
        every file, output folder B (the job's per-batch manifest parts are not written: a few ms).

The backend is cheap (``proxy``: colour-keyed numpy/OpenCV models; or ``classical``) so the ratio measures
overhead, not model time. ``ratio = ray_s / loop_s``; the local Ray is started (and timed) before both and is not
part of ``ray_s``. ``--repeat`` alternates the two and keeps each one's best time.

CPU seconds are reported beside wall time (``ray_cpu_s``: this process and every process under it, i.e. the local
Ray's daemons and workers, polled every 0.2 s; ``loop_cpu_s``: this process), because on cores shared with other
work the wall-time ratio depends on the neighbours: the job's ~10 processes get a larger share of a contended
machine than the loop's one. ``cpu_ratio`` is the overhead in work, whatever the load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from job.bench.throughput import ensure_ray, parse_size, write_dataset

__all__ = ["CpuMeter", "main", "run", "run_loop"]


class CpuMeter:
    """CPU seconds (user + system) spent by this process, and with ``children=True`` by every process below it,
    between ``start()`` and ``stop()``. Children are polled every ``interval`` s (a process that lives less than
    that between two polls is missed); None when psutil is not installed."""

    def __init__(self, *, children: bool, interval: float = 0.2):
        self.children, self.interval = children, interval
        self._seen: dict[tuple[int, float], float] = {}
        self._base: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil
        except ImportError:
            self._psutil = None
        else:
            self._psutil = psutil

    def _poll(self) -> None:
        me = self._psutil.Process(os.getpid())
        procs = [me] + (me.children(recursive=True) if self.children else [])
        for p in procs:
            try:
                t = p.cpu_times()
                self._seen[(p.pid, p.create_time())] = t.user + t.system
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def start(self) -> "CpuMeter":
        if self._psutil is not None:
            self._poll()
            self._base = dict(self._seen)
            if self.children:
                self._thread = threading.Thread(target=self._loop, daemon=True)
                self._thread.start()
        return self

    def stop(self) -> float | None:
        if self._psutil is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        return sum(v - self._base.get(k, 0.0) for k, v in self._seen.items())


def run_loop(cfg: Any, keys: Sequence[str]) -> int:
    """The job's work for ``keys`` as a plain in-process loop (see module docstring); returns images written."""
    from finedetail.codecs import decode_image
    from finedetail.outputs import render_outputs
    from finedetail.execute import run_image
    from job import io as jio
    from job.models import build_coarse, build_refiner, load_prompts, resolve_classes

    cfg = resolve_classes(cfg)  # as run_job does
    coarse = build_coarse(cfg, load_prompts(cfg.prompts, classes=cfg.classes))
    refiner = build_refiner(cfg)
    src = jio.open_storage(cfg.input)[0]
    dst = jio.open_storage(cfg.output)[0]
    done = 0
    for key in keys:
        image = decode_image(jio.read_bytes(src, key), max_pixels=cfg.max_pixels)
        res = run_image(image, coarse, refiner, cfg.pipeline)
        files = render_outputs(image, res.prob, res.mask, classes=cfg.classes, overlays=cfg.overlays,
                               coco=cfg.coco, file_name=key, info={"config_hash": cfg.config_hash})
        for (folder, suffix), data in files.items():
            jio.write_bytes_atomic(dst, jio.output_key(folder, key, suffix=suffix), data)
        done += 1
    return done


def run(*, images: int = 64, size: tuple[int, int] = (384, 512), backend: str = "proxy", repeat: int = 1,
        resources: dict[str, Any] | None = None, workdir: str | None = None, num_cpus: int | None = None
        ) -> dict[str, Any]:
    """Run the benchmark; returns the numbers ``main`` prints."""
    import ray

    from job.config import job_config_from_dict
    from job.run import list_inputs, plan_resources, run_job

    with tempfile.TemporaryDirectory(prefix="fd-overhead-", dir=workdir) as tmp:
        root = Path(tmp)
        in_dir, prompts, pixels = write_dataset(root / "data", n=images, hw=size)
        ray_start_s = ensure_ray(num_cpus=num_cpus)
        ray_times, loop_times, ray_cpu, loop_cpu, ok = [], [], [], [], 0
        plan = None
        for i in range(repeat):
            def cfg_for(out: str):
                return job_config_from_dict({"input": str(in_dir), "prompts": str(prompts), "output": out,
                                             "backend": backend, "resources": dict(resources or {})})

            cfg = cfg_for(str(root / f"out_ray_{i}"))  # a fresh output: no resume skipping
            plan = plan_resources(cfg, ray.cluster_resources())
            meter = CpuMeter(children=True).start()
            t0 = time.perf_counter()
            summary = run_job(cfg, out=io.StringIO())
            ray_times.append(time.perf_counter() - t0)
            ray_cpu.append(meter.stop())
            ok = summary["ok"]
            loop_cfg = cfg_for(str(root / f"out_loop_{i}"))
            meter = CpuMeter(children=False).start()
            t0 = time.perf_counter()
            n_loop = run_loop(loop_cfg, list_inputs(loop_cfg))
            loop_times.append(time.perf_counter() - t0)
            loop_cpu.append(meter.stop())
            if ok != images or n_loop != images:
                raise RuntimeError(f"expected {images} images from both, got ray={ok} loop={n_loop}")
    ray_s, loop_s = min(ray_times), min(loop_times)
    cpu = None not in ray_cpu + loop_cpu
    return {
        "n": images,
        "size_hw": list(size),
        "backend": backend,
        "megapixels": pixels / 1e6,
        "ray_start_s": ray_start_s,
        "ray_s": ray_s,
        "loop_s": loop_s,
        "ratio": ray_s / loop_s,
        "ray_times": ray_times,
        "loop_times": loop_times,
        "ray_images_per_s": images / ray_s,
        "loop_images_per_s": images / loop_s,
        "ray_fixed_cost_s_est": ray_s - loop_s,
        "ray_cpu_s": min(ray_cpu) if cpu else None,
        "loop_cpu_s": min(loop_cpu) if cpu else None,
        "cpu_ratio": min(ray_cpu) / min(loop_cpu) if cpu and min(loop_cpu) > 0 else None,
        "ray_cpu_times": ray_cpu,
        "loop_cpu_times": loop_cpu,
        "load_avg_1m": os.getloadavg()[0],
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__} if plan else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (``job.bench`` dispatches here); prints a table, or one JSON object with ``--json``."""
    p = argparse.ArgumentParser(prog="job.bench overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64, help="generated images (default 64)")
    p.add_argument("--size", type=parse_size, default=(384, 512), help="image size N or HxW (default 384x512)")
    p.add_argument("--backend", default="proxy", choices=("proxy", "classical"), help="cheap backend (default proxy)")
    p.add_argument("--repeat", type=int, default=1, help="alternating runs of both; best time each (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="resources.batch_size")
    p.add_argument("--read-batch", type=int, default=None, help="resources.read_batch")
    p.add_argument("--max-actors", type=int, default=None, help="resources.max_actors")
    p.add_argument("--model-cpus", type=float, default=None, help="resources.model_cpus")
    p.add_argument("--chain", choices=("auto", "on", "off"), default=None,
                   help="resources.chain (default auto: one chained pool on CPU)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here (default: all)")
    p.add_argument("--workdir", default=None, help="parent of the temporary folder (default: system temp)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.images < 1 or args.repeat < 1:
        p.error(f"--images and --repeat must be >= 1, got {args.images=} {args.repeat=}")
    res_kw = {k: v for k, v in (("batch_size", args.batch_size), ("read_batch", args.read_batch),
                                ("max_actors", args.max_actors),
                                ("model_cpus", args.model_cpus), ("chain", args.chain)) if v is not None}
    res = run(images=args.images, size=args.size, backend=args.backend, repeat=args.repeat, resources=res_kw,
              workdir=args.workdir, num_cpus=args.num_cpus)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"overhead bench: {res['n']} images {res['size_hw'][1]}x{res['size_hw'][0]}, backend {res['backend']}, "
          f"cluster {res['cluster']}; Ray start {res['ray_start_s']:.1f} s (not counted)")
    print(f"ray job:    {res['ray_s']:8.2f} s  ({res['ray_images_per_s']:.2f} images/s)  runs {res['ray_times']}")
    print(f"plain loop: {res['loop_s']:8.2f} s  ({res['loop_images_per_s']:.2f} images/s)  runs {res['loop_times']}")
    print(f"ratio ray / loop: {res['ratio']:.2f} (1-min load average {res['load_avg_1m']:.1f} on "
          f"{os.cpu_count()} cores)")
    if res["cpu_ratio"] is not None:
        print(f"CPU seconds: ray {res['ray_cpu_s']:.1f} (all Ray processes), loop {res['loop_cpu_s']:.1f} -> "
              f"ratio {res['cpu_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
