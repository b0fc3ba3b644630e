"""Backpressure and pool sizing: with one model stage made slow, how far do reads run ahead and which pools grow?

Usage: ``python -m job.bench pressure [--images 16,48] [--size 2048] [--slow coarse|refine] [--delay 1.0]
[--max-actors 4] [--cpus 8] [--gpus 4] [--store-mb 1000] [--json]``

Each run is the whole job (proxy backend, one scale, no crops) on ``--images`` generated scenes of ``--size``²
pixels (decoded: 12 MB each at 2048²), in a fresh driver process with its own local Ray of ``--cpus`` logical CPUs
and ``--gpus`` declared (fake) GPUs, so the model pools are GPU pools that may grow from 1 to ``--max-actors``
actors. The ``--slow`` stage sleeps ``--delay`` seconds per image (a ``worker_process_setup_hook`` of this module
wraps ``job.stages._guarded``, the seam every stage runs its rows through), so it is the bottleneck and reads are
fast.

Ray Data's own accounting is sampled every 0.25 s from its scheduling loop (an ``ExecutionCallback`` registered in
``DataContext.custom_execution_callback_classes``; the executor's topology and resource manager are internal
objects, so this is a benchmark, not a job feature): per operator the alive actors, the running tasks, the bytes
queued at its input and output, and the store's use as Ray Data counts it.

Reported per run: ``queued_peak_mb`` (the peak of the bytes decoded and waiting for the slow stage: the decode
operator's output queue plus the slow stage's input queue), the same in images (``ahead_peak_images``),
``decoded_mb`` (what the whole input decodes to), ``store_peak_mb``, ``actors_max`` per stage and a timeline of
actors per stage. Backpressure holds when ``queued_peak_mb`` stays flat as ``--images`` grows (it does not track
``decoded_mb``); pools follow the bottleneck when the slow stage's pool reaches ``--max-actors`` and the fast
one stays small.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "slow_stage_hook"]

MB = 2**20
SAMPLE_S = 0.25
#: worker environment variable naming the slowed stage and its delay per image ("coarse:1.0")
SLOW_ENV = "FD_BENCH_SLOW"
#: what the sampler recorded in this (driver) process: one dict per sample
SAMPLES: list[dict[str, Any]] = []


def slow_stage_hook() -> None:
    """Runs in every Ray worker: rows of the stage named in `SLOW_ENV` (a prefix: "refine" is any refine group)
    sleep its delay per row before they run."""
    spec = os.environ.get(SLOW_ENV, "")
    if not spec:
        return
    stage, delay = spec.rsplit(":", 1)
    from job import stages

    guarded = stages._guarded

    def slowed(rows, attempts, name, run):
        if rows and name.startswith(stage):
            time.sleep(float(delay) * len(rows))
        return guarded(rows, attempts, name, run)

    stages._guarded = slowed


def _sampler_class():
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class Sampler(ExecutionCallback):
        """Ray Data's per-operator counters, every `SAMPLE_S` seconds of the scheduling loop, into `SAMPLES`."""

        def before_execution_starts(self, executor) -> None:
            self._t0, self._last = time.perf_counter(), 0.0

        def on_execution_step(self, executor) -> None:
            now = time.perf_counter()
            if now - self._last < SAMPLE_S:
                return
            self._last = now
            rm = executor._resource_manager
            ops = []
            for op, state in executor._topology.items():
                info = op.get_actor_info()
                pool = getattr(op, "_actor_pool", None)
                ops.append({"op": op.name, "actors": int(info.running), "pending_actors": int(info.pending),
                            "util": round(float(pool.get_pool_util()), 2) if pool is not None else None,
                            "throttled": not state._scheduling_status.under_resource_limits,
                            "tasks": int(op.metrics.num_tasks_running),
                            "in_mb": state.total_enqueued_input_blocks_bytes() / MB,
                            "out_mb": state.total_enqueued_output_blocks_bytes() / MB,
                            "in_blocks": state.total_enqueued_input_blocks(),
                            "out_blocks": state.total_enqueued_output_blocks()})
            SAMPLES.append({"t": now - self._t0, "store_mb": rm.get_global_usage().object_store_memory / MB,
                            "ops": ops})

    return Sampler


