"""The rows that travel between the job's Ray operators: one schema, documented here.

Every batch of every operator has exactly these columns (one Arrow type each), so all batches of an operator share
one schema whatever their rows hold:

  key        str    the input's key (an image path, or ``scene#y_x`` for a raster window)
  status     str    "ok" | "error"; an error row is carried to the manifest untouched by later steps
  error      str    why, on an error row ("" otherwise); prefixed by the stage that failed
  attempts   int    tries of the row (``job.stages.AttemptLog``)
  state      bytes  the per-image state (``finedetail.state.ImageState.to_bytes``: the image, the coarse maps
                    by TTA view, the maps by name, the variants selective compute skipped, the fused prob and mask,
                    the counters), maps in ONE precision (uint8, quantised once by the step that made them: see
                    ``finedetail.state``); b"" only on an error row
  passes_coarse, passes_refiner, components   int    the state's counters, for the manifest
  seconds_<stage>   float   wall seconds per row in each stage of ``job.manifest.STAGES``

The raster-window path (``job.raster``) adds its window columns (scene, y0, x0, y1, x1, read). Only the write operator
turns rows into manifest rows (and files).
"""

from __future__ import annotations

import numpy as np

from finedetail.state import ImageState

__all__ = ["column", "new_state", "read_state"]


def new_state(image: np.ndarray, coarse: np.ndarray | None = None) -> bytes:
    """The ``state`` a read operator puts in a row: the decoded image ((H, W, 3) uint8) and, when coarse maps are
    made elsewhere (``--coarse``), the (C, H, W) float32 coarse map every TTA view then uses."""
    state = ImageState(image=image)
    if coarse is not None:
        state.put_coarse("identity", coarse)
    return state.to_bytes()


def read_state(row: dict) -> ImageState:
    """The `ImageState` of an ok row."""
    data = row["state"]
    if data is None or len(data) == 0:
        raise ValueError(f"row {row.get('key')!r} has no state (status {row.get('status')!r}); only ok rows do")
    return ImageState.from_bytes(data)


def column(values: list) -> np.ndarray:
    """A list of python values -> a 1-D numpy column (object dtype for bytes/str so Arrow sees binary/string)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
