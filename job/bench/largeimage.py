"""Large ordinary photos: peak memory and wall time of the job on ONE JPEG of growing size.

Usage: ``python -m job.bench largeimage --sizes 4000x3000,8000x6000,12000x9000 [--methods single,default]
[--backend classical] [--cpus 2] [--window-pixels N] [--json]``.

Sizes are width x height, as photo sizes are written. Per size a photo-like JPEG is generated (a
``finedetail.synthetic`` fur scene drawn at a quarter of the size and enlarged, so it has objects of photo-like
extent and texture-free background; quality 90) with one prompt pair; per method the job runs on it as a user runs it
(``job.run.run_job``) in a fresh process with its own local Ray of ``--cpus`` CPUs, and this process samples every
``--interval`` s, with psutil, the memory of that process (the driver) and of every process below it: peak RSS
per role (driver, ``model_actor`` = the chained / model actors, ``stitch`` = the scene's stitch task, ``task`` =
every other Ray task worker: decode, scene info, window reads and writes) and the peak of their sum. RSS counts the
object-store pages a worker has touched (shared, one copy per node), so the private part (``RssAnon`` from /proc, on
Linux) is reported beside it: a process's own cost.

Methods: ``single`` = ``--scales 1 --no-crop`` (TTA identity + hflip kept), ``default`` = the default method
(scales 1 and 2, TTA identity + hflip, crop refinement). ``--window-pixels`` overrides ``window_pixels`` (default
16 M: a photo above it runs window by window); ``--window-pixels 0`` sends every photo down the image path (one
row, the whole photo in one worker) to show what windowing saves. ``--set KEY=VALUE`` sets any other job key
(``--set window=1024``). ``--timeout`` stops a run (its process group)
after that many seconds and reports it as timed out, with the peaks it reached.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_wh", "run_one", "write_photo"]

MB = 1024 * 1024
METHODS = {"single": {"scales": [1.0], "crop": {"enabled": False}}, "default": {}}
NO_WINDOWS = 10**15  # --window-pixels 0


def parse_wh(text: str) -> tuple[int, int]:
    """"4000x3000" (width x height) -> (h, w) = (3000, 4000)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT like 4000x3000, got {text!r}") from None
    if min(w, h) < 64:
        raise argparse.ArgumentTypeError(f"size must have sides >= 64, got {text!r}")
    return h, w


