"""Dataset wiring: list -> read/decode -> the plan's steps (coarse, one per variant, crops, fuse) -> write.

Streaming end to end (no groupby, no shuffle). Resume: keys whose latest manifest row is ``ok`` with the same config
hash are not even read. The driver only consumes the small manifest rows the write stage returns.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from job import io as jio
from job import manifest as jm
from job.config import JobConfig

log = logging.getLogger("finedetail.job")

__all__ = ["JobFailed", "JobRefused", "Plan", "plan_resources", "run_job"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class JobFailed(RuntimeError):
    """The job stopped part-way because storage failed for good (e.g. the output bucket vanished or turned
    read-only) or a model stage could not build its model ``max_tries`` times (a corrupt checkpoint, no GPU memory
    for it): the message is that error's, on one line. Rows finished before it are in the manifest with their files;
    nothing unfinished is; re-running the same command resumes. The command line exits with status 1."""


class JobRefused(ValueError):
    """The job was refused before any work started (bad prompts, unwritable output, ...); nothing was written.
    The message names the problem; the command line prints it and exits with status 2."""


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
    #: one chained pool instead of a pool per step (``Resources.chain``); its actors take chain_cpus and, with
    #: GPUs, chain_gpus of a GPU (the per-stage fractions are then 0)
    chain: bool = False
    chain_cpus: float = 0.0
    chain_gpus: float = 0.0

    def gpu_sum(self, n_variants: int, coarse: bool, crop: bool) -> float:
        """GPU fraction of one actor of every model pool."""
        if self.chain:
            return self.chain_gpus
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
    if r.gpu == "auto" and not use_gpu:
        log.warning("no GPU in the cluster now: model stages run on CPU. On an autoscaling cluster whose GPU "
                    "workers start at zero, pass --gpu on so the autoscaler adds GPU nodes.")
    n_model = sum(s.kind != "fuse" for s in method_plan(cfg).steps)  # model pools: every step but fuse
    share = 1.0 / n_model
    fit = lambda v: share if v is None else v  # noqa: E731 - explicit fractions are used as given
    io_cpus = fuse_cpus = min(1.0, cpus / 4)
    # one actor of every model pool, the fuse pool and a read task must fit in the CPUs the cluster has now
    fair = math.floor(1000 * (cpus - io_cpus - fuse_cpus) / n_model) / 1000
    if use_gpu:  # GPU-bound actors: half a CPU each for their batch preparation is plenty
        model_cpus = r.model_cpus or max(0.01, min(0.5, fair))
        if r.chain == "on":  # one pool holding every model: a whole GPU per actor unless told otherwise
            return Plan(True, 0.0, 0.0, 0.0, model_cpus, fuse_cpus, io_cpus, r.max_actors, r.fuse_actors, chain=True,
                        chain_cpus=r.model_cpus or min(1.0, cpus - io_cpus), chain_gpus=r.variant_gpus or 1.0)
        return Plan(True, fit(r.coarse_gpus), fit(r.variant_gpus), fit(r.crop_gpus), model_cpus, fuse_cpus,
                    io_cpus, r.max_actors, r.fuse_actors)
    model_cpus = r.model_cpus or max(0.01, fair)
    if r.chain != "off":  # CPU-only: a chained actor takes what a read and a write task leave, up to 4 CPUs each
        return Plan(False, 0.0, 0.0, 0.0, model_cpus, fuse_cpus, io_cpus, r.max_actors, r.fuse_actors, chain=True,
                    chain_cpus=r.model_cpus or max(0.01, min(4.0, cpus - 2 * io_cpus)))
    return Plan(False, 0.0, 0.0, 0.0, model_cpus, fuse_cpus, io_cpus, r.max_actors, r.fuse_actors)


def _input_keys(cfg: JobConfig, refused: Any = None):
    """The input keys, sorted and streamed (`job.listing.iter_keys`): unsafe names go to ``refused`` (a callable),
    an output inside the input is left out whole (the job never segments its own outputs)."""
    from job.listing import iter_keys

    storage = jio.open_storage(cfg.input)[0]
    inside = jio.relative_root(cfg.output, storage)
    return iter_keys(storage, extensions=IMAGE_EXTS, exclude=(inside,) if inside else (), refused=refused)


def list_inputs(cfg: JobConfig, *, refused: list[str] | None = None) -> list[str]:
    """Input keys, sorted, as one list (small inputs, benchmarks; the job itself streams them). Names that could
    write outside ``--output`` (``..``, absolute, control characters, bytes that are not UTF-8, ...) are left out
    and, when ``refused`` is given, appended to it. An output inside the input (``--input photos --output
    photos/out``) is left out whole."""
    from job.listing import StemCheck

    stems, keys = StemCheck(), []
    for k in _input_keys(cfg, None if refused is None else refused.append):
        earlier = stems.clash(k)
        if earlier is not None:
            raise ValueError(_clash_message(k, earlier))
        keys.append(k)
    return keys


def _clash_message(key: str, earlier: str) -> str:
    return (f"inputs {earlier!r} and {key!r} would both write masks/{os.path.splitext(key)[0]}.png; "
            "rename one of them or run them as separate jobs")


def _test_env() -> dict[str, Any]:
    """The stages' test hooks (``job.stages._test_crash``) reach the workers through their runtime_env; empty
    (no runtime_env at all) unless a test set them in the driver's environment."""
    from job.stages import TEST_ENV_VARS

    hooks = {k: os.environ[k] for k in TEST_ENV_VARS if os.environ.get(k)}
    return {"runtime_env": {"env_vars": hooks}} if hooks else {}