def _stage_names(cfg, op_names: list[str]) -> list[str]:
    """Ray Data's operators (topology order) named as this benchmark reports them: the listing's read, decode, one
    name per model operator of the plan (`job.operators.operators`, in order), write; "" for Ray's input buffer."""
    from job.operators import operators

    models = iter(op.name for op in operators(cfg, chain=False))
    names = []
    for name in op_names:
        names.append("decode" if "read_decode" in name else "write" if "write_outputs" in name
                     else next(models) if "PlanStage" in name else "listing" if name.startswith("Read") else "")
    return names


def _inputs(folder: Path, n: int, size: int) -> Path:
    """``n`` PNGs of ``size``² (four generated scenes, hard-linked), kept between runs."""
    from finedetail import synthetic
    from finedetail.codecs import encode_png

    inp = folder / f"in-{n}-{size}"
    if (inp / ".count").is_file():
        return inp
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir(parents=True)
    seeds = []
    for i in range(min(n, 4)):
        scene = synthetic.make_scene(synthetic.KINDS[i % len(synthetic.KINDS)], seed=i, size=(size, size))
        seeds.append(folder / f".scene-{size}-{i}.png")
        seeds[-1].write_bytes(encode_png(scene.image))
    for i in range(n):
        os.link(seeds[i % len(seeds)], inp / f"img_{i:04d}.png")
    (inp / ".count").write_text(str(n))
    return inp


def child(inp: str, out: str, prompts: str, cpus: int, gpus: int, max_actors: int, store_mb: int) -> dict[str, Any]:
    import io

    import ray

    from job.bench.archive import StorePeak, _cfg
    from job.run import run_job

    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False, **({"object_store_memory": store_mb * MB} if store_mb else {}),
             runtime_env={"worker_process_setup_hook": "job.bench.pressure.slow_stage_hook",
                          "env_vars": {SLOW_ENV: os.environ.get(SLOW_ENV, "")}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.custom_execution_callback_classes.append(_sampler_class())
    cfg = _cfg(inp, out, prompts, None, resources={"max_actors": max_actors, "gpu": "on"})
    store = StorePeak()  # the raylet's own count, beside Ray Data's
    t0 = time.perf_counter()
    summary = run_job(cfg, out=io.StringIO())
    total = time.perf_counter() - t0
    raylet_peak_mb, spilled_mb = store.stop()
    ray.shutdown()
    names = _stage_names(cfg, [o["op"] for o in SAMPLES[-1]["ops"]]) if SAMPLES else []
    return {"total_s": round(total, 1), "ok": summary["ok"], "names": names, "samples": SAMPLES,
            "raylet_store_peak_mb": raylet_peak_mb, "spilled_mb": spilled_mb}


def summarise(res: dict[str, Any], *, slow: str, n: int, size: int) -> dict[str, Any]:
    """Peaks and a timeline from a child's samples (operators matched to stage names by topology position)."""
    names, samples = res["names"], res["samples"]
    per_image = size * size * 3 / MB
    slow_i, dec_i = next(i for i, nm in enumerate(names) if nm.startswith(slow)), names.index("decode")

    def ahead(ops: list[dict[str, Any]]) -> float:  # decoded, waiting for the slow stage
        return sum(o["out_mb"] for o in ops[dec_i:slow_i]) + sum(o["in_mb"] for o in ops[dec_i + 1:slow_i + 1])

    queued = [ahead(s["ops"]) for s in samples if len(s["ops"]) == len(names)]
    pools = [(i, nm) for i, nm in enumerate(names) if nm not in ("", "listing", "decode", "write")]
    actors = {nm: max((s["ops"][i]["actors"] for s in samples if len(s["ops"]) == len(names)), default=0)
              for i, nm in pools}
    timeline, step = [], max(1.0, res["total_s"] / 12)
    for s in samples:
        if len(s["ops"]) == len(names) and (not timeline or s["t"] - timeline[-1]["t"] >= step):
            timeline.append({"t": round(s["t"], 1), **{nm: s["ops"][i]["actors"] for i, nm in pools},
                             "queued_mb": round(ahead(s["ops"]), 1),
                             "store_mb": round(s["store_mb"], 1)})
    peak = max(queued, default=0.0)
    return {"images": n, "size": size, "slow": slow, "total_s": res["total_s"], "ok": res["ok"],
            "decoded_mb": round(n * per_image, 1), "queued_peak_mb": round(peak, 1),
            "ahead_peak_images": round(peak / per_image, 1),
            "store_peak_mb": round(max((s["store_mb"] for s in samples), default=0.0), 1),
            "raylet_store_peak_mb": res.get("raylet_store_peak_mb"), "spilled_mb": res.get("spilled_mb"),
            "actors_max": actors, "timeline": timeline}


def run(sizes: list[int], *, size: int, slow: str, delay: float, cpus: int, gpus: int, max_actors: int,
        store_mb: int, work: Path) -> list[dict[str, Any]]:
    from job.bench.archive import _prompts

    prompts = str(_prompts(work / "prompts"))
    results = []
    for n in sizes:
        inp = _inputs(work, n, size)
        out = work / f"out-{n}-{size}"
        shutil.rmtree(out, ignore_errors=True)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), SLOW_ENV: f"{slow}:{delay}"}
        cmd = [sys.executable, "-m", "job.bench.pressure", "_child", str(inp), str(out), prompts, str(cpus),
               str(gpus), str(max_actors), str(store_mb)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"run of {n} images failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        row = {**summarise(res, slow=slow, n=n, size=size), "delay_s": delay, "cpus": cpus, "gpus": gpus,
               "max_actors": max_actors, "store_mb": store_mb}
        print(json.dumps({k: v for k, v in row.items() if k != "timeline"}), file=sys.stderr, flush=True)
        results.append(row)
        shutil.rmtree(out, ignore_errors=True)
    return results


