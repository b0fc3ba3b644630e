"""Dataset wiring: list -> read/decode -> the plan's model operators (``job.operators``) -> fuse + write.

Streaming end to end (no groupby, no shuffle). Resume: keys whose latest manifest row is ``ok`` with the same config
hash are not even read. The driver only consumes the small manifest rows the write stage returns.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from job import io as jio
from job import manifest as jm
from job.config import JobConfig
from job.operators import Plan, model_stages, plan_resources, write_steps
from job.errors import one_line as _one_line
from job.errors import storage_problem
from job.progress import Progress, ProgressOptions

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


def build_dataset(cfg: JobConfig, keys: Any, plan: Plan, *, attempts: Any = None, part_tag: int | None = None):
    """The lazy Ray dataset of manifest rows (nothing runs until it is consumed). ``keys``: a list of input keys,
    or a `job.listing.KeyFeed` streaming them (the job's own way).

    ``attempts``: the run's `job.stages.AttemptLog` (bounds the tries of inputs that kill workers); None = none.
    ``part_tag``: the run's start (ms) in its manifest parts' names, so a write task Ray runs again (its output was
    lost with a node) replaces its part instead of adding rows; None = each part named by its time.
    """
    import ray

    from job import stages
    from job.listing import BLOCK_BYTES

    track = {"attempts": attempts}
    # A CPU-only chained pool takes one image per call (a block per input): every actor gets work however few the
    # inputs, and the driver sees each image as it is written (job.progress), which blocks of several images would
    # hide; a model's batch on CPU buys little. Elsewhere blocks of read_batch inputs and batches of batch_size rows.
    single = plan.chain and not plan.use_gpu
    read_batch, batch_size = (1, 1) if single else (cfg.resources.read_batch, cfg.resources.batch_size)
    if isinstance(keys, list):
        nblocks = max(1, min(len(keys), -(-len(keys) // read_batch)))
        ds = ray.data.from_items([{"key": k} for k in keys], override_num_blocks=nblocks)
    else:  # a job.listing.KeyFeed: keys stream in while the listing goes on
        ds = keys.dataset()
    ds.context.target_max_block_size = BLOCK_BYTES  # this dataset's blocks: one image each (job.listing)
    ds = ds.map_batches(stages.read_decode, batch_size=read_batch, num_cpus=plan.io_cpus,
                        fn_kwargs={"cfg": cfg, **track}, batch_format="numpy")
    ds = model_stages(ds, cfg, plan, attempts=attempts, batch_size=batch_size, fuse=False)  # the write task fuses
    ds = ds.map_batches(stages.write_outputs, batch_size=batch_size, num_cpus=plan.io_cpus,
                        batch_format="numpy", fn_kwargs={"cfg": cfg, "config_hash": cfg.config_hash,
                                                         "steps": write_steps(cfg), "part_tag": part_tag, **track})
    return ds


def _ensure_ray(address: str | None, *, quiet: bool = False) -> bool:
    """Connect to (or start) Ray; returns whether Ray runs on this machine only (a local Ray: nothing autoscales).
    ``quiet``: `job.logs.quiet_ray` first."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if quiet:
        from job.logs import RAY_INIT_LEVEL, quiet_ray

        quiet_ray()
    if not ray.is_initialized():
        kwargs = {"logging_level": RAY_INIT_LEVEL} if quiet else {}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)  # local default: start Ray on this machine
    if quiet:
        from job.logs import drop_stderr_lines

        drop_stderr_lines()
    return len(ray.nodes()) == 1 and address in (None, "local")


def validate_up_front(cfg: JobConfig) -> None:
    """Everything that can be refused before any work starts: an output that is the input itself, backend_options,
    prompts readable, consistent and usable by the backend, output writable, the model weights on this machine
    (fetched into the cache if needed). Raises `JobRefused` (a ValueError) with a one-line message; Ray is not
    started."""
    from job.models import backend_configs, build_coarse, fetch_weights, load_prompts

    if jio.open_storage(cfg.input)[0].kind == "local" and os.path.isfile(cfg.input):
        raise JobRefused(f"--input {cfg.input} is a file; --input takes a folder (or s3:// prefix) of images: put the "
                         f"file in a folder of its own and pass that folder")
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
        raise JobRefused(f"bad prompts ({jio.redact(cfg.prompts)}): {storage_problem(exc)}") from exc
    try:
        jio.check_writable(cfg.output)
    except (ValueError, jio.StorageError) as exc:
        raise JobRefused(f"output {jio.redact(cfg.output)} is not writable: {storage_problem(exc)}") from exc
    try:
        fetch_weights(cfg)
    except (OSError, ValueError) as exc:
        raise JobRefused(f"model weights not available: {_one_line(exc)}") from exc


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