def _pool(plan: Plan, *, gpus: float | None, cpus: float | None = None, max_size: int | None = None
          ) -> dict[str, Any]:
    """``map_batches`` arguments of an actor pool: 1 to ``max_size`` (default ``plan.max_actors``) actors of
    ``cpus`` (default ``plan.model_cpus``) CPUs and, when the plan uses GPUs and ``gpus`` is not None, ``gpus`` of a
    GPU each."""
    from ray.data import ActorPoolStrategy

    args: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=1, max_size=plan.max_actors if max_size is None else max_size),
        "num_cpus": plan.model_cpus if cpus is None else cpus,
        # A dead actor (preempted node, OOM kill, a crash in native code) is restarted and its batches re-sent,
        # without a limit of Ray's own: a count over the actor's lifetime would fail a long job after a few
        # unrelated deaths. What bounds an input that kills every worker is the stages' attempt accounting
        # (job.stages.AttemptLog, JobConfig.max_tries), which turns it into an error row; what bounds a model that
        # cannot be built is job.stages.build_bounded (max_tries failed builds in a row fail the job).
        "max_restarts": -1,
        "max_task_retries": -1,
        **_test_env(),
    }
    if plan.use_gpu and gpus is not None:
        args["num_gpus"] = gpus
    return args


def model_stages(ds: Any, cfg: JobConfig, plan: Plan, *, attempts: Any = None, batch_size: int | None = None
                 ) -> Any:
    """Append the steps of the method's plan (``finedetail.plan``: coarse unless ``--coarse`` supplies the masks,
    one refine step per variant, crops, fuse) to ``ds`` (rows of the ``job.rows`` schema with a decoded state): one
    ``job.stages.PlanStage`` actor pool per step, or with ``plan.chain`` one pool whose actors run every step.
    Shared by the image path (``build_dataset``) and the raster-window path (``job.geo``). ``batch_size``: rows per
    stage call (default ``cfg.resources.batch_size``)."""
    from job import stages

    bs = cfg.resources.batch_size if batch_size is None else batch_size

    def add(ds: Any, steps: list[str] | None, pool: dict[str, Any]) -> Any:
        return ds.map_batches(stages.PlanStage, fn_constructor_kwargs={"cfg": cfg, "steps": steps,
                                                                       "attempts": attempts},
                              batch_size=bs, batch_format="numpy", **pool)

    if plan.chain:
        return add(ds, None, _pool(plan, gpus=plan.chain_gpus, cpus=plan.chain_cpus))
    gpus = {"coarse": plan.coarse_gpus, "refine": plan.variant_gpus, "view": plan.variant_gpus,
            "crop": plan.crop_gpus}
    for step in method_plan(cfg).steps:
        if step.kind == "fuse":
            ds = add(ds, [step.name], _pool(plan, gpus=None, cpus=plan.fuse_cpus, max_size=plan.fuse_actors))
        else:
            ds = add(ds, [step.name], _pool(plan, gpus=gpus[step.kind]))
    return ds


def method_plan(cfg: JobConfig) -> Any:
    """The method's `finedetail.plan.Plan` for this job (no coarse step when ``--coarse`` gives the masks)."""
    from finedetail.plan import build_plan

    return build_plan(cfg.pipeline, coarse_given=cfg.coarse is not None)


