"""Ray Data stages: thin callables whose ``__call__`` only moves arrays in and out of rows and delegates to
``finedetail``. Model stages load their models once per actor in ``__init__``. Resources are declared where
``map_batches`` is called (``job.run``).

Row columns (every batch has all of them; absent arrays are empty bytes, see ``job.rows``):
  key (str), status ("ok" | "error"), error (str), attempts (int)
  image        packed (H, W, 3) uint8, original (displayed) orientation
  coarse       packed (V, C, H, W) uint8: the coarse map of each TTA view, original frame (V = views in order)
  map_<name>   packed (C, H, W) uint8 per variant, and map_crop
  prob, mask   packed (C, H, W) uint8 after fusion (mask is 0/1)
  passes_coarse, passes_refiner, components (int), seconds_<stage> (float)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import traceback
from typing import Any, Callable

import numpy as np

from finedetail import pipeline as fp
from finedetail.codecs import decode_image
from finedetail.types import from_u8, to_u8
from job import io as jio
from job.config import JobConfig
from job.manifest import STAGES
from job.rows import column, pack, unpack

log = logging.getLogger("finedetail.job")

__all__ = ["AttemptLog", "CoarseStage", "CropStage", "FuseStage", "VariantStage", "read_decode", "write_outputs"]


def _error_text(exc: BaseException) -> str:
    return jio.redact(f"{type(exc).__name__}: {exc}")


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["key"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> columns. Every row gets every column: an array column a row lacks (an error row skipped by a stage)
    is empty bytes, so all batches of a stage share one schema."""
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
        if n <= 0:
            jio.delete(self.storage, marker)
        else:
            jio.write_bytes_atomic(self.storage, marker, str(n).encode())

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
        _test_crash(stage, rows)
        run(rows)
        return
    batch_marker = attempts.marker(stage, "batch", [str(r["key"]) for r in rows])
    died = attempts.count(batch_marker)
    attempts.set(batch_marker, died + 1)
    if died == 0:
        _test_crash(stage, rows)
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
            _test_crash(stage, [r])
            run([r])
            attempts.set(row_marker, tries - 1)  # survived: this try was not a death
            r["attempts"] = max(int(r.get("attempts", 1)), tries + 1)
    attempts.set(batch_marker, 0)


_CRASH_ENV = "FINEDETAIL_TEST_CRASH"
_CRASH_DIR_ENV = "FINEDETAIL_TEST_CRASH_DIR"
TEST_ENV_VARS = (_CRASH_ENV, _CRASH_DIR_ENV)


def _test_crash(stage: str, rows: list[dict[str, Any]]) -> None:
    """TEST HOOK: kill this worker process (``os._exit``) when it is about to process a chosen key.

    ``FINEDETAIL_TEST_CRASH`` is a JSON list of ``{"key": KEY, "stage": STAGE, "times": N}`` (STAGE as in the
    ``_attempts`` notes: decode, coarse, refine-<variant>, crop, fuse, write; a prefix matches, so "refine" is any
    variant; ``times`` -1 = every time); ``FINEDETAIL_TEST_CRASH_DIR`` is a folder where each crash leaves a file,
    so a key crashes ``times`` times in all across restarted workers. ``job.run`` forwards both variables to the
    workers through the stages' runtime_env. Unset (always, outside tests), this costs one dict lookup.
    """
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return
    folder = os.environ.get(_CRASH_DIR_ENV) or "."
    keys = {str(r["key"]) for r in rows}
    for item in json.loads(spec):
        if item["key"] not in keys or not stage.startswith(item["stage"]):
            continue
        times = int(item.get("times", 1))
        tag = hashlib.sha256(f"{item['stage']}\n{item['key']}".encode()).hexdigest()[:16]
        done = sum(1 for n in os.listdir(folder) if n.startswith(tag)) if os.path.isdir(folder) else 0
        if times < 0 or done < times:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{tag}-{done}"), "w") as f:
                f.write(f"{stage} {item['key']}\n")
            os._exit(70)


#: status of an image row the image path hands to the raster-window path (``job.geo``): its header says it has more
#: than ``JobConfig.window_pixels`` pixels. Such a row is never decoded, skipped by every stage like an error row,
#: gets no manifest row from ``write_outputs`` (the window path writes the input's row) and is returned to the
#: driver, which runs it through ``job.geo.run_windowed``.
WINDOWED = "windowed"