def _table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'images':>6} {'decoded MB':>10} {'queued peak MB':>14} {'ahead (images)':>14} {'store peak MB':>13} "
             f"{'total s':>7}  actors max"]
    for r in results:
        lines.append(f"{r['images']:>6} {r['decoded_mb']:>10} {r['queued_peak_mb']:>14} {r['ahead_peak_images']:>14} "
                     f"{r['store_peak_mb']:>13} {r['total_s']:>7}  {r['actors_max']}")
    for r in results:
        lines.append(f"\ntimeline, {r['images']} images (slow: {r['slow']} {r['delay_s']} s/image):")
        for t in r["timeline"]:
            lines.append("  " + "  ".join(f"{k}={v}" for k, v in t.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_child":
        inp, out, prompts, cpus, gpus, max_actors, store_mb = argv[1:8]
        print(json.dumps(child(inp, out, prompts, int(cpus), int(gpus), int(max_actors), int(store_mb))))
        return 0
    p = argparse.ArgumentParser(prog="python -m job.bench pressure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="16,48", help="numbers of input images, comma-separated (one run each)")
    p.add_argument("--size", type=int, default=2048, help="side of the square input images")
    p.add_argument("--slow", default="coarse", choices=("coarse", "refine"), help="the stage made slow")
    p.add_argument("--delay", type=float, default=1.0, help="seconds the slow stage sleeps per image")
    p.add_argument("--max-actors", type=int, default=4, help="upper bound of each model pool")
    p.add_argument("--cpus", type=int, default=8, help="logical CPUs of the local Ray (may exceed the cores)")
    p.add_argument("--gpus", type=int, default=4, help="(fake) GPUs the local Ray declares")
    p.add_argument("--store-mb", type=int, default=1000, help="object store size of the local Ray (0: Ray's default)")
    p.add_argument("--work", type=Path, default=Path("/tmp/fd-bench-pressure"), help="scratch folder (kept)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.images.split(",") if x]
    results = run(sizes, size=args.size, slow=args.slow, delay=args.delay, cpus=args.cpus, gpus=args.gpus,
                  max_actors=args.max_actors, store_mb=args.store_mb, work=args.work)
    print(json.dumps(results, indent=1) if args.json else _table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