def build_dataset(cfg: JobConfig, keys: Any, plan: Plan, *, attempts: Any = None, part_tag: int | None = None):
    """The lazy Ray dataset of manifest rows (nothing runs until it is consumed). ``keys``: a list of input keys,
    or a `job.listing.KeyFeed` streaming them (the job's own way).

    ``attempts``: the run's `job.stages.AttemptLog` (bounds the tries of inputs that kill workers); None = none.
    ``part_tag``: the run's start (ms) in its manifest parts' names, so a write task Ray runs again (its output was
    lost with a node) replaces its part instead of adding rows; None = each part named by its time.
    """
    import ray

    from job import stages

    track = {"attempts": attempts}
    if isinstance(keys, list):
        nblocks = max(1, min(len(keys), -(-len(keys) // cfg.resources.read_batch)))
        ds = ray.data.from_items([{"key": k} for k in keys], override_num_blocks=nblocks)
    else:  # a job.listing.KeyFeed: keys stream in while the listing goes on
        ds = keys.dataset()
    ds = ds.map_batches(stages.read_decode, batch_size=cfg.resources.read_batch, num_cpus=plan.io_cpus,
                        fn_kwargs={"cfg": cfg, **track}, batch_format="numpy",
                        **_test_env())
    ds = model_stages(ds, cfg, plan, attempts=attempts)
    ds = ds.map_batches(stages.write_outputs, batch_size=cfg.resources.batch_size, num_cpus=plan.io_cpus,
                        batch_format="numpy", fn_kwargs={"cfg": cfg, "config_hash": cfg.config_hash,
                                                         "part_tag": part_tag, **track},
                        **_test_env())
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
    """Everything that can be refused before any work starts: an output that is the input itself, backend_options,
    prompts readable, consistent and usable by the backend, output writable, the model weights on this machine
    (fetched into the cache if needed). Raises `JobRefused` (a ValueError) with a one-line message; Ray is not
    started."""
    from job.models import backend_configs, build_coarse, fetch_weights, load_prompts

    if jio.relative_root(cfg.output, cfg.input) == "":
        raise JobRefused(f"--output is the --input folder itself ({jio.redact(cfg.input)}): the outputs would mix with "
                         "the images; pass a folder of its own, e.g. --output <input>/out (left out of the inputs) "
                         "or a folder next to it")
    try:
        backend_configs(cfg)
    except ValueError as exc:
        raise JobRefused(_one_line(exc)) from exc
    try:
        if cfg.prompts is not None and cfg.coarse is None:
            prompts = load_prompts(cfg.prompts, classes=cfg.classes)
            if cfg.backend != "seggpt-sam":  # weight-free: fitting the coarse model on the prompts is cheap
                build_coarse(cfg, prompts)
    except (ValueError, jio.StorageError) as exc:
        raise JobRefused(f"bad prompts ({jio.redact(cfg.prompts)}): {_one_line(exc)}") from exc
    try:
        jio.check_writable(cfg.output)
    except (ValueError, jio.StorageError) as exc:
        raise JobRefused(f"output {jio.redact(cfg.output)} is not writable: {_one_line(exc)}") from exc
    try:
        fetch_weights(cfg)
    except (OSError, ValueError) as exc:
        raise JobRefused(f"model weights not available: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    """An exception's message, redacted, on one line (a refusal is one line of the terminal)."""
    return " ".join(jio.redact(exc).split())


def _error_in(exc: BaseException, cls: type[BaseException]) -> str | None:
    """The message of the ``cls`` error (or a subclass's) behind an exception Ray re-raised on the driver, or None.

    Ray wraps a task's exception (``RayTaskError(UserCodeException)``) and the original's ``__cause__`` does not
    survive the trip, so after looking for the object itself this reads the traceback text Ray carries."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, cls):
            return jio.redact(e)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    names = "|".join(c.__name__ for c in (cls, *cls.__subclasses__()))
    for line in reversed(str(exc).splitlines()):
        m = re.match(rf"\s*{re.escape(cls.__module__)}\.(?:{names}): (.+)$", line)
        if m:
            return jio.redact(m.group(1))
    return None


def _job_failed(exc: BaseException, ok: int, total: int) -> JobFailed | None:
    """The `JobFailed` for an exception that stopped the dataset, when it is one the job explains (a model that
    cannot be built, storage that failed for good); None for anything else (a bug: re-raised as it is)."""
    from job.stages import ModelInitError

    model_error = _error_in(exc, ModelInitError)
    if model_error is not None:
        return JobFailed(f"job failed after {ok} of {total} images were done: {model_error}")
    storage_error = _error_in(exc, jio.StorageError)
    if storage_error is not None:
        return JobFailed(f"job failed after at least {ok} of {total} images were done: {storage_error}. "
                         "Every image in the manifest has all its files; fix the storage and re-run the same "
                         "command to resume")
    return None


def _remove_leftovers(storage: jio.Storage) -> None:
    """What a killed earlier run may have left in the output: temp files of interrupted writes (never visible as
    outputs, but clutter) and its worker-death notes (``_attempts/``, see job.stages). Called with the output's
    lease held (`job.lease`): no other driver writes there."""
    from job.stages import clear_attempt_notes

    jio.remove_temp_files(storage)
    clear_attempt_notes(storage)


def _refused_rows(names: list[str], cfg: JobConfig) -> list[dict[str, Any]]:
    """Manifest error rows for input names the job will not touch (they could write outside ``--output``). The key
    is the name with control characters, backslashes and undecodable bytes escaped, so it is printable, storable,
    and never equal to a real (safe) key."""
    rows = []
    for name in names:
        try:
            jio.safe_key(name)
            why = "refused"
        except ValueError as exc:
            why = str(exc)
        rows.append({**_error_row(name.encode("unicode_escape", "backslashreplace").decode("ascii"), cfg),
                     "error": f"unsafe input name, not read: {why}"})
    return rows


def _error_row(key: str, cfg: JobConfig) -> dict[str, Any]:
    """A manifest error row for an input the job did not read (set ``error``)."""
    return {"key": key, "status": "error", "error": "", "attempts": 0, "config_hash": cfg.config_hash,
            "finished_at": time.time(), "encoder_passes": 0, "coarse_passes": 0, "refiner_passes": 0}


def run_job(cfg: JobConfig, *, address: str | None = None, out=sys.stdout, force_lease: bool = False
            ) -> dict[str, Any]:
    """Run the job to completion; returns the summary (also printed).

    The run holds the output's lease (`job.lease`) from before it touches the output until it ends: a second driver
    on the same output is refused (`JobRefused` naming the holder) unless ``force_lease``."""
    from job import lease as jl
    from job.models import resolve_classes

    cfg = resolve_classes(cfg)  # class names from the prompts' classes.yaml unless given
    validate_up_front(cfg)
    cfg = cfg.with_fingerprint()  # contents of prompts and weights, hashed once here; workers get the result
    refused: list[str] = []
    if next(_input_keys(cfg, refused.append), None) is None and not refused:  # lists up to the first image only
        raise JobRefused(f"no images under {cfg.input} (looked for {', '.join(IMAGE_EXTS)})")
    out_storage = jio.open_storage(cfg.output)[0]
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    try:
        lease = jl.acquire(out_storage, run_id, force=force_lease)
    except (jl.LeaseHeld, jio.StorageError) as exc:
        raise JobRefused(_one_line(exc)) from exc
    try:
        return _run_leased(cfg, out_storage, run_id, address=address, out=out)
    finally:
        lease.release()


def _todo_pages(cfg: JobConfig, out_storage: jio.Storage, counts: Any, extra: list[dict[str, Any]],
                windowed: list[str], out) -> Any:
    """Pages of keys for the image path, streamed (`job.listing`): the sorted listing minus the done set (the
    compacted manifest, also streamed), at most ``--limit``; TIFFs too large for one row go to ``windowed``;
    refused names and stem clashes become error rows in ``extra``. Prints the counts when the listing ends."""
    from job.compact import iter_done_keys
    from job.listing import iter_todo, pages

    refused: list[str] = []
    clashes: list[dict[str, Any]] = []

    def clash(key: str, earlier: str) -> None:
        clashes.append({**_error_row(key, cfg), "error": _clash_message(key, earlier)})

    keys = _input_keys(cfg, refused.append)
    todo = iter_todo(keys, iter_done_keys(out_storage, cfg.config_hash), counts, limit=cfg.limit, clash=clash)
    for page in pages(todo):
        if any(k.lower().endswith((".tif", ".tiff")) for k in page):
            from job.geo import split_windowed  # TIFFs are sized here; other images by the decode step (WINDOWED)

            page, big = split_windowed(cfg, page)
            windowed.extend(big)
        if page:
            yield page
    extra.extend(_refused_rows(refused, cfg) + clashes)
    if extra:
        jm.write_part(out_storage, extra)
    print(f"finedetail: {counts.listed} inputs, {counts.done} already done (config {cfg.config_hash}), "
          f"{counts.todo} to run" + (f" (listing stopped at --limit {cfg.limit})" if counts.cut else ""),
          file=out, flush=True)


def _run_leased(cfg: JobConfig, out_storage: jio.Storage, run_id: str, *, address: str | None, out
                ) -> dict[str, Any]:
    """`run_job` from the point where the run holds the output's lease."""
    import itertools

    import ray

    from job.compact import compact
    from job.listing import PAGE_KEYS, KeyFeed, ListingCounts

    _remove_leftovers(out_storage)
    compact(out_storage)  # the parts a killed run left: into the sorted shards the done set streams from
    t0 = time.perf_counter()
    counts, extra, windowed = ListingCounts(), [], []
    tally = jm.Tally()
    todo_pages = _todo_pages(cfg, out_storage, counts, extra, windowed, out)
    first = list(itertools.islice(todo_pages, 1))  # no Ray, no pools when everything is done
    if first or windowed:
        _ensure_ray(address)
        plan = plan_resources(cfg, ray.cluster_resources())
    if first:
        from job.stages import WINDOWED, AttemptLog

        attempts = AttemptLog(output=cfg.output, run_id=run_id, max_tries=cfg.max_tries)
        r = cfg.resources
        feed = KeyFeed(itertools.chain(first, todo_pages), block_rows=r.read_batch,  # never short of a batch:
                       max_in_flight=max(4 * PAGE_KEYS, 16 * max(r.read_batch, r.batch_size)))
        ds = build_dataset(cfg, feed, plan, attempts=attempts, part_tag=time.time_ns() // 1_000_000)
        try:
            feed.start()
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                feed.done(len(batch["key"]))
                for i in range(len(batch["key"])):
                    row = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
                    if row["status"] == WINDOWED:  # too large for one row (its header said): by window below
                        windowed.append(row["key"])
                    else:
                        tally.add(row)
            if feed.error is not None:
                raise feed.error
        except Exception as exc:
            failed = _job_failed(exc, tally.ok, counts.todo)
            if failed is None:
                raise
            try:
                attempts.clear()
            except jio.StorageError:
                pass  # the storage is what failed; the next run clears the notes
            raise failed from exc
        finally:
            feed.close()
        attempts.clear()
    else:
        list(todo_pages)  # the listing's end: its error rows and counts
    for row in extra:
        tally.add(row)
    if windowed:
        from job.geo import run_windowed

        windowed.sort()  # input order
        try:
            for row in run_windowed(cfg, windowed, plan):
                tally.add(row)
        except Exception as exc:
            failed = _job_failed(exc, tally.ok, counts.todo)
            if failed is None:
                raise
            raise failed from exc
    if cfg.coco:
        from job.coco import write_dataset_coco

        write_dataset_coco(cfg)
    packed = compact(out_storage)  # one row per key, sorted: the next run's done set streams from it
    if packed.shards:
        print(f"finedetail: manifest compacted: {packed.rows_read} rows ({packed.parts} new parts) -> {packed.rows} "
              f"keys in {packed.shards} shard(s), {packed.seconds:.1f} s", file=out, flush=True)
    elapsed = time.perf_counter() - t0
    summary = tally.summary()
    summary.update(skipped=counts.done, seconds=round(elapsed, 2),
                   images_per_s=round(tally.images / elapsed, 3) if tally.images and elapsed > 0 else 0.0,
                   config_hash=cfg.config_hash, output=cfg.output)
    print(
        f"finedetail: done {summary['ok']} ok, {summary['errors']} errors, {summary['skipped']} skipped in "
        f"{elapsed:.1f} s ({summary['images_per_s']} images/s, "
        f"{summary['encoder_passes_per_image']:.1f} encoder passes/image) -> {cfg.output}",
        file=out, flush=True,
    )
    for r in tally.errors:
        print(f"  error {r['key']}: {r['error']}", file=out)
    if tally.errors_left_out:
        print(f"  ... and {tally.errors_left_out} more errors (the manifest has them all)", file=out)
    return summary