def _window_or_refuse(row: dict[str, Any], data: bytes, cfg: JobConfig) -> bool:
    """True (and the row marked) when the image is too large for one row: ``WINDOWED``, or an error row saying
    what to install when the window path's extra is missing. Header only: no pixel is decoded."""
    from finedetail.codecs import image_pixels

    n = image_pixels(data, max_pixels=cfg.max_pixels)
    if n <= cfg.window_pixels:
        return False
    from job.geo import GEO_EXTRA, require_rasterio

    try:
        require_rasterio()
        row["status"] = WINDOWED
    except ImportError:
        row["status"] = "error"
        row["error"] = (f"image has {n} pixels, more than window_pixels={cfg.window_pixels}: images that large are "
                        f"processed window by window, which needs the 'geo' extra ({GEO_EXTRA}); or raise "
                        "window_pixels (memory then grows with the image)")
    return True


def read_decode(batch: dict[str, np.ndarray], *, cfg: JobConfig, views: int,
                attempts: AttemptLog | None = None) -> dict[str, np.ndarray]:
    """CPU task: read each key (retries inside job.io), decode to RGB uint8 (EXIF applied), and read the coarse
    mask made elsewhere when ``--coarse`` is given. Any failure becomes an error row; the batch goes on. An image
    whose header has more than ``window_pixels`` pixels is not decoded: its row becomes ``WINDOWED``. With
    ``attempts``, an input that kills the worker (a decoder crash, an OOM kill) ends as an error row after
    ``attempts.max_tries`` tries instead of being retried for ever."""
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
                row["image"] = pack(image)
                if coarse_storage is not None:
                    data = jio.read_bytes(coarse_storage, jio.mask_key(key))
                    maps = coarse_from_mask_bytes(data, image.shape[:2], len(cfg.classes))
                    row["coarse"] = pack(np.repeat(to_u8(maps)[None], views, axis=0))
            except Exception as exc:  # a bad input is an error row, never a crashed job
                row["status"], row["error"], row["image"], row["coarse"] = "error", _error_text(exc), b"", b""
            row["seconds_decode"] = time.perf_counter() - t0

    out = [_empty_row(str(key)) for key in batch["key"]]
    _guarded(out, attempts, "decode", run)
    return _batch(out)


def _empty_row(key: str) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "status": "ok", "error": "", "attempts": 1, "image": b"", "coarse": b"",
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


