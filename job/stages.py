"""Ray Data stages: thin callables that move per-image states in and out of rows (schema: ``job.rows``).

``read_decode`` makes each row's state from its input, ``PlanStage`` runs steps of the plan (``finedetail.plan``) on
the states through the one executor ``run_image`` also uses (``finedetail.execute.run_steps``), ``write_outputs``
runs the CPU steps left to it (the fuse step) through that executor too and writes what the state holds. ``PlanStage`` loads its models once per actor in ``__init__``. Resources are declared
where ``map_batches`` is called (``job.run``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
import traceback
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from finedetail.codecs import decode_image
from finedetail.execute import Models, run_steps
from finedetail.plan import Step, build_plan
from finedetail.state import ImageState
from job import io as jio
from job.config import JobConfig
from job.manifest import STAGES
from job.rows import column, new_state, read_state

log = logging.getLogger("finedetail.job")

__all__ = ["AttemptLog", "ModelInitError", "PlanStage", "build_bounded", "read_decode", "write_outputs"]

T = TypeVar("T")


def _error_text(exc: BaseException) -> str:
    return jio.redact(f"{type(exc).__name__}: {exc}")


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["key"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> columns (every row has every column of the ``job.rows`` schema)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: column([r.get(k, b"") for r in rows]) for k in keys}


# --------------------------------------------------------------------------- worker deaths
#
# Ray restarts a dead actor and re-sends the batch it was working on (a dead task's worker likewise): right for a
# preempted node or a one-off OOM, an endless loop for an input that kills every worker it reaches (a decoder or
# model crash, an out-of-memory image). So every stage notes in the OUTPUT storage, BEFORE it starts, that it is
# about to try a batch; a batch that finds its own note is a batch a worker died on. That batch is then run one row
# at a time, each row again noted before it starts and un-noted when it survives, so the culprit is the only row
# whose count keeps growing; a row whose worker died ``max_tries`` times (the death in the batch counts as one) is
# turned into an error row without being run again. The notes live under ``_attempts/<run id>/`` (one run's notes
# never count against a later run: a killed driver is not a crash of the input) and are removed as they stop
# mattering and at the end of the run. Ray's own retry limits are set unbounded in ``job.run`` so that this
# accounting, not Ray, decides when to give up.
#
# The same unbounded restarts would rebuild a model that cannot be built (a corrupt checkpoint, a GPU without room
# for it) for ever, so each actor also counts its own constructor attempts (``build_bounded``): a note per actor
# (Ray keeps an actor's id across restarts) written before the model is built and removed once it is. A raising
# constructor is retried in place; after ``max_tries`` failed attempts, whether the constructor raised or its
# process died, the actor stays up but broken: its first batch raises `ModelInitError` with the constructor's
# error, which fails the job (`JobFailed`).

ATTEMPTS_PREFIX = "_attempts"


@dataclasses.dataclass(frozen=True)
class AttemptLog:
    """Where one run counts the tries of its batches and rows: ``<output>/_attempts/<run_id>/<stage>/...``.

    ``max_tries``: an input is tried at most this many times by workers that die on it (>= 1). Picklable; the
    storage's connection is made lazily in each process.
    """

    output: str
    run_id: str
    max_tries: int

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries=}")
        if not self.run_id or "/" in self.run_id:
            raise ValueError(f"run_id must be a non-empty name without '/', got {self.run_id=}")

    @property
    def storage(self) -> jio.Storage:
        st = self.__dict__.get("_storage")
        if st is None:
            st = jio.open_storage(self.output)[0]
            object.__setattr__(self, "_storage", st)
        return st

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_storage"}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def marker(self, stage: str, kind: str, keys: list[str]) -> str:
        digest = hashlib.sha256("\n".join(sorted(keys)).encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{ATTEMPTS_PREFIX}/{self.run_id}/{stage}/{kind}-{digest}"

    def count(self, marker: str) -> int:
        try:
            return int(jio.read_bytes(self.storage, marker) or 0)
        except jio.ObjectNotFoundError:
            return 0

    def set(self, marker: str, n: int) -> None:
        """Note ``n`` (``n <= 0`` removes the note, and on a local output the folders it leaves empty: an actor that
        builds its model after the run's last clear, which Ray may still start as a dataset ends, leaves nothing)."""
        if n <= 0:
            jio.delete(self.storage, marker)
            if self.storage.kind == "local":
                top = os.path.join(self.storage.root, ATTEMPTS_PREFIX)
                folder = os.path.dirname(self.storage.path(marker))
                while folder.startswith(top):
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break  # not empty: other notes
                    folder = os.path.dirname(folder)
            return
        for attempt in range(3):
            try:
                jio.write_bytes_atomic(self.storage, marker, str(n).encode())
                return
            except FileNotFoundError:  # another actor removed the empty folder between its creation and our write
                if attempt == 2:
                    raise

    def clear(self) -> int:
        """Remove every note of this run (at its end); returns how many there were."""
        return clear_attempt_notes(self.storage, self.run_id)


def clear_attempt_notes(storage: jio.Storage, run_id: str | None = None) -> int:
    """Delete the ``_attempts`` notes of one run (all runs when ``run_id`` is None); returns how many."""
    prefix = ATTEMPTS_PREFIX if run_id is None else f"{ATTEMPTS_PREFIX}/{run_id}"
    keys = jio.list_files(storage, prefix, extensions=None)
    for k in keys:
        jio.delete(storage, f"{prefix}/{k}")
    if storage.kind == "local":  # local folders outlive their files; S3 has no folders
        top = os.path.join(storage.root, ATTEMPTS_PREFIX)
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass  # not empty: another run's notes
    return len(keys)


def _guarded(rows: list[dict[str, Any]], attempts: AttemptLog | None, stage: str,
             run: Callable[[list[dict[str, Any]]], None]) -> None:
    """``run(rows)`` (which turns ordinary exceptions into error rows itself) so that a row that keeps killing its
    worker ends as an error row after ``attempts.max_tries`` tries, and the other rows of its batch still run."""
    if not rows:
        return
    if attempts is None:
        run(rows)
        return
    batch_marker = attempts.marker(stage, "batch", [str(r["key"]) for r in rows])
    died = attempts.count(batch_marker)
    attempts.set(batch_marker, died + 1)
    if died == 0:
        run(rows)
    else:
        # a worker died on this batch before: one row at a time, so the culprit alone pays
        log.warning("stage %s: a worker died on this batch %d time(s); running its %d rows one by one",
                    stage, died, len(rows))
        bound = 1 + len(rows) * attempts.max_tries  # more batch deaths than row deaths can explain: give up
        for r in rows:
            row_marker = attempts.marker(stage, "row", [str(r["key"])])
            tries = 1 + attempts.count(row_marker)  # the death in the batch + deaths on this row alone
            if tries >= attempts.max_tries or died >= bound:
                r["status"] = "error"
                r["error"] = (f"{stage}: worker died {tries} time(s) while processing this input ({tries - 1} on "
                              f"it alone, 1 in a batch of {len(rows)} with it; max_tries={attempts.max_tries}); "
                              "not tried again. The input may crash the decoder or model, or need more memory than "
                              "a worker has")
                r["attempts"] = tries
                continue
            attempts.set(row_marker, tries)
            run([r])
            attempts.set(row_marker, tries - 1)  # survived: this try was not a death
            r["attempts"] = max(int(r.get("attempts", 1)), tries + 1)
    attempts.set(batch_marker, 0)


class ModelInitError(RuntimeError):
    """A model stage's actor could not build its model ``max_tries`` times in a row. Raised by the actor's
    ``__call__``; the message is one redacted line naming the stage and the constructor's error."""


def _actor_id() -> str | None:
    """This Ray actor's id (kept across its restarts), or None outside an actor."""
    try:
        import ray

        return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - no runtime context: not in an actor
        return None


def build_bounded(attempts: AttemptLog | None, stage: str, build: Callable[[], T]) -> tuple[T | None, str | None]:
    """``(build(), None)``, or ``(None, error)`` once this actor has failed to build ``attempts.max_tries`` times.

    A constructor that raises is retried here, in the same process, after a short pause (a network blip while
    fetching weights, memory still held by a dying neighbour): Ray would not restart an actor whose constructor
    raised, and Ray Data would fail the job on the first such death with a raw traceback. A process that dies
    while building (no Python error to catch) is restarted by Ray; the note counts those attempts too. Outside an
    actor, or without ``attempts``, it is plain ``build()``. ``error`` is one redacted line for `ModelInitError`.
    """
    actor = _actor_id()
    if attempts is None or actor is None:
        return build(), None
    marker = attempts.marker(f"init-{stage}", "actor", [actor])
    tried = attempts.count(marker)  # earlier attempts of this actor that did not finish building
    why = "the process died with no Python error (killed for lack of memory? a crash in native code?)"
    while tried < attempts.max_tries:
        if tried:
            time.sleep(min(5.0, 0.5 * 2 ** (tried - 1)))
        attempts.set(marker, tried + 1)  # stays if the process dies in build()
        try:
            model = build()
        except Exception as exc:
            tried += 1
            why = (_error_text(exc).strip().splitlines() or [""])[0]
            log.warning("%s: building the model failed (attempt %d of %d): %s", stage, tried, attempts.max_tries,
                        why)
            continue
        attempts.set(marker, 0)
        return model, None
    return None, (f"{stage}: cannot build the model ({why}); {tried} failed attempt(s), max_tries="
                  f"{attempts.max_tries}. Fix the cause and re-run the same command")


#: status of an image row the image path hands to the raster-window path (``job.raster``): its header says it has more
#: than ``JobConfig.window_pixels`` pixels. Such a row is never decoded, skipped by every stage like an error row,
#: gets no manifest row from ``write_outputs`` (the window path writes the input's row) and is returned to the
#: driver, which runs it through ``job.raster.driver.run_windowed``.
WINDOWED = "windowed"


def _window_or_refuse(row: dict[str, Any], data: bytes, cfg: JobConfig) -> bool:
    """True (and the row marked) when the image is too large for one row: ``WINDOWED``, or an error row saying
    what to install when the window path's extra is missing. Header only: no pixel is decoded."""
    from finedetail.codecs import image_pixels

    n = image_pixels(data, max_pixels=cfg.max_pixels)
    if n <= cfg.window_pixels:
        return False
    from job.raster import GEO_EXTRA, require_rasterio

    try:
        require_rasterio()
        row["status"] = WINDOWED
    except ImportError:
        row["status"] = "error"
        row["error"] = (f"image has {n} pixels, more than window_pixels={cfg.window_pixels}: images that large are "
                        f"processed window by window, which needs the 'geo' extra ({GEO_EXTRA}); or raise "
                        "window_pixels (memory then grows with the image)")
    return True


def read_decode(batch: dict[str, np.ndarray], *, cfg: JobConfig,
                attempts: AttemptLog | None = None) -> dict[str, np.ndarray]:
    """CPU task: read each key (retries inside job.io), decode to RGB uint8 (EXIF applied), and read the coarse
    mask made elsewhere when ``--coarse`` is given, into the row's state. Any failure becomes an error row; the batch
    goes on. An image whose header has more than ``window_pixels`` pixels is not decoded: its row becomes
    ``WINDOWED``. With ``attempts``, an input that kills the worker (a decoder crash, an OOM kill) ends as an error
    row after ``attempts.max_tries`` tries instead of being retried for ever."""
    from job.models import coarse_from_mask_bytes

    storage = jio.open_storage(cfg.input)[0]
    coarse_storage = jio.open_storage(cfg.coarse)[0] if cfg.coarse else None

    def run(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            t0 = time.perf_counter()
            key = row["key"]
            try:
                data = jio.read_bytes(storage, key)
                if _window_or_refuse(row, data, cfg):
                    continue
                image = decode_image(data, max_pixels=cfg.max_pixels)
                del data
                coarse = None
                if coarse_storage is not None:
                    data = jio.read_bytes(coarse_storage, jio.mask_key(key))
                    coarse = coarse_from_mask_bytes(data, image.shape[:2], len(cfg.classes))
                row["state"] = new_state(image, coarse)
            except Exception as exc:  # a bad input is an error row, never a crashed job
                row["status"], row["error"], row["state"] = "error", _error_text(exc), b""
            row["seconds_decode"] = time.perf_counter() - t0

    out = [_empty_row(str(key)) for key in batch["key"]]
    _guarded(out, attempts, "decode", run)
    return _batch(out)


def _empty_row(key: str) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "status": "ok", "error": "", "attempts": 1, "state": b"",
                           "passes_coarse": 0, "passes_refiner": 0, "components": 0}
    for s in STAGES:
        row[f"seconds_{s}"] = 0.0
    return row


def _set_threads(cfg: JobConfig) -> None:
    import os

    n = os.environ.get("FINEDETAIL_TORCH_THREADS")
    if n:
        try:
            import torch

            torch.set_num_threads(int(n))
        except ImportError:
            pass


class PlanStage:
    """Ray actor running steps of the plan on the states of a batch's ok rows.

    ``steps``: the names of the steps it runs, in plan order (an operator of ``job.operators.operators``; None =
    every step). They run by the plan's groups (``Plan.groups``: consecutive refine steps that read none of each
    other's outputs in one batched call), each group through ``finedetail.execute.run_steps`` under its own attempt
    accounting (``_guarded``; its name in the ``_attempts`` notes: coarse, refine-<variant>, refine-scale1+hflip for
    a group of several, crop); a group that fails for a batch is run again image by image, and an image it still
    fails on becomes an error row ("<stage>: <error>"). The actor builds only the models its steps need, once, each through
    ``build_bounded`` (named after the step when it runs one, else after the model: "coarse", or "refiner", one
    refiner shared by its refine and crop steps); a model that cannot be built makes every batch raise
    `ModelInitError`. States are decoded once per batch and encoded once after its last group.

    Seconds per image (``seconds_<stage>``): each row gets its own time in the step (its ``Stats.seconds[stage]``:
    work done for that image alone plus its share of a model call batched over several images, split by what the
    call did for it); the rest of the step's wall time over the batch (decoding and encoding states, a failed batch
    attempt) is split equally, so the column sums to the wall time."""

    def __init__(self, cfg: JobConfig, steps: Sequence[str] | None = None, attempts: AttemptLog | None = None):
        from job.models import build_coarse, build_refiner, load_prompts

        _set_threads(cfg)
        plan = build_plan(cfg.pipeline, coarse_given=cfg.coarse is not None)
        self.cfg, self.attempts = cfg, attempts
        self.steps = list(plan.steps) if steps is None else [plan.step(n) for n in steps]
        names = {s.name for s in self.steps}
        # consecutive refine steps that read none of each other's outputs run as one call (Plan.groups)
        self.groups = [g for g in (tuple(s for s in group if s.name in names) for group in plan.groups()) if g]
        self.models, self.init_error = Models(), None
        builders = {"refiner": lambda: build_refiner(cfg),  # the refiner first: the chained shape as before
                    "coarse": lambda: build_coarse(cfg, load_prompts(cfg.prompts, classes=cfg.classes))}
        for model, build in builders.items():
            if any(s.model == model for s in self.steps) and not self.init_error:
                name = self.steps[0].name if len(self.steps) == 1 else model
                built, self.init_error = build_bounded(attempts, name, build)
                setattr(self.models, model, built)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.init_error:
            raise ModelInitError(self.init_error)
        t0 = time.perf_counter()
        rows = _rows(batch)
        states = {id(r): read_state(r) for r in rows if r["status"] == "ok"}
        for k, group in enumerate(self.groups):
            live = [r for r in rows if r["status"] == "ok"]
            if not live:  # every row failed before this group
                self._finish(rows, states)
                break
            stage = group[0].stage
            before = [states[id(r)].stats.seconds.get(stage, 0.0) for r in live]
            _guarded(live, self.attempts, _group_name(group),
                     lambda todo, group=group: self._run(group, todo, states))
            own = [states[id(r)].stats.seconds.get(stage, 0.0) - b for r, b in zip(live, before)]
            if k == len(self.groups) - 1:  # the last group also pays for encoding the states
                self._finish(rows, states)
            _share_seconds(live, stage, own, time.perf_counter() - t0)
            t0 = time.perf_counter()
        return _batch(rows)

    def _finish(self, rows: list[dict[str, Any]], states: dict[int, ImageState]) -> None:
        for r in rows:
            st = states.get(id(r))
            if st is not None:
                r["state"] = st.to_bytes() if r["status"] == "ok" else b""
                r["passes_coarse"], r["passes_refiner"] = st.stats.coarse_passes, st.stats.refiner_passes
                r["components"] = st.stats.components

    def _run(self, group: tuple[Step, ...], live: list[dict[str, Any]], states: dict[int, ImageState]) -> None:
        try:
            run_steps(group, [states[id(r)] for r in live], self.models, self.cfg.pipeline)
        except Exception:  # the batch failed as a whole: retry image by image to isolate the culprit
            if len(live) > 1:
                log.warning("step %s: batch failed, retrying image by image:\n%s", _group_name(group),
                            jio.redact(traceback.format_exc()))
            for r in live:
                try:
                    run_steps(group, [states[id(r)]], self.models, self.cfg.pipeline)
                except Exception as exc:
                    r["status"], r["error"] = "error", f"{group[0].stage}: {_error_text(exc)}"


def _group_name(group: Sequence[Step]) -> str:
    """A group's name in the ``_attempts`` notes, logs and error rows: its step's name, or for several refine steps
    "refine-" and their variants joined by "+" ("refine-scale1+scale2+hflip")."""
    return group[0].name if len(group) == 1 else "refine-" + "+".join(s.variant.name for s in group)


def _share_seconds(rows: list[dict[str, Any]], stage: str, own: list[float], total: float) -> None:
    """Add to each row's ``seconds_<stage>`` its own seconds plus an equal share of the rest of ``total``."""
    rest = max(0.0, total - sum(own)) / len(rows)
    for r, s in zip(rows, own):
        r[f"seconds_{stage}"] = r.get(f"seconds_{stage}", 0.0) + s + rest


def write_outputs(batch: dict[str, np.ndarray], *, cfg: JobConfig, config_hash: str,
                  attempts: AttemptLog | None = None, steps: Sequence[str] = (), part_tag: int | None = None
                  ) -> dict[str, np.ndarray]:
    """CPU task: run the plan's ``steps`` left to it (the fuse step, ``job.operators.write_steps``) on each row's
    state, write its files atomically, then one manifest part for the batch (last; ``part_tag``: the run's, so a re-run of this task replaces the part), and return the manifest rows
    only (the big columns stop here). A step that fails for a row makes it an error row ("<stage>: <error>"). A
    `jio.StorageError` (a write still failing after its retries) fails the task and so the job: the batch's
    manifest part is then never written, so no row claims outputs that are not all there. ``WINDOWED`` rows are returned with that status but not written to the manifest."""
    from finedetail.outputs import render_outputs
    from job.manifest import mask_columns, write_part

    storage = jio.open_storage(cfg.output)[0]
    rows = _rows(batch)
    plan = build_plan(cfg.pipeline, coarse_given=cfg.coarse is not None)
    todo_steps = [plan.step(n) for n in steps]

    def run(todo: list[dict[str, Any]]) -> None:
        for r in todo:
            t0 = time.perf_counter()
            stage = "write"
            try:
                st = read_state(r)
                for step in todo_steps:  # CPU steps: no model
                    t1, stage = time.perf_counter(), step.stage
                    run_steps([step], [st], Models(), cfg.pipeline)
                    r[f"seconds_{stage}"] = r.get(f"seconds_{stage}", 0.0) + time.perf_counter() - t1
                    t0, stage = t0 + time.perf_counter() - t1, "write"
                image, mask, prob = st.image, st.mask, st.fused_prob()
                files = render_outputs(image, prob, mask, classes=cfg.classes, overlays=cfg.overlays,
                                       coco=cfg.coco, file_name=str(r["key"]), info={"config_hash": config_hash})
                for (folder, suffix), data in files.items():
                    jio.write_bytes_atomic(storage, jio.output_key(folder, str(r["key"]), suffix=suffix), data)
                r["_written"] = dict(height=int(image.shape[0]), width=int(image.shape[1]),
                                     **mask_columns(prob, mask))
            except jio.StorageError:
                raise  # a write that keeps failing fails the job: never a manifest row claiming success
            except Exception as exc:
                r["status"], r["error"] = "error", f"{stage}: {_error_text(exc)}"
            r["seconds_write"] = time.perf_counter() - t0

    _guarded([r for r in rows if r["status"] == "ok"], attempts, "write", run)
    manifest = []
    for r in rows:
        m = {k: r.get(k) for k in ("key", "status", "error", "attempts")}
        m.update(height=None, width=None, mask_area=None, components=int(r.get("components", 0)))
        if r["status"] == "ok":
            m.update(r["_written"])
        passes_c, passes_r = int(r.get("passes_coarse", 0)), int(r.get("passes_refiner", 0))
        m.update(coarse_passes=passes_c, refiner_passes=passes_r, encoder_passes=passes_c + passes_r,
                 config_hash=config_hash, finished_at=time.time())
        for s in STAGES:
            m[f"seconds_{s}"] = float(r.get(f"seconds_{s}", 0.0))
        manifest.append(m)
    done = [m for m in manifest if m["status"] != WINDOWED]
    if done:
        write_part(storage, done, tag=part_tag)  # a re-run of this task (a lost node) replaces the part
    # the per-class lists stay in the manifest: Ray would hand them to the driver as arrays, and it needs none
    return _batch([{k: v for k, v in m.items() if k not in ("class_area", "class_mean_prob")} for m in manifest])
