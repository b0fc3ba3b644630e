"""Helpers shared by the job tests: example data on disk, tiny checkpoints, output checks; whole-window-set
references for the tiling tests (``stitch``, ``map_tiles`` on ``finedetail.tiling.Stitcher``)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from finedetail import synthetic
from finedetail.codecs import decode_mask, encode_png
from finedetail.tiling import Stitcher, Window, tile_grid

CORRUPT = {
    "broken/empty.png": b"",
    "broken/truncated.jpg": None,  # filled in by write_inputs (a real JPEG cut in half)
    "broken/not-an-image.png": b"this is a text file with an image extension\n",
}


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_inputs(root: Path, *, n_good: int = 9, size: tuple[int, int] = (80, 112), corrupt: bool = True) -> list[str]:
    """Generated scenes (png and jpg, some in a subfolder) + the corrupt inputs; returns all relative keys."""
    keys = []
    kinds = synthetic.KINDS
    for i in range(n_good):
        scene = synthetic.make_scene(kinds[i % len(kinds)], seed=i, size=(size[0] + 8 * (i % 3), size[1]))
        rel = f"{'sub/' if i % 4 == 3 else ''}img_{i:02d}.{'jpg' if i % 3 == 2 else 'png'}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(scene.image) if rel.endswith(".jpg") else encode_png(scene.image))
        keys.append(rel)
    if corrupt:
        for rel, data in CORRUPT.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                full = _jpeg(synthetic.make_scene("fur", seed=99, size=size).image)
                data = full[: len(full) // 2]
            path.write_bytes(data)
            keys.append(rel)
    return sorted(keys)


def write_prompts(root: Path, *, size: tuple[int, int] = (80, 112), kinds=("fur",)) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(kinds):
        image, mask = synthetic.make_prompt_pair(kind, seed=500 + i, size=size)
        (root / f"images/p{i}.png").write_bytes(encode_png(image))
        (root / f"masks/p{i}.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
    return root


def check_outputs(out: Path, good_keys: list[str], input_root: Path) -> None:
    """Every good key has a mask (input size, 0/255), a prob map, an RLE that pycocotools decodes to the mask,
    and an overlay."""
    from pycocotools import mask as mask_utils

    for key in good_keys:
        stem = os.path.splitext(key)[0]
        with Image.open(input_root / key) as im:
            w, h = im.size
        mask_png = Image.open(out / "masks" / f"{stem}.png")
        assert mask_png.size == (w, h), key
        arr = np.asarray(mask_png)
        assert set(np.unique(arr)) <= {0, 255}
        assert Image.open(out / "probs" / f"{stem}.png").size == (w, h)
        rle = json.loads((out / "rle" / f"{stem}.json").read_text())
        rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), decode_mask(encode_png(arr)))
        assert (out / "overlays" / f"{stem}.png").exists()


def read_manifest_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted((out / "manifest").glob("*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def stitch(hw: Sequence[int], windows: Sequence[Window], probs: Sequence[np.ndarray], *, overlap: int) -> np.ndarray:
    """Blend ``probs[i]`` ((windows[i].h, windows[i].w)) into an (H, W) float32 map with one ``Stitcher``."""
    assert len(probs) == len(windows), "one prediction per window"
    st = Stitcher(hw, overlap=overlap)
    for win, p in zip(windows, probs):
        st.add(win, p)
    return st.result()


def map_tiles(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *, tile: int, overlap: int,
              offset: Sequence[int] = (0, 0)) -> np.ndarray:
    """``fn`` on each ``tile_grid`` window of ``image`` ((H, W[, C])), stitched -> (H, W) float32."""
    hw = image.shape[:2]
    wins = tile_grid(hw, tile=tile, overlap=overlap, offset=offset)
    return stitch(hw, wins, [fn(image[w.slices]) for w in wins], overlap=overlap)
