"""The windowed driver: plans each scene's windows, resumes per window, runs the windows through Ray, stitches.

How a scene flows (``run_windowed``, called by ``job.run.run_job`` with the keys ``job.raster.route`` sent here):

1. **Scene info**, a Ray task per scene (``job.raster.windows.scene_info``).
2. **Window plan** (``scene_windows``): ``finedetail.rasters.plan_windows`` = ``tiling.tile_grid`` with
   ``JobConfig.window`` and ``window_overlap``, anchored at (0, 0). Sizing tip: a window of
   ``k * (1024 - tile_overlap) + tile_overlap`` px is exactly k x k refiner tiles at 1x (1920 = 2 x 2 with the
   default overlap of 128; 2048 needs 3 x 3, 2.25x the refiner work for 7 % more pixels). Resume is per window: a
   window whose latest manifest row (key ``"<scene>#<y0>_<x0>"``) is ``ok`` with this configuration's ``geo_hash``
   and the same window size, and whose probability file exists, is not recomputed.
3. **Windows through the model stages** (``build_window_dataset``): ``read_windows`` -> the SAME plan stages as
   images (``job.run.model_stages``: coarse, one stage per variant, crops, fuse, each post-processing per window)
   -> ``write_windows``, one window per row.
4. **Streaming stitch**, a Ray task per scene started as soon as its last window is written
   (``job.raster.stitch.stitch_scene_and_extras``).
5. **Manifest**: one row per window (``write_windows``) and one per scene (key = the input key, ``config_hash`` =
   the job's, so ``run_job`` skips a finished scene next time; sums of the windows' passes and stage seconds;
   ``seconds_write`` = the stitch). ``run_windowed`` returns the scene rows only (one per input, like images).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import traceback
import uuid
from typing import Any, Sequence

from finedetail.rasters import plan_windows, window_key
from finedetail.tiling import Window
from job.config import JobConfig
from job.io import list_files, open_storage, redact
from job.manifest import STAGES, latest_rows, read_manifest, write_part
from job.raster.stitch import stitch_scene_and_extras
from job.raster import require_rasterio
from job.raster.windows import (WINDOW_DIR, SceneInfo, error_text, read_windows, scene_info, scene_stem, window_item,
                                write_windows)

log = logging.getLogger("finedetail.job")

__all__ = ["build_window_dataset", "geo_hash", "run_windowed", "scene_windows"]


def geo_hash(cfg: JobConfig) -> str:
    """What decides a window's pixels besides its position and size: the job's config hash, the band mapping and the
    stretch percentiles. Window manifest rows carry it; a window is reused only under the same one."""
    blob = json.dumps(["geo-1", cfg.config_hash, list(cfg.bands or ()), list(cfg.stretch)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def scene_windows(cfg: JobConfig, hw: tuple[int, int]) -> list[Window]:
    """The windows of a scene of size ``hw`` (``finedetail.rasters.plan_windows`` with the job's ``window``,
    ``window_overlap`` and ``window_pixels``), row-major. ``run_windowed`` looks this function up at call time:
    tests that audit seams replace it (pytest's monkeypatch) with a grid shifted by ``plan_windows(offset=...)``."""
    return plan_windows(hw, window=cfg.window, overlap=cfg.window_overlap, window_pixels=cfg.window_pixels)


def build_window_dataset(cfg: JobConfig, items: list[dict[str, Any]], plan: Any, *, ghash: str,
                         attempts: Any = None) -> Any:
    """The lazy Ray dataset of window manifest rows: read windows -> the model stages -> write window maps."""
    import ray

    from job.operators import model_stages

    track = {"attempts": attempts}
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # one window per read task: a window is already megabytes, and reads stay as small as one row
    ds = ds.map_batches(read_windows, batch_size=1, num_cpus=plan.io_cpus, batch_format="numpy",
                        fn_kwargs={"cfg": cfg, **track})
    # one window per model call: a window is already as large as a photo (2048 x 2048 px; its refiner tiles are
    # batched through the encoder within it), and a batch of them multiplies the per-pixel float maps an actor
    # holds (measured with python -m job.bench largeimage: see README, large images)
    ds = model_stages(ds, cfg, plan, attempts=attempts, batch_size=1)
    return ds.map_batches(write_windows, batch_size=cfg.resources.batch_size, num_cpus=plan.io_cpus,
                          batch_format="numpy", fn_kwargs={"cfg": cfg, "geo_hash": ghash, **track})


def _scene_row(cfg: JobConfig, key: str, *, status: str, error: str = "", hw: tuple[int, int] | None = None,
               windows: Sequence[dict[str, Any]] = (), stitched: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "status": status, "error": error, "attempts": 1,
                           "height": hw[0] if hw else None, "width": hw[1] if hw else None,
                           "mask_area": stitched["mask_area"] if stitched else None,
                           "components": sum(int(r.get("components") or 0) for r in windows)}
    for name in ("coarse_passes", "refiner_passes", "encoder_passes"):
        row[name] = sum(int(r.get(name) or 0) for r in windows)
    for s in STAGES:
        row[f"seconds_{s}"] = sum(float(r.get(f"seconds_{s}") or 0.0) for r in windows)
    row["seconds_write"] += stitched["seconds"] if stitched else 0.0
    row.update(config_hash=cfg.config_hash, finished_at=time.time())
    return row


def run_windowed(cfg: JobConfig, keys: Sequence[str], plan: Any) -> list[dict[str, Any]]:
    """Run the geo path for ``keys`` (from ``split_windowed``) on the connected Ray cluster; one manifest row per
    scene, in the order of ``keys`` (also written to the manifest). See the module docstring."""
    import ray

    require_rasterio()
    out = open_storage(cfg.output)[0]
    ghash = geo_hash(cfg)
    if out.kind == "local":  # scratch folders of stitches a killed run left behind (one job per output at a time)
        shutil.rmtree(os.path.join(out.root, ".tmp-geo"), ignore_errors=True)
    info_task = ray.remote(scene_info).options(num_cpus=plan.io_cpus)
    stitch_task = ray.remote(stitch_scene_and_extras).options(num_cpus=plan.io_cpus)
    refs = {k: info_task.remote(cfg, k) for k in keys}
    latest = latest_rows(read_manifest(out))

    results: dict[str, dict[str, Any]] = {}
    scenes: dict[str, tuple[SceneInfo, list[Window]]] = {}
    window_rows: dict[str, dict[str, dict[str, Any]]] = {}
    pending: dict[str, set[str]] = {}
    items: list[dict[str, Any]] = []
    for key in keys:
        try:
            info = ray.get(refs[key])
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            results[key] = _scene_row(cfg, key, status="error", error=f"read: {error_text(cause)}")
            continue
        wins = scene_windows(cfg, info.hw)
        scenes[key] = (info, wins)
        have = set(list_files(out, f"{WINDOW_DIR}/{scene_stem(key)}", extensions=(".png",)))
        window_rows[key], pending[key] = {}, set()
        for win in wins:
            wkey, prev = window_key(key, win), latest.get(window_key(key, win))
            if (prev is not None and prev["status"] == "ok" and prev["config_hash"] == ghash
                    and (prev["height"], prev["width"]) == win.hw and f"{win.y0}_{win.x0}.png" in have):
                window_rows[key][wkey] = prev
            else:
                pending[key].add(wkey)
                items.append(window_item(info, win))
        log.info("scene %s: %dx%d, %d windows (%d to compute)", key, info.hw[1], info.hw[0], len(wins),
                 len(pending[key]))

    stitching: dict[Any, str] = {}

    def maybe_stitch(key: str) -> None:
        if pending[key]:
            return
        bad = [r for r in window_rows[key].values() if r["status"] != "ok"]
        info, wins = scenes[key]
        if bad:
            results[key] = _scene_row(cfg, key, status="error", hw=info.hw, windows=list(window_rows[key].values()),
                                      error=f"{len(bad)} of {len(wins)} windows failed, e.g. {bad[0]['key']}: "
                                            f"{bad[0]['error']}")
            return
        stitching[stitch_task.remote(cfg, info, wins)] = key

    for key in scenes:
        maybe_stitch(key)  # every window reused: straight to the stitch
    attempts = None
    if items:
        from job.stages import AttemptLog

        attempts = AttemptLog(output=cfg.output, run_id=f"geo-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
                              max_tries=cfg.max_tries)
        ds = build_window_dataset(cfg, items, plan, ghash=ghash, attempts=attempts)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["key"])):
                r = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
                scene = r["scene"]
                window_rows[scene][r["key"]] = r
                pending[scene].discard(r["key"])
                if not pending[scene]:
                    maybe_stitch(scene)
    if attempts is not None:
        attempts.clear()
    waiting = list(stitching)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        key = stitching[ready[0]]
        info, _ = scenes[key]
        wrows = list(window_rows[key].values())
        try:
            stitched = ray.get(ready[0])
            results[key] = _scene_row(cfg, key, status="ok", hw=info.hw, windows=wrows, stitched=stitched)
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            log.warning("stitching %s failed:\n%s", key, redact(traceback.format_exc()))
            results[key] = _scene_row(cfg, key, status="error", hw=info.hw, windows=wrows,
                                      error=f"stitch: {error_text(cause)}")
        write_part(out, [results[key]])
    for key in keys:  # scenes that failed before stitching
        if key in results and key not in stitching.values():
            write_part(out, [results[key]])
    return [results[k] for k in keys]