def write_photo(root: Path, hw: tuple[int, int], *, seed: int = 0) -> Path:
    """``root/in/photo.jpg`` of size hw (see the module docstring) and ``root/prompts``; returns the JPEG's path."""
    import cv2
    import numpy as np
    from PIL import Image

    from finedetail import synthetic
    from finedetail.codecs import encode_png

    h, w = hw
    small = synthetic.make_scene("fur", seed=seed, size=(max(64, min(8192, h // 4)), max(64, min(8192, w // 4))))
    image = cv2.resize(small.image, (w, h), interpolation=cv2.INTER_LINEAR)
    path = root / "in" / "photo.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=90)
    del image
    prompts = root / "prompts"
    for sub in ("images", "masks"):
        (prompts / sub).mkdir(parents=True, exist_ok=True)
    p_image, p_mask = synthetic.make_prompt_pair("fur", seed=10_000 + seed, size=(512, 512))
    (prompts / "images" / "p0.png").write_bytes(encode_png(p_image))
    (prompts / "masks" / "p0.png").write_bytes(encode_png(p_mask.astype(np.uint8) * 255))
    return path


def _role(cmd: str, is_driver: bool) -> str:
    if is_driver:
        return "driver"
    if "stitch_scene" in cmd:
        return "stitch"
    if cmd.startswith("ray::MapWorker") or "Stage" in cmd.split(" ")[0]:
        return "model_actor"
    if cmd.startswith("ray::"):
        return "task"
    return "ray_daemons"


def _rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _TreeSampler(threading.Thread):
    """Peak RSS and private (RssAnon) memory per role of a process and everything below it, every ``interval``
    seconds (psutil)."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.root, self.interval = psutil.Process(pid), interval
        self.peak: dict[str, dict[str, int]] = {}
        self.peak_total = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        import psutil

        total = 0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in procs:
            try:
                rss = p.memory_info().rss
                cmd = " ".join(p.cmdline()) or p.name()
            except psutil.Error:
                continue
            role = _role(cmd, p.pid == self.root.pid)
            peak = self.peak.setdefault(role, {"rss": 0, "private": 0})
            peak["rss"] = max(peak["rss"], rss)
            peak["private"] = max(peak["private"], _rss_anon(p.pid))
            if role != "ray_daemons":
                total += rss
        self.peak_total = max(self.peak_total, total)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


def _child(spec: dict[str, Any]) -> None:
    """The measured process: its own local Ray, then the job as ``python -m job run`` would run it."""
    import ray

    from job.config import job_config_from_dict
    from job.run import run_job

    ray.init(address="local", num_cpus=spec["cpus"], num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    summary = run_job(job_config_from_dict(spec["config"]), out=io.StringIO())
    print("RESULT " + json.dumps({"ok": summary["ok"], "errors": summary["errors"],
                                  "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    ray.shutdown()


def run_one(root: Path, method: str, *, backend: str, cpus: int, window_pixels: int | None, interval: float,
            timeout: float, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One job run on ``root/in`` in a fresh process; the report row (see the module docstring). ``settings``:
    further config keys (``--set``), nested like the YAML."""
    import pyarrow.parquet as pq

    from job.config import _merge

    out = root / f"out-{method}-{window_pixels}"
    shutil.rmtree(out, ignore_errors=True)
    config = _merge({"input": str(root / "in"), "prompts": str(root / "prompts"), "output": str(out),
                     "backend": backend, **METHODS[method]}, settings or {})
    if window_pixels is not None:
        config["window_pixels"] = NO_WINDOWS if window_pixels == 0 else window_pixels
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    code = "import json, sys; from job.bench.largeimage import _child; _child(json.loads(sys.argv[1]))"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps({"cpus": cpus, "config": config})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    sampler = _TreeSampler(proc.pid, interval)
    sampler.start()
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the run's own session: its Ray daemons and workers too
        stdout, stderr = proc.communicate()
    finally:
        sampler.stopped.set()
        sampler.join()
    wall = time.perf_counter() - t0
    result = next((json.loads(ln[7:]) for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    rows = []
    for part in sorted((out / "manifest").glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    scene = next((r for r in rows if r["key"] == "photo.jpg"), None)
    report = {
        "method": method, "window_pixels": config.get("window_pixels", "default"), "timed_out": timed_out,
        "ok": None if result is None else result["ok"], "job_s": None if result is None else result["seconds"],
        "wall_s": round(wall, 1), "windows": sum("#" in r["key"] for r in rows),
        "encoder_passes": None if scene is None else scene["encoder_passes"],
        "seconds_by_stage": None if scene is None else {
            k[8:]: round(v, 1) for k, v in scene.items() if k.startswith("seconds_") and v},
        "peak_rss_mb": {r: round(p["rss"] / MB) for r, p in sorted(sampler.peak.items())},
        "peak_private_mb": {r: round(p["private"] / MB) for r, p in sorted(sampler.peak.items())},
        "peak_rss_total_mb": round(sampler.peak_total / MB),
    }
    if result is None and not timed_out:
        report["error"] = (stderr or stdout)[-2000:]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench largeimage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4000x3000,8000x6000,12000x9000",
                   help="comma-separated WIDTHxHEIGHT photo sizes")
    p.add_argument("--methods", default="single,default", help=f"comma-separated, of {sorted(METHODS)}")
    p.add_argument("--backend", default="classical", choices=("classical", "proxy"))
    p.add_argument("--cpus", type=int, default=2, help="CPUs of each run's local Ray")
    p.add_argument("--window-pixels", type=int, default=None,
                   help="window_pixels for the runs (default: the job's, 16 M); 0 = never window")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any job config key, dotted for sections, value in YAML (as python -m job run --set)")
    p.add_argument("--interval", type=float, default=0.2, help="memory sampling period, seconds")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is stopped")
    p.add_argument("--workdir", help="keep photos and outputs here (default: a temp folder, removed)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    args = p.parse_args(argv)
    sizes = [parse_wh(s) for s in args.sizes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods) - set(METHODS))
    if bad or not sizes or args.cpus < 1:
        p.error(f"need sizes, --cpus >= 1 and methods of {sorted(METHODS)}, got {args.sizes=}, {methods=}")
    try:
        import psutil  # noqa: F401
    except ImportError:
        p.error("this benchmark samples memory with psutil: pip install psutil")
    import yaml

    from job.__main__ import _put

    settings: dict[str, Any] = {}
    for item in args.set:
        key, eq, raw = item.partition("=")
        if not eq:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        _put(settings, key.strip(), yaml.safe_load(raw))
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fd-largeimage-"))
    results = []
    try:
        for h, w in sizes:
            root = base / f"{w}x{h}"
            t0 = time.perf_counter()
            photo = write_photo(root, (h, w))
            made = {"size": f"{w}x{h}", "megapixels": round(h * w / 1e6, 1),
                    "jpeg_mb": round(photo.stat().st_size / MB, 1), "uint8_rgb_mb": round(3 * h * w / MB),
                    "generate_s": round(time.perf_counter() - t0, 1)}
            for method in methods:
                row = {**made, **run_one(root, method, backend=args.backend, cpus=args.cpus,
                                         window_pixels=args.window_pixels, interval=args.interval,
                                         timeout=args.timeout, settings=settings)}
                results.append(row)
                print(_line(row), file=sys.stderr if args.json else sys.stdout, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps({"backend": args.backend, "cpus": args.cpus, "runs": results}))
    return 0 if all(r["ok"] == 1 for r in results) else 1


def _line(r: dict[str, Any]) -> str:
    rss, priv = r["peak_rss_mb"], r["peak_private_mb"]
    roles = ", ".join(f"{k} {rss[k]}/{priv[k]}" for k in ("driver", "model_actor", "task", "stitch") if k in rss)
    state = "TIMED OUT" if r["timed_out"] else f"ok={r['ok']}"
    if "error" in r:
        return f"{r['size']:>11} {r['method']:<7} FAILED: {r['error'].strip().splitlines()[-1]}"
    return (f"{r['size']:>11} {r['method']:<7} {state:<9} wall {r['wall_s']:>7} s  windows {r['windows']:>3}  "
            f"peak RSS/private MB: {roles}  (sum {r['peak_rss_total_mb']})")


if __name__ == "__main__":
    sys.exit(main())
