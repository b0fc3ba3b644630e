"""The manifest: one Parquet row per input, written in parts (one part per written batch) under ``manifest/``.

A part is written only after every output file of its rows is in place, so a row in the manifest means its files
are whole. A row's status is one of `STATUSES`: ``ok`` or ``error``. Each write adds a part (its name holds a digest
of its keys and the batch's finish time), so a batch written again (a retry, a later run) adds another part rather
than replacing one; readers never depend on that: resume reads all parts, keeps each key's latest row (by
``finished_at``), and treats a key as done when that row is ``ok`` with the current config hash.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from job import io as jio

__all__ = ["COLUMNS", "SCHEMA", "STAGES", "STATUSES", "Tally", "done_keys", "mask_columns", "read_manifest",
           "write_part"]

STAGES = ("decode", "coarse", "refine", "crop", "fuse", "write")
#: every status a row can have: its files are whole (``ok``), or ``error`` says why there are none
STATUSES = ("ok", "error")
SECONDS_DESCRIPTION = (
    "seconds this input spent in the {stage} stage, per input: the stage's own work on it, plus its share of a "
    "model call batched over several inputs (split by the windows / views the call ran for it), plus an equal "
    "share of the batch's remaining overhead; a raster scene sums its windows' (seconds_write adds the stitch)")
#: every column with its description (also stored as the Parquet field's ``description`` metadata)
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "key": (pa.string(), "the input's path relative to --input (a raster window: '<scene>#<y0>_<x0>')"),
    "status": (pa.string(), "ok or error"),
    "error": (pa.string(), "what went wrong (empty when ok)"),
    "height": (pa.int32(), "input height in pixels (after EXIF rotation)"),
    "width": (pa.int32(), "input width in pixels (after EXIF rotation)"),
    "encoder_passes": (pa.int32(), "coarse_passes + refiner_passes: the method's cost unit"),
    "coarse_passes": (pa.int32(), "SegGPT forwards run for this input: one per (prompt pair, TTA view)"),
    "refiner_passes": (pa.int32(), "SAM image-encoder forwards run for this input (windows, views, crops)"),
    "components": (pa.int32(), "coarse-mask components prompted to the refiner"),
    "mask_area": (pa.int64(), "foreground pixels of the final mask"),
    "empty": (pa.bool_(), "true when the final mask has no foreground pixel: the input was read and run, and nothing "
                          "was found (null on error rows)"),
    "mean_prob": (pa.float64(), "mean fused probability over the final mask's pixels (each pixel's own class), in "
                                "[0, 1]: how sure the found pixels are; null when empty, on error rows and for a "
                                "raster scene run window by window"),
    "class_area": (pa.list_(pa.int64()), "several classes only: foreground pixels per class, in class order"),
    "class_mean_prob": (pa.list_(pa.float64()), "several classes only: mean_prob per class, in class order (null "
                                                "for a class with no pixel)"),
    **{f"seconds_{s}": (pa.float64(), SECONDS_DESCRIPTION.format(stage=s)) for s in STAGES},
    "config_hash": (pa.string(), "hash of everything the outputs depend on (README, Resuming)"),
    "attempts": (pa.int32(), "tries this input took (a worker that died on it counts one)"),
    "finished_at": (pa.float64(), "when the row was written (Unix time, seconds)"),
}
SCHEMA = pa.schema([pa.field(name, dtype, metadata={"description": text})
                    for name, (dtype, text) in COLUMNS.items()])


def mask_columns(prob: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """The manifest's mask columns of one input: ``mask_area``, ``empty``, ``mean_prob`` and, with several classes,
    ``class_area`` and ``class_mean_prob``. prob (C, H, W) float32 in [0, 1]; mask (C, H, W) bool, at most one class
    per pixel (``finedetail.pipeline.fuse``'s), both in the original image frame."""
    area = int(mask.sum())
    out: dict[str, Any] = {"mask_area": area, "empty": area == 0,
                           "mean_prob": float(prob[mask].mean(dtype=np.float64)) if area else None,
                           "class_area": None, "class_mean_prob": None}
    if mask.shape[0] > 1:
        areas = [int(m.sum()) for m in mask]
        out["class_area"] = areas
        out["class_mean_prob"] = [float(p[m].mean(dtype=np.float64)) if a else None
                                  for p, m, a in zip(prob, mask, areas)]
    return out


def write_part(storage: Any, rows: list[dict[str, Any]], *, tag: int | None = None) -> str:
    """Write rows as one new Parquet part, ``manifest/part-<digest of the keys>-<first row's finished_at in ms>``;
    returns its key. Writing the same batch again adds a second part (the later rows win when read). With ``tag``
    (the run's start in ms) instead of the time: the same batch written again in the same run replaces its part
    (Ray re-runs a finished write task whose output was on a lost node: that must not add rows). An ok row without
    ``empty`` (a raster scene's, a window's) gets it from its ``mask_area``."""
    odd = sorted({str(r.get("status")) for r in rows} - set(STATUSES))
    if odd:
        raise ValueError(f"manifest status must be one of {STATUSES}, got {odd[0]!r}")

    def cell(r: dict[str, Any], name: str) -> Any:
        if name == "empty" and r.get("empty") is None and r.get("status") == "ok" and r.get("mask_area") is not None:
            return r["mask_area"] == 0
        return r.get(name)

    table = pa.Table.from_pylist([{f.name: cell(r, f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    digest = hashlib.sha256("\n".join(sorted(r["key"] for r in rows)).encode()).hexdigest()[:20]
    name = f"manifest/part-{digest}-{int(rows[0]['finished_at'] * 1000) if tag is None else int(tag)}.parquet"
    jio.write_bytes_atomic(storage, name, buf.getvalue())
    return name


def read_manifest(storage: Any) -> pa.Table:
    """Every row of every part (possibly several per key across runs); empty table with SCHEMA when none."""
    parts = [k for k in jio.list_files(storage, "manifest", extensions=(".parquet",))]
    tables = []
    for key in parts:
        data = jio.read_bytes(storage, f"manifest/{key}")
        tables.append(_conform(pq.read_table(io.BytesIO(data))))
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


def _conform(table: pa.Table) -> pa.Table:
    """A part as SCHEMA: columns a part written by an older version lacks (``empty``, ``mean_prob``, ...) are
    null."""
    for name in SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), SCHEMA.field(name).type))
    return table.select(SCHEMA.names).cast(SCHEMA)


def latest_rows(table: pa.Table) -> dict[str, dict[str, Any]]:
    """key -> its latest row (by finished_at)."""
    out: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        prev = out.get(row["key"])
        if prev is None or (row["finished_at"] or 0) >= (prev["finished_at"] or 0):
            out[row["key"]] = row
    return out


def done_keys(storage: Any, config_hash: str) -> set[str]:
    return {k for k, r in latest_rows(read_manifest(storage)).items()
            if r["status"] == "ok" and r["config_hash"] == config_hash}


class Tally:
    """A running `summarize` that does not hold the rows (a run of millions): counts, the encoder passes of the
    ``ok`` rows, and the first ``keep_errors`` error rows (``errors_left_out`` counts the others)."""

    def __init__(self, *, keep_errors: int = 1000):
        self.images = self.ok = self.passes = self.errors_left_out = self.empty = 0
        self.keep_errors = keep_errors
        self.errors: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.images += 1
        if row["status"] == "ok":
            self.ok += 1
            self.passes += row["encoder_passes"] or 0
            self.empty += bool(row.get("empty"))
        elif row["status"] == "error":
            if len(self.errors) < self.keep_errors:
                self.errors.append(row)
            else:
                self.errors_left_out += 1

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "ok": self.ok,
            "errors": len(self.errors) + self.errors_left_out,
            "empty": self.empty,
            "encoder_passes_per_image": (self.passes / self.ok) if self.ok else 0.0,
        }


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    tally = Tally(keep_errors=0)
    for r in rows:
        tally.add(r)
    return tally.summary()