#: what Ray calls the actors of our model pools (`job.stages.PlanStage` under Ray Data's map_batches)
_POOL_ACTOR = "MapBatches(PlanStage)"


def _release_pools() -> None:
    """End a failed dataset's model actors now instead of leaving them to a garbage collection that may not come.

    Ray Data stops a failed dataset by dropping its references to the pools' actors and lets reference counting end
    them, but the stopped executor still holds the completion callback of an actor task it cancelled, and with it
    the actor's handle; an actor whose handle lives stays alive. Measured with Ray 2.60 after a failed write: one
    model actor, with its half GPU and half CPU, alive minutes later. A caller that runs another job in the same
    process (a notebook, a test session) then waited for resources that never came back: a model actor restarting
    after a crash lost its GPU share to the other pool's actor and the job made no progress for 30 min. Every
    `job.stages.PlanStage` actor handle in this process is ended, so two jobs run at once in one process (threads)
    would lose each other's pools when one fails."""
    import gc

    import ray
    from ray.actor import ActorHandle

    gc.collect()
    for obj in gc.get_objects():
        if not isinstance(obj, ActorHandle):
            continue
        if _POOL_ACTOR in str(getattr(obj, "_ray_actor_creation_function_descriptor", "")):
            try:
                ray.kill(obj, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - already gone
                log.debug("ending a failed dataset's actor: %s", exc)


def _await_pools_gone(wait_s: float = 10.0) -> bool:
    """Wait (at most ``wait_s``) until no `job.stages.PlanStage` actor of this Ray job is alive, pending or
    restarting; True when none is. The run clears its ``_attempts`` notes after this: an actor that Ray Data had
    already let go (a restart or a scale-up under way when the dataset ended) could otherwise still build its model
    and write a note after the clear (seen in a test: an empty ``_attempts/<run>/init-refiner/`` left behind). Reads
    GCS's actor table through ``ray._private.state`` (no public call gives it without the dashboard); where that is
    not there it waits 2 s instead."""
    import ray

    deadline = time.monotonic() + wait_s
    try:
        from ray._private import state

        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        while True:
            table = state.actors(job_id=job) or {}
            live = [a for a in table.values() if _POOL_ACTOR in str(a.get("ActorClassName", ""))
                    and a.get("State") != "DEAD"]
            if not live:
                return True
            if time.monotonic() > deadline:
                log.debug("%d model actor(s) still not ended after %.0f s", len(live), wait_s)
                return False
            time.sleep(0.1)
    except Exception as exc:  # noqa: BLE001 - no actor table in this Ray: wait as long as an actor takes to end
        log.debug("no actor table (%s): waiting 2 s for the model actors to end", exc)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return False


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


def run_job(cfg: JobConfig, *, address: str | None = None, out=sys.stdout, force_lease: bool = False,
            progress: ProgressOptions = ProgressOptions(), quiet: bool = False) -> dict[str, Any]:
    """Run the job to completion; returns the summary (also printed).

    The run holds the output's lease (`job.lease`) from before it touches the output until it ends: a second driver
    on the same output is refused (`JobRefused` naming the holder) unless ``force_lease``. ``progress``: how images
    done are reported on ``out`` (`job.progress`); ``quiet``: Ray's own logs at WARNING (`job.logs`)."""
    from job import lease as jl
    from job.models import resolve_classes

    cfg = resolve_classes(cfg)  # class names from the prompts' classes.yaml unless given
    validate_up_front(cfg)
    cfg = cfg.with_fingerprint()  # contents of prompts and weights, hashed once here; workers get the result
    refused: list[str] = []
    try:  # lists up to the first image only: the listing streams from here on
        empty = next(_input_keys(cfg, refused.append), None) is None
    except (ValueError, jio.StorageError) as exc:
        raise JobRefused(f"cannot list --input {jio.redact(cfg.input)}: {storage_problem(exc)}") from exc
    if empty and not refused:
        raise JobRefused(f"no images under {cfg.input} (looked for {', '.join(IMAGE_EXTS)})")
    out_storage = jio.open_storage(cfg.output)[0]
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    try:
        lease = jl.acquire(out_storage, run_id, force=force_lease)
    except (jl.LeaseHeld, jio.StorageError) as exc:
        raise JobRefused(_one_line(exc)) from exc
    try:
        with Progress(out=out, options=progress) as bar:
            return _run_leased(cfg, out_storage, run_id, address=address, out=out, bar=bar, quiet=quiet)
    finally:
        lease.release()


def _todo_pages(cfg: JobConfig, out_storage: jio.Storage, counts: Any, extra: list[dict[str, Any]],
                windowed: list[str], out, bar: Progress) -> Any:
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
            from job.raster.route import split_windowed  # TIFFs are sized here; other images by the decode step (WINDOWED)

            page, big = split_windowed(cfg, page)
            windowed.extend(big)
        if page:
            yield page
    extra.extend(_refused_rows(refused, cfg) + clashes)
    if extra:
        jm.write_part(out_storage, extra)
    bar.set_total(counts.todo)
    print(f"finedetail: {counts.listed} inputs, {counts.done} already done (config {cfg.config_hash}), "
          f"{counts.todo} to run" + (f" (listing stopped at --limit {cfg.limit})" if counts.cut else ""),
          file=out, flush=True)


def _run_leased(cfg: JobConfig, out_storage: jio.Storage, run_id: str, *, address: str | None, out,
                bar: Progress, quiet: bool) -> dict[str, Any]:
    """`run_job` from the point where the run holds the output's lease."""
    import itertools

    import ray

    from job.compact import compact
    from job.listing import PAGE_KEYS, KeyFeed, ListingCounts

    from job.runrecord import write_run_record

    _remove_leftovers(out_storage)
    write_run_record(out_storage, cfg, run_id)  # run.json + config.yaml: what this run is, next to its outputs
    # the parts a killed run left: into the sorted shards the done set streams from. A run killed while it compacted
    # leaves its rows in both old parts and new shards: then this run's end merges every generation (full)
    leftover = compact(out_storage)
    t0 = time.perf_counter()
    counts, extra, windowed = ListingCounts(), [], []
    tally = jm.Tally()
    todo_pages = _todo_pages(cfg, out_storage, counts, extra, windowed, out, bar)
    bar.start(None)  # the total is known when the listing ends (`_todo_pages` sets it)
    first = list(itertools.islice(todo_pages, 1))  # no Ray, no pools when everything is done
    if first or windowed:
        local = _ensure_ray(address, quiet=quiet)
        plan = plan_resources(cfg, ray.cluster_resources())
        if cfg.resources.gpu == "auto" and not plan.use_gpu:  # only news where an autoscaler could add GPUs
            (log.info if local else log.warning)(
                "no GPU in the cluster now: model stages run on CPU. On an autoscaling cluster whose GPU workers "
                "start at zero, pass --gpu on so the autoscaler adds GPU nodes.")
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
                        bar.add(row)
            if feed.error is not None:
                raise feed.error
        except Exception as exc:
            del ds
            _release_pools()
            failed = _job_failed(exc, tally.ok, counts.todo)
            if failed is None:
                raise
            try:
                _await_pools_gone()  # ray.kill ends actors asynchronously: none may note a build after the clear
                attempts.clear()
            except jio.StorageError:
                pass  # the storage is what failed; the next run clears the notes
            raise failed from exc
        finally:
            feed.close()
        _await_pools_gone()
        attempts.clear()
    else:
        list(todo_pages)  # the listing's end: its error rows and counts
    for row in extra:
        tally.add(row)
    if windowed:
        from job.raster.driver import run_windowed

        windowed.sort()  # input order
        try:
            for row in run_windowed(cfg, windowed, plan):
                tally.add(row)
                bar.add(row)
        except Exception as exc:
            _release_pools()
            failed = _job_failed(exc, tally.ok, counts.todo)
            if failed is None:
                raise
            raise failed from exc
    if cfg.coco:
        from job.coco import write_dataset_coco

        write_dataset_coco(cfg)
    packed = compact(out_storage, full=leftover.parts > 0)  # one row per key, sorted: the next run's done set
    if packed.shards:
        print(f"finedetail: manifest compacted: {packed.rows_read} rows ({packed.parts} new parts) -> {packed.rows} "
              f"keys in {packed.shards} shard(s), {packed.seconds:.1f} s", file=out, flush=True)
    bar.close()  # the summary comes after the bar's last line
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
