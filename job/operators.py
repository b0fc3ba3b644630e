"""The plan's steps as Ray operators: which steps run in which actor pool, with what resources.

Shared by the image path (``job.run.build_dataset``) and the raster-window path (``job.raster.driver``); imports neither.

One operator per model, in plan order (``operators``): ``coarse`` (the coarse step: SegGPT), ``refiner`` (every
refine step, each group of ``finedetail.plan.Plan.groups`` as one batched call, then the crop step: one SAM copy per
actor), or with ``chain`` one ``chain`` operator running every model step. A step without a model (a variant copied
from its coarse view with refinement off) runs in the operator before it. The fuse step is CPU work and runs in the
write task (``job.stages.write_outputs``), so no state crosses an operator boundary after the last model step.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from job.config import JobConfig

log = logging.getLogger("finedetail.job")

__all__ = ["Operator", "Plan", "method_plan", "model_stages", "operators", "plan_resources", "pool_args",
           "write_steps"]


@dataclass(frozen=True)
class Operator:
    """One ``job.stages.PlanStage`` actor pool: ``name`` ("coarse", "refiner", "chain", or "cpu" for steps without
    a model and no model operator before them) and the names of the plan steps it runs, in plan order."""

    name: str
    steps: tuple[str, ...]


def method_plan(cfg: JobConfig) -> Any:
    """The method's `finedetail.plan.Plan` for this job (no coarse step when ``--coarse`` gives the masks)."""
    from finedetail.plan import build_plan

    return build_plan(cfg.pipeline, coarse_given=cfg.coarse is not None)


def operators(cfg: JobConfig, *, chain: bool, fuse: bool = True) -> list[Operator]:
    """The model operators of ``cfg``'s plan. ``fuse``: the fuse step runs in the last operator (for a write task
    that does not fuse: the raster-window path); False leaves it to the write task (``write_steps``)."""
    out: list[tuple[str, list[str]]] = []
    for step in method_plan(cfg).steps:
        if step.kind == "fuse" and not fuse:
            continue
        name = "chain" if chain else step.model or (out[-1][0] if out else "cpu")
        if out and out[-1][0] == name:
            out[-1][1].append(step.name)
        else:
            out.append((name, [step.name]))
    return [Operator(name, tuple(steps)) for name, steps in out]


def write_steps(cfg: JobConfig) -> tuple[str, ...]:
    """The steps the write task runs before it writes: the fuse step."""
    return tuple(s.name for s in method_plan(cfg).steps if s.kind == "fuse")


@dataclass(frozen=True)
class Plan:
    """Resources per operator. GPU fractions of the pools that must coexist at their minimum size sum to <= 1."""

    use_gpu: bool
    coarse_gpus: float
    refiner_gpus: float
    model_cpus: float
    io_cpus: float
    max_actors: int
    #: one chained pool instead of a pool per model (``Resources.chain``); its actors take chain_cpus and, with
    #: GPUs, chain_gpus of a GPU (the per-model fractions are then 0)
    chain: bool = False
    chain_cpus: float = 0.0
    chain_gpus: float = 0.0

    def gpu_sum(self, cfg: JobConfig) -> float:
        """GPU fraction of one actor of every model operator of ``cfg``'s plan."""
        if self.chain:
            return self.chain_gpus
        gpus = {"coarse": self.coarse_gpus, "refiner": self.refiner_gpus}
        return sum(gpus.get(op.name, 0.0) for op in operators(cfg, chain=False))


