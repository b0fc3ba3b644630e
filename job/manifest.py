"""The manifest: one Parquet row per input, written in parts (one part per written batch) under ``manifest/``.

A part is written only after every output file of its rows is in place, so a row in the manifest means its files
are whole. Resume reads all parts, keeps each key's latest row, and treats a key as done when its latest row has
status ``ok`` (or ``skipped``) and the current config hash.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from job import io as jio

__all__ = ["COLUMNS", "SCHEMA", "STAGES", "done_keys", "read_manifest", "write_part"]

STAGES = ("decode", "coarse", "refine", "crop", "fuse", "write")
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
    **{f"seconds_{s}": (pa.float64(), SECONDS_DESCRIPTION.format(stage=s)) for s in STAGES},
    "config_hash": (pa.string(), "hash of everything the outputs depend on (README, Resuming)"),
    "attempts": (pa.int32(), "tries this input took (a worker that died on it counts one)"),
    "finished_at": (pa.float64(), "when the row was written (Unix time, seconds)"),
}
SCHEMA = pa.schema([pa.field(name, dtype, metadata={"description": text})
                    for name, (dtype, text) in COLUMNS.items()])


def write_part(storage: Any, rows: list[dict[str, Any]]) -> str:
    """Write rows as one Parquet part named after its keys (re-writing the same batch replaces the same part)."""
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    digest = hashlib.sha256("\n".join(sorted(r["key"] for r in rows)).encode()).hexdigest()[:20]
    name = f"manifest/part-{digest}-{int(rows[0]['finished_at'] * 1000)}.parquet"
    jio.write_bytes_atomic(storage, name, buf.getvalue())
    return name


def read_manifest(storage: Any) -> pa.Table:
    """Every row of every part (possibly several per key across runs); empty table with SCHEMA when none."""
    parts = [k for k in jio.list_files(storage, "manifest", extensions=(".parquet",))]
    tables = []
    for key in parts:
        data = jio.read_bytes(storage, f"manifest/{key}")
        tables.append(pq.read_table(io.BytesIO(data)).cast(SCHEMA))
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)


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
            if r["status"] in ("ok", "skipped") and r["config_hash"] == config_hash}


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "images": len(rows),
        "ok": len(ok),
        "errors": sum(r["status"] == "error" for r in rows),
        "encoder_passes_per_image": (sum(r["encoder_passes"] or 0 for r in ok) / len(ok)) if ok else 0.0,
    }
