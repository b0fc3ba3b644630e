"""Dataset wiring: list -> read/decode -> coarse -> one stage per variant -> crops -> fuse -> write.

Streaming end to end (no groupby, no shuffle). Resume: keys whose latest manifest row is ``ok`` with the same config
hash are not even read. The driver only consumes the small manifest rows the write stage returns.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from finedetail import pipeline as fp
from job import io as jio
from job import manifest as jm
from job.config import JobConfig

log = logging.getLogger("finedetail.job")

__all__ = ["Plan", "plan_resources", "run_job"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Plan:
    """Resources per stage. GPU fractions of the pools that must coexist at their minimum size sum to <= 1."""

    use_gpu: bool
    coarse_gpus: float
    variant_gpus: float
    crop_gpus: float
    model_cpus: float
    fuse_cpus: float
    io_cpus: float
    max_actors: int
    fuse_actors: int

    def gpu_sum(self, n_variants: int, coarse: bool, crop: bool) -> float:
        return (self.coarse_gpus if coarse else 0) + n_variants * self.variant_gpus + (self.crop_gpus if crop else 0)


def plan_resources(cfg: JobConfig, cluster: dict[str, float]) -> Plan:
    """Decide each stage's resources from the config and what the cluster has now.

    GPU: with ``gpu: auto`` the model stages ask for GPUs only when the cluster reports some. Fractions left at their
    defaults are shrunk so that one actor of every model pool fits on one GPU together (the pools then grow onto more
    GPUs as the autoscaler adds them). CPU: on a GPU cluster each model actor takes 1 CPU; on a CPU-only machine the
    model actors share the CPUs left after one read task and the fuse pool (so the pipeline can't deadlock).
    """
    r = cfg.resources
    gpus, cpus = cluster.get("GPU", 0.0), max(1.0, cluster.get("CPU", 1.0))
    use_gpu = r.gpu == "on" or (r.gpu == "auto" and gpus > 0)
    n_model = len(fp.variants(cfg.pipeline)) + (cfg.coarse is None) + bool(cfg.pipeline.crop.enabled)
    share = 1.0 / n_model
    fit = lambda v: min(v, share)  # noqa: E731 - one-liner used thrice
    io_cpus = fuse_cpus = min(1.0, cpus / 4)
    # one actor of every model pool, the fuse pool and a read task must fit in the CPUs the cluster has now
    fair = math.floor(1000 * (cpus - io_cpus - fuse_cpus) / n_model) / 1000
    if use_gpu:  # GPU-bound actors: half a CPU each for their batch preparation is plenty
        model_cpus = r.model_cpus or max(0.01, min(0.5, fair))
        return Plan(True, fit(r.coarse_gpus), fit(r.variant_gpus), fit(r.crop_gpus), model_cpus, fuse_cpus,
                    io_cpus, r.max_actors, r.fuse_actors)
    model_cpus = r.model_cpus or max(0.01, fair)
    return Plan(False, 0.0, 0.0, 0.0, model_cpus, fuse_cpus, io_cpus, r.max_actors, r.fuse_actors)


def list_inputs(cfg: JobConfig) -> list[str]:
    keys = jio.list_files(jio.open_storage(cfg.input)[0], "", extensions=IMAGE_EXTS)
    seen: dict[str, str] = {}
    for k in keys:
        stem = os.path.splitext(k)[0]
        if stem in seen:
            raise ValueError(f"inputs {seen[stem]!r} and {k!r} would both write masks/{stem}.png; "
                             "rename one of them or run them as separate jobs")
        seen[stem] = k
    return keys


def _pool(plan: Plan, *, gpus: float) -> dict[str, Any]:
    from ray.data import ActorPoolStrategy

    args: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=1, max_size=plan.max_actors),
        "num_cpus": plan.model_cpus,
        # a dead actor (preempted node, OOM) is restarted and its batch retried, a bounded number of times
        "max_restarts": 3,
        "max_task_retries": 3,
    }
    if plan.use_gpu:
        args["num_gpus"] = gpus
    return args


def build_dataset(cfg: JobConfig, keys: list[str], plan: Plan):
    """The lazy Ray dataset of manifest rows (nothing runs until it is consumed)."""
    import ray
    from ray.data import ActorPoolStrategy

    from job import stages

    pc = cfg.pipeline
    bs = cfg.resources.batch_size
    nblocks = max(1, min(len(keys), -(-len(keys) // cfg.resources.read_batch)))
    ds = ray.data.from_items([{"key": k} for k in keys], override_num_blocks=nblocks)
    ds = ds.map_batches(stages.read_decode, batch_size=cfg.resources.read_batch, num_cpus=plan.io_cpus,
                        fn_kwargs={"cfg": cfg, "views": len(fp.tta_views(pc))}, batch_format="numpy")
    if cfg.coarse is None:
        ds = ds.map_batches(stages.CoarseStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=bs,
                            batch_format="numpy", **_pool(plan, gpus=plan.coarse_gpus))
    for v in fp.variants(pc):
        ds = ds.map_batches(stages.VariantStage, fn_constructor_kwargs={"cfg": cfg, "variant": v.name},
                            batch_size=bs, batch_format="numpy", **_pool(plan, gpus=plan.variant_gpus))
    if pc.crop.enabled:
        ds = ds.map_batches(stages.CropStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=bs,
                            batch_format="numpy", **_pool(plan, gpus=plan.crop_gpus))
    ds = ds.map_batches(stages.FuseStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=bs, batch_format="numpy",
                        compute=ActorPoolStrategy(min_size=1, max_size=plan.fuse_actors), num_cpus=plan.fuse_cpus)
    ds = ds.map_batches(stages.write_outputs, batch_size=bs, num_cpus=plan.io_cpus, batch_format="numpy",
                        fn_kwargs={"cfg": cfg, "config_hash": cfg.config_hash})
    return ds


def _ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init()  # local default: start Ray on this machine


def validate_up_front(cfg: JobConfig) -> None:
    """Everything that can be refused before any work starts: prompts readable and consistent, output writable."""
    from job.models import load_prompts

    if cfg.prompts is not None and cfg.coarse is None:
        load_prompts(cfg.prompts, num_classes=len(cfg.classes))
    jio.check_writable(cfg.output)


def run_job(cfg: JobConfig, *, address: str | None = None, out=sys.stdout) -> dict[str, Any]:
    """Run the job to completion; returns the summary (also printed)."""
    import ray

    validate_up_front(cfg)
    keys = list_inputs(cfg)
    if not keys:
        raise ValueError(f"no images under {cfg.input} (looked for {', '.join(IMAGE_EXTS)})")
    out_storage = jio.open_storage(cfg.output)[0]
    done = jm.done_keys(out_storage, cfg.config_hash)
    todo = [k for k in keys if k not in done]
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    windowed: list[str] = []
    if any(k.lower().endswith((".tif", ".tiff")) for k in todo):
        from job.geo import split_windowed  # rasters too large for one row go through windows

        todo, windowed = split_windowed(cfg, todo)
    print(f"finedetail: {len(keys)} inputs, {len(done)} already done (config {cfg.config_hash}), "
          f"{len(todo)} to run", file=out, flush=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if todo or windowed:
        _ensure_ray(address)
        plan = plan_resources(cfg, ray.cluster_resources())
    if todo:
        ds = build_dataset(cfg, todo, plan)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n = len(batch["key"])
            rows.extend({k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
                        for i in range(n))
    if windowed:
        from job.geo import run_windowed

        rows.extend(run_windowed(cfg, windowed, plan))
    if cfg.coco:
        from job.coco import write_dataset_coco

        write_dataset_coco(cfg)
    elapsed = time.perf_counter() - t0
    summary = jm.summarize(rows)
    summary.update(skipped=len(done), seconds=round(elapsed, 2),
                   images_per_s=round(len(rows) / elapsed, 3) if rows and elapsed > 0 else 0.0,
                   config_hash=cfg.config_hash, output=cfg.output)
    print(
        f"finedetail: done {summary['ok']} ok, {summary['errors']} errors, {summary['skipped']} skipped in "
        f"{elapsed:.1f} s ({summary['images_per_s']} images/s, "
        f"{summary['encoder_passes_per_image']:.1f} encoder passes/image) -> {cfg.output}",
        file=out, flush=True,
    )
    for r in rows:
        if r["status"] == "error":
            print(f"  error {r['key']}: {r['error']}", file=out)
    return summary