def plan_resources(cfg: JobConfig, cluster: dict[str, float]) -> Plan:
    """Decide each operator's resources from the config and what the cluster has now.

    GPU: with ``gpu: auto`` the model operators ask for GPUs only when the cluster reports some. Fractions left at
    their defaults are shrunk so that one actor of every model pool fits on one GPU together (the pools then grow
    onto more GPUs as the autoscaler adds them). CPU: on a GPU cluster each model actor takes at most half a CPU; on
    a CPU-only machine the model actors share the CPUs left after one read and one write task (so the pipeline
    can't deadlock).
    """
    r = cfg.resources
    gpus, cpus = cluster.get("GPU", 0.0), max(1.0, cluster.get("CPU", 1.0))
    use_gpu = r.gpu == "on" or (r.gpu == "auto" and gpus > 0)
    n_model = max(1, len(operators(cfg, chain=False)))
    share = 1.0 / n_model
    fit = lambda v: share if v is None else v  # noqa: E731 - explicit fractions are used as given
    io_cpus = min(1.0, cpus / 4)
    # one actor of every model pool, a read task and a write task (which fuses) must fit in the CPUs there are now
    fair = math.floor(1000 * (cpus - 2 * io_cpus) / n_model) / 1000
    if use_gpu:  # GPU-bound actors: half a CPU each for their batch preparation is plenty
        model_cpus = r.model_cpus or max(0.01, min(0.5, fair))
        if r.chain == "on":  # one pool holding every model: a whole GPU per actor unless told otherwise
            return Plan(True, 0.0, 0.0, model_cpus, io_cpus, r.max_actors, chain=True,
                        chain_cpus=r.model_cpus or min(1.0, cpus - io_cpus), chain_gpus=r.refiner_gpus or 1.0)
        return Plan(True, fit(r.coarse_gpus), fit(r.refiner_gpus), model_cpus, io_cpus, r.max_actors)
    model_cpus = r.model_cpus or max(0.01, fair)
    if r.chain != "off":  # CPU-only: one chained actor per core (up to max_actors), as a chained actor's work is
        # mostly single-threaded; all of them, a read task and a write task fit in the CPUs (no deadlock), <= 4 each
        n = max(1, min(r.max_actors, math.floor(cpus)))
        chain_cpus = r.model_cpus or max(0.01, min(4.0, math.floor(1000 * (cpus - 2 * io_cpus) / n) / 1000))
        return Plan(False, 0.0, 0.0, model_cpus, io_cpus, n, chain=True, chain_cpus=chain_cpus)
    return Plan(False, 0.0, 0.0, model_cpus, io_cpus, r.max_actors)



def pool_args(plan: Plan, *, gpus: float | None, cpus: float | None = None) -> dict[str, Any]:
    """``map_batches`` arguments of an actor pool: 1 to ``plan.max_actors`` actors of ``cpus`` (default
    ``plan.model_cpus``) CPUs and, when the plan uses GPUs and ``gpus`` is not None, ``gpus`` of a GPU each."""
    from ray.data import ActorPoolStrategy

    args: dict[str, Any] = {
        # a CPU-only chained pool starts whole (one actor per core, `plan_resources`): Ray Data's autoscaler adds an
        # actor only once the first one is saturated, which one image per call never makes it
        "compute": ActorPoolStrategy(min_size=plan.max_actors if plan.chain and not plan.use_gpu else 1,
                                     max_size=plan.max_actors),
        "num_cpus": plan.model_cpus if cpus is None else cpus,
    }
    # A dead actor (preempted node, OOM kill, a crash in native code) is restarted and its batches re-sent, without
    # a limit of Ray's own: a count over the actor's lifetime would fail a long job after a few unrelated deaths.
    # What bounds an input that kills every worker is the stages' attempt accounting (job.stages.AttemptLog,
    # JobConfig.max_tries), which turns it into an error row; what bounds a model that cannot be built is
    # job.stages.build_bounded (max_tries failed builds in a row fail the job). Unbounded restarts and task retries
    # are Ray Data's defaults for actor pools (max_restarts=-1, max_task_retries=-1), which we rely on rather than
    # pass (map_batches' extra remote arguments are deprecated, gone in Ray 2.64);
    # tests/test_job.py::test_model_pools_restart_and_retry_without_a_limit_of_rays_own checks them.
    if plan.use_gpu and gpus is not None:
        args["num_gpus"] = gpus
    return args


def model_stages(ds: Any, cfg: JobConfig, plan: Plan, *, attempts: Any = None, batch_size: int | None = None,
                 fuse: bool = True) -> Any:
    """Append the model operators of the method's plan (``operators``) to ``ds`` (rows of the ``job.rows`` schema
    with a decoded state): one ``job.stages.PlanStage`` actor pool each. ``fuse``: the fuse step runs in the last
    operator (the raster-window path); the image path passes False and fuses in its write task. ``batch_size``:
    rows per call (default ``cfg.resources.batch_size``)."""
    from job import stages

    bs = cfg.resources.batch_size if batch_size is None else batch_size
    gpus = {"coarse": plan.coarse_gpus, "refiner": plan.refiner_gpus, "chain": plan.chain_gpus, "cpu": None}
    for op in operators(cfg, chain=plan.chain, fuse=fuse):
        pool = pool_args(plan, gpus=gpus[op.name], cpus=plan.chain_cpus if op.name == "chain" else None)
        ds = ds.map_batches(stages.PlanStage, fn_constructor_kwargs={"cfg": cfg, "steps": list(op.steps),
                                                                       "attempts": attempts},
                            batch_size=bs, batch_format="numpy", **pool)
    return ds
