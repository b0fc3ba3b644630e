"""Benchmark of the CPU fuse step against OpenCV's guided filter.

Times, best of ``--repeat``, on one synthetic ``size x size`` RGB image and ``--maps`` probability maps:

- ours:   the whole fuse step for one class = ``finedetail.ensemble.ensemble(maps, rule=--rule)`` (majority) +
          ``finedetail.postprocess.postprocess`` (guided filter with the image as colour guide + threshold +
          morphology) with ``PostprocessConfig``'s defaults except ``--radius``/``--eps``/``--subsample``;
- opencv: ``cv2.ximgproc.guidedFilter`` alone, same image, on the same soft map our guided filter gets, same
          radius and eps (scaled by 255**2 because OpenCV applies eps to the uint8 guide's own 0..255 values).

Also reports each part of ours and our exact filter alone. Throughput is image megapixels per second of wall
time. Every step runs once untimed first (warm-up), then ``--repeat`` rounds interleave all timed steps so load
from other processes hits them alike; the best round counts. ``*_cpu_ms`` is the best process CPU time (all
threads summed), which load from other processes inflates far less than wall time; ``load_avg_1m`` says how busy
the machine was. ``--threads N`` sets ``cv2.setNumThreads`` for both sides (OpenCV's filter is multi-threaded;
ours is single-threaded numpy plus OpenCV calls).
Usage: ``python -m job.bench postprocess --size 2048 --maps 8 --json`` (or call ``main(argv)``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from finedetail.guided import fast_guided_filter, guided_filter
from finedetail.postprocess import PostprocessConfig, _morphology, postprocess

__all__ = ["main", "make_inputs", "run"]


def _ensemble_fn(rule: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    try:
        from finedetail.ensemble import ensemble
    except ImportError:  # the ensemble module is not there yet: a mean is the cheapest stand-in
        return (lambda maps: maps.mean(axis=0, dtype=np.float32)), "local mean (finedetail.ensemble missing)"
    return (lambda maps: ensemble(maps, rule=rule)), rule


def make_inputs(size: int, n_maps: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> (image (size, size, 3) uint8 RGB, maps (n_maps, size, size) float32 in [0, 1]).

    The image is a smooth random colour field with hard-edged discs and 1-2 px lines on it; each map is a
    blurred copy of the true object mask plus its own smooth random field, so the maps disagree near edges
    like real variants do."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 24, image.shape, dtype=np.uint8))
    truth = np.zeros((size, size), np.uint8)
    for _ in range(12):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(truth, c, int(rng.integers(size // 40, size // 8)), 1, -1)
        for _ in range(6):
            d = rng.integers(-size // 6, size // 6, 2)
            cv2.line(truth, c, (int(c[0] + d[0]), int(c[1] + d[1])), 1, int(rng.integers(1, 3)))
    image[truth > 0] = (0.35 * image[truth > 0] + np.array([160, 40, 30]) * 0.65).astype(np.uint8)
    base = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 2.0)
    maps = np.empty((n_maps, size, size), np.float32)
    for i in range(n_maps):
        noise = cv2.resize(rng.normal(0, 0.25, (size // 32 + 1, size // 32 + 1)).astype(np.float32), (size, size))
        np.clip(base * 1.4 - 0.2 + noise, 0.0, 1.0, out=maps[i])
    return image, maps


def _best(fns: dict[str, Callable[[], object]], repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """-> (best wall time, best process CPU time) in s of each fn over ``repeat`` rounds, after one untimed warm-up
    call each; rounds interleave the fns so that load from other processes hits all of them alike."""
    for fn in fns.values():
        fn()
    wall = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu


def run(
    *,
    size: int,
    n_maps: int,
    radius: int,
    eps: float,
    repeat: int,
    subsample: int | None = None,
    rule: str = "majority",
) -> dict[str, float | int | str]:
    """Run the benchmark; returns the numbers ``main`` prints (times in ms, throughputs in MPx/s)."""
    image, maps = make_inputs(size, n_maps)
    cfg = PostprocessConfig(radius=radius, eps=eps)
    if subsample is not None:
        cfg = PostprocessConfig(**{**cfg.__dict__, "subsample": subsample})
    ens, rule = _ensemble_fn(rule)
    mpx = size * size / 1e6

    def fuse() -> None:
        postprocess(ens(maps), image, cfg)

    soft = ens(maps)
    prob, _ = postprocess(soft, image, cfg)
    mask = prob >= cfg.threshold
    t, cpu = _best(
        {
            "ours": fuse,
            "opencv": lambda: cv2.ximgproc.guidedFilter(image, soft, radius, eps * 255.0**2),
            "ensemble": lambda: ens(maps),
            "post": lambda: postprocess(soft, image, cfg),
            "guided": lambda: fast_guided_filter(image, soft, radius=radius, eps=eps, subsample=cfg.subsample),
            "morphology": lambda: _morphology(mask, cfg),
            "exact": lambda: guided_filter(image, soft, radius=radius, eps=eps),
        },
        repeat,
    )
    t_ours, t_cv, t_ens, t_post, t_gf, t_morph, t_exact = (
        t[k] for k in ("ours", "opencv", "ensemble", "post", "guided", "morphology", "exact")
    )
    exact = guided_filter(image, soft, radius=radius, eps=eps)
    ours = fast_guided_filter(image, soft, radius=radius, eps=eps, subsample=cfg.subsample)
    return {
        "ours_mpx_s": mpx / t_ours,
        "opencv_mpx_s": mpx / t_cv,
        "ours_ms": 1e3 * t_ours,
        "opencv_ms": 1e3 * t_cv,
        "ours_cpu_ms": 1e3 * cpu["ours"],
        "opencv_cpu_ms": 1e3 * cpu["opencv"],
        "ensemble_cpu_ms": 1e3 * cpu["ensemble"],
        "ensemble_ms": 1e3 * t_ens,
        "postprocess_ms": 1e3 * t_post,
        "postprocess_mpx_s": mpx / t_post,
        "guided_ms": 1e3 * t_gf,
        "morphology_ms": 1e3 * t_morph,
        "exact_guided_ms": 1e3 * t_exact,
        "exact_guided_mpx_s": mpx / t_exact,
        "guided_vs_exact_mean_abs": float(np.abs(ours - exact).mean()),
        "size": size,
        "maps": n_maps,
        "radius": radius,
        "eps": eps,
        "subsample": cfg.subsample,
        "repeat": repeat,
        "ensemble_rule": rule,
        "cv_threads": cv2.getNumThreads(),
        "load_avg_1m": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry (``job.bench`` dispatches here); prints a table, or one JSON object with ``--json``."""
    parser = argparse.ArgumentParser(prog="job.bench postprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="image side in px (default 2048)")
    parser.add_argument("--maps", type=int, default=8, help="probability maps to ensemble (default 8)")
    parser.add_argument("--radius", type=int, default=4, help="guided filter radius in px (default 4)")
    parser.add_argument("--eps", type=float, default=1e-3, help="guided filter eps, [0, 1]-guide units")
    parser.add_argument("--subsample", type=int, default=None, help="guided filter subsample (default: config's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds, best one counts (default 5)")
    parser.add_argument("--rule", default="majority", help="ensemble rule (default majority)")
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads for both sides")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.size < 16 or args.maps < 1 or args.repeat < 1:
        parser.error(f"need --size >= 16, --maps >= 1, --repeat >= 1, got {args.size=} {args.maps=} {args.repeat=}")
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    res = run(
        size=args.size,
        n_maps=args.maps,
        radius=args.radius,
        eps=args.eps,
        repeat=args.repeat,
        subsample=args.subsample,
        rule=args.rule,
    )
    if args.json:
        print(json.dumps(res))
        return
    print(
        f"fuse bench: {args.size}x{args.size}, {args.maps} maps, radius={args.radius} eps={args.eps} "
        f"subsample={res['subsample']} ensemble={res['ensemble_rule']} cv threads={res['cv_threads']} "
        f"(load average {res['load_avg_1m']:.1f})"
    )
    rows = [
        ("ours: whole fuse step", res["ours_ms"], res["ours_mpx_s"]),
        ("  (process CPU time)", res["ours_cpu_ms"], None),
        ("  ensemble", res["ensemble_ms"], None),
        ("  postprocess() = the rest", res["postprocess_ms"], res["postprocess_mpx_s"]),
        ("    guided filter", res["guided_ms"], None),
        ("    morphology", res["morphology_ms"], None),
        ("ours: exact guided filter alone", res["exact_guided_ms"], res["exact_guided_mpx_s"]),
        ("opencv: ximgproc.guidedFilter alone", res["opencv_ms"], res["opencv_mpx_s"]),
        ("  (process CPU time)", res["opencv_cpu_ms"], None),
    ]
    print(f"{'step':38s} {'ms':>9s} {'MPx/s':>8s}")
    for name, ms, rate in rows:
        print(f"{name:38s} {ms:9.1f} {'' if rate is None else f'{rate:8.2f}'}")
    print(f"guided filter vs exact: mean |diff| = {res['guided_vs_exact_mean_abs']:.2e}")