class _ModelStage:
    """Shared row handling: decode arrays of ok rows, call ``self._work(rows)``, turn exceptions into error rows.

    ``self.attempts`` (an `AttemptLog`, set by the subclasses' ``__init__``; None = no accounting) bounds the tries
    of an input that kills the actor (see "worker deaths" above)."""

    stage = ""
    attempts: AttemptLog | None = None

    @property
    def stage_id(self) -> str:
        """This pool's name in the ``_attempts`` notes (one per ``map_batches``)."""
        return self.stage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        live = [r for r in rows if r["status"] == "ok"]
        if live:
            t0 = time.perf_counter()
            _guarded(live, self.attempts, self.stage_id, self._run)
            share = (time.perf_counter() - t0) / len(live)
            for r in live:
                r[f"seconds_{self.stage}"] = r.get(f"seconds_{self.stage}", 0.0) + share
        return _batch(rows)

    def _run(self, live: list[dict[str, Any]]) -> None:
        try:
            self._work(live)
        except Exception:  # the batch failed as a whole: retry image by image to isolate the culprit
            if len(live) > 1:
                log.warning("stage %s: batch failed, retrying image by image:\n%s", self.stage,
                            jio.redact(traceback.format_exc()))
            for r in live:
                try:
                    self._work([r])
                except Exception as exc:
                    r["status"], r["error"] = "error", f"{self.stage}: {_error_text(exc)}"

    def _work(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class CoarseStage(_ModelStage):
    """GPU actor: the in-context segmenter on every TTA view of each image (one batched predict call)."""

    stage = "coarse"

    def __init__(self, cfg: JobConfig, attempts: AttemptLog | None = None):
        from job.models import build_coarse, load_prompts

        _set_threads(cfg)
        self.cfg, self.attempts = cfg, attempts
        self.model = build_coarse(cfg, load_prompts(cfg.prompts, classes=cfg.classes))

    def _work(self, rows):
        images = [unpack(r["image"]) for r in rows]
        views, stats = fp.coarse_variants(images, self.model, self.cfg.pipeline)
        names = fp.tta_views(self.cfg.pipeline)
        for r, v, s in zip(rows, views, stats):
            r["coarse"] = pack(np.stack([to_u8(v[n]) for n in names]))
            r["passes_coarse"] += s.coarse_passes


def _coarse_views(row: dict[str, Any], cfg: JobConfig) -> dict[str, np.ndarray]:
    packed = unpack(row["coarse"])
    return {n: from_u8(packed[i]) for i, n in enumerate(fp.tta_views(cfg.pipeline))}


class VariantStage(_ModelStage):
    """GPU actor: the refiner half of the hybrid for ONE variant (a scale or a TTA view) of each image."""

    stage = "refine"

    def __init__(self, cfg: JobConfig, variant: str, attempts: AttemptLog | None = None, *, refiner: Any = None):
        from job.models import build_refiner

        _set_threads(cfg)
        self.cfg, self.variant, self.attempts = cfg, variant, attempts
        if not cfg.pipeline.refine.enabled:
            refiner = None
        elif refiner is None:
            refiner = build_refiner(cfg)
        self.refiner = refiner

    @property
    def stage_id(self) -> str:
        return f"{self.stage}-{self.variant}"

    def _work(self, rows):
        variant = next(v for v in fp.variants(self.cfg.pipeline) if v.name == self.variant)
        if self.refiner is None:  # refinement off: the variant's map is its view's coarse map
            for r in rows:
                views = _coarse_views(r, self.cfg)
                r[f"map_{self.variant}"] = pack(to_u8(views.get(variant.tta, views["identity"])))
            return
        todo, refs = [], []
        for r in rows:
            done = _done_variant_maps(r, self.cfg)
            if fp.skip_variant(variant, done, self.cfg.pipeline):
                r[f"map_{self.variant}"] = b""  # selective compute: the views already run agree
                continue
            todo.append(r)
            refs.append(fp.reference_for(variant, done, self.cfg.pipeline))
        if not todo:
            return
        images = [unpack(r["image"]) for r in todo]
        coarse = [_coarse_views(r, self.cfg) for r in todo]
        maps, stats = fp.refine_variants_batch(images, coarse, self.refiner, self.cfg.pipeline,
                                               only=[self.variant], reference=refs)
        for r, m, s in zip(todo, maps, stats):
            r[f"map_{self.variant}"] = pack(to_u8(m[self.variant]))
            r["passes_refiner"] += s.refiner_passes
            r["components"] += s.components


def _done_variant_maps(row: dict[str, Any], cfg: JobConfig) -> dict[str, np.ndarray]:
    """Variant maps already in the row (earlier stages), by variant name; skipped variants are absent."""
    out = {}
    for v in fp.variants(cfg.pipeline):
        packed = row.get(f"map_{v.name}", b"")
        if packed is not None and len(packed):
            out[v.name] = from_u8(unpack(packed))
    return out


def _variant_maps(row: dict[str, Any], cfg: JobConfig) -> list[np.ndarray]:
    return list(_done_variant_maps(row, cfg).values())


class CropStage(_ModelStage):
    """GPU actor: high-resolution crop refinement on the objects of the variants' provisional ensemble."""

    stage = "crop"

    def __init__(self, cfg: JobConfig, attempts: AttemptLog | None = None, *, refiner: Any = None):
        from job.models import build_refiner

        _set_threads(cfg)
        self.cfg, self.attempts = cfg, attempts
        self.refiner = build_refiner(cfg) if refiner is None else refiner

    def _work(self, rows):
        for r in rows:
            image = unpack(r["image"])
            prov = fp.provisional(_variant_maps(r, self.cfg), self.cfg.pipeline)
            crop_map, s = fp.refine_crops(image, prov, self.refiner, self.cfg.pipeline)
            r["map_crop"] = pack(to_u8(crop_map))
            r["passes_refiner"] += s.refiner_passes


class FuseStage(_ModelStage):
    """CPU actor: ensemble of every map + guided filter + morphology (+ CRF)."""

    stage = "fuse"

    def __init__(self, cfg: JobConfig, attempts: AttemptLog | None = None):
        self.cfg, self.attempts = cfg, attempts

    def _work(self, rows):
        pc = self.cfg.pipeline
        for r in rows:
            image = unpack(r["image"])
            maps = _variant_maps(r, self.cfg)
            weights = [1.0] * len(maps)
            if pc.crop.enabled:
                maps.append(from_u8(unpack(r["map_crop"])))
                weights.append(pc.crop.weight)
            prob, mask = fp.fuse(image, maps, pc, weights=weights)
            r["prob"], r["mask"] = pack(to_u8(prob)), pack(mask.astype(np.uint8))


class ChainStage:
    """One actor running every model stage of a row in order, then the fuse step (``Resources.chain``).

    The same stage objects as the one-pool-per-stage shape, called one after the other on the batch, so every row
    gets exactly the same maps, pass counts, per-stage seconds, error rows and attempt accounting; the refiner is
    built once and shared by the variant and crop stages (one copy of SAM per actor instead of one per pool)."""

    def __init__(self, cfg: JobConfig, attempts: AttemptLog | None = None):
        from job.models import build_refiner

        pc = cfg.pipeline
        refiner = build_refiner(cfg) if (pc.refine.enabled or pc.crop.enabled) else None
        self.stages: list[_ModelStage] = [CoarseStage(cfg, attempts)] if cfg.coarse is None else []
        self.stages += [VariantStage(cfg, v.name, attempts, refiner=refiner) for v in fp.variants(pc)]
        if pc.crop.enabled:
            self.stages.append(CropStage(cfg, attempts, refiner=refiner))
        self.stages.append(FuseStage(cfg, attempts))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for stage in self.stages:
            batch = stage(batch)
        return batch


def write_outputs(batch: dict[str, np.ndarray], *, cfg: JobConfig, config_hash: str,
                  attempts: AttemptLog | None = None) -> dict[str, np.ndarray]:
    """CPU task: write each row's files atomically, then one manifest part for the batch (last), and return the
    manifest rows only (the big columns stop here). A `jio.StorageError` (a write still failing after its retries)
    fails the task and so the job: the batch's manifest part is then never written, so no row claims outputs
    that are not all there. ``WINDOWED`` rows are returned with that status but not written to the manifest."""
    from finedetail.outputs import render_outputs
    from job.manifest import write_part

    storage = jio.open_storage(cfg.output)[0]
    rows = _rows(batch)

    def run(todo: list[dict[str, Any]]) -> None:
        for r in todo:
            t0 = time.perf_counter()
            try:
                image = unpack(r["image"])
                prob, mask = unpack(r["prob"]), unpack(r["mask"]).astype(bool)
                files = render_outputs(image, from_u8(prob), mask, classes=cfg.classes, overlays=cfg.overlays,
                                       coco=cfg.coco, file_name=str(r["key"]), info={"config_hash": config_hash})
                for (folder, suffix), data in files.items():
                    jio.write_bytes_atomic(storage, jio.output_key(folder, str(r["key"]), suffix=suffix), data)
                r["_written"] = (int(image.shape[0]), int(image.shape[1]), int(mask.sum()))
            except jio.StorageError:
                raise  # a write that keeps failing fails the job: never a manifest row claiming success
            except Exception as exc:
                r["status"], r["error"] = "error", f"write: {_error_text(exc)}"
            r["seconds_write"] = time.perf_counter() - t0

    _guarded([r for r in rows if r["status"] == "ok"], attempts, "write", run)
    manifest = []
    for r in rows:
        m = {k: r.get(k) for k in ("key", "status", "error", "attempts")}
        m.update(height=None, width=None, mask_area=None, components=int(r.get("components", 0)))
        if r["status"] == "ok":
            h, w, area = r["_written"]
            m.update(height=h, width=w, mask_area=area)
        passes_c, passes_r = int(r.get("passes_coarse", 0)), int(r.get("passes_refiner", 0))
        m.update(coarse_passes=passes_c, refiner_passes=passes_r, encoder_passes=passes_c + passes_r,
                 config_hash=config_hash, finished_at=time.time())
        for s in STAGES:
            m[f"seconds_{s}"] = float(r.get(f"seconds_{s}", 0.0))
        manifest.append(m)
    done = [m for m in manifest if m["status"] != WINDOWED]
    if done:
        write_part(storage, done)
    return _batch(manifest)
