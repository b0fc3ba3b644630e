"""The per-image state every step of the plan reads and writes, and its one byte form (pure: numpy only).

Precision, in one place: every probability map a state holds (coarse views, variant maps, the crop map, the fused
``prob``) is ``(C, H, W)`` in the ORIGINAL image frame stored as ``MAP_DTYPE`` (uint8, ``round(p * 255)``,
``finedetail.types.to_u8``). A map is quantised exactly once, when its step stores it (``ImageState.put_map``,
``put_coarse``, ``put_fused``), and read back as float32 (``from_u8``) by the steps after it, so a state means the same
in one process (``run_image``) and after a trip through bytes between Ray operators (``to_bytes``/``from_bytes`` are
lossless). ``mask`` is bool. ``python -m job.bench quality --quick`` scores uint8 and float32 maps alike.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from finedetail.types import from_u8, to_u8

__all__ = ["MAP_DTYPE", "ImageState", "Stats"]

#: the precision of every map a state holds (see the module docstring)
MAP_DTYPE = np.uint8
_MAGIC = b"FDS1"


@dataclass
class Stats:
    """Counters one image accumulates across steps (summed into the manifest)."""

    coarse_passes: int = 0
    refiner_passes: int = 0
    components: int = 0
    dropped_components: int = 0
    crops: int = 0
    encoded_windows: int = 0  # refiner windows encoded (variant windows; crops are counted in crops)
    empty_windows: int = 0  # refiner windows without a prompt: not encoded (the refiner adds nothing there)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def encoder_passes(self) -> int:
        return self.coarse_passes + self.refiner_passes

    def merge(self, other: "Stats") -> "Stats":
        out = Stats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                       for f in dataclasses.fields(self) if f.name != "seconds"})
        out.seconds = {**self.seconds}
        for k, v in other.seconds.items():
            out.seconds[k] = out.seconds.get(k, 0.0) + v
        return out


def _store(prob: np.ndarray) -> np.ndarray:
    return to_u8(prob) if MAP_DTYPE == np.uint8 else np.asarray(prob, MAP_DTYPE)


def _load(stored: np.ndarray) -> np.ndarray:
    return from_u8(stored) if stored.dtype == np.uint8 else stored.astype(np.float32)


@dataclass
class ImageState:
    """One image on its way through the plan.

    image: (H, W, 3) uint8. coarse: TTA view name -> stored (C, H, W) coarse map (a view the coarse step did not
    run, and every view of a coarse map made elsewhere, reads the identity view's). maps: variant name or "crop" ->
    stored (C, H, W) map; a variant selective compute skipped is named in ``skipped`` and has no map. prob: stored
    (C, H, W) fused map and mask (C, H, W) bool, once the fuse step ran. stats: the image's counters so far.
    """

    image: np.ndarray
    coarse: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    stats: Stats = field(default_factory=Stats)

    def _check(self, what: str, prob: np.ndarray) -> np.ndarray:
        prob = np.asarray(prob)
        if prob.ndim != 3 or prob.shape[1:] != self.image.shape[:2]:
            raise ValueError(f"{what} must be (C, H, W) with (H, W) = the image's {self.image.shape[:2]}, got "
                             f"{prob.shape}; maps in a state are in the original image frame")
        return prob

    def put_coarse(self, view: str, prob: np.ndarray) -> None:
        self.coarse[view] = _store(self._check(f"coarse map {view!r}", prob))

    def coarse_map(self, view: str = "identity") -> np.ndarray:
        """(C, H, W) float32 coarse map of a TTA view, original frame."""
        if "identity" not in self.coarse:
            raise RuntimeError("this state has no coarse map yet; run the coarse step first or give one (--coarse)")
        return _load(self.coarse.get(view, self.coarse["identity"]))

    def coarse_views(self) -> dict[str, np.ndarray]:
        return {name: _load(m) for name, m in self.coarse.items()}

    def put_map(self, name: str, prob: np.ndarray) -> None:
        self.maps[name] = _store(self._check(f"map {name!r}", prob))

    def map(self, name: str) -> np.ndarray:
        """(C, H, W) float32 map of a variant or "crop", original frame."""
        return _load(self.maps[name])

    def put_fused(self, prob: np.ndarray, mask: np.ndarray) -> None:
        self.prob, self.mask = _store(self._check("prob", prob)), self._check("mask", mask).astype(bool)

    def fused_prob(self) -> np.ndarray:
        """(C, H, W) float32 fused map (what the job writes)."""
        if self.prob is None:
            raise RuntimeError("this state has no fused map yet; run the fuse step first")
        return _load(self.prob)

    # ------------------------------------------------------------------------------------------- bytes
    def to_bytes(self) -> bytes:
        """Lossless byte form: magic, 4-byte header length, JSON header (names, dtypes, shapes, skipped, stats),
        then the raw arrays in header order."""
        arrays = [("image", "", self.image)]
        arrays += [("coarse", k, v) for k, v in self.coarse.items()]
        arrays += [("maps", k, v) for k, v in self.maps.items()]
        arrays += [(k, "", v) for k, v in (("prob", self.prob), ("mask", self.mask)) if v is not None]
        arrays = [(slot, k, np.ascontiguousarray(v)) for slot, k, v in arrays]
        head = json.dumps({"arrays": [[slot, k, a.dtype.str, list(a.shape)] for slot, k, a in arrays],
                           "skipped": self.skipped, "stats": dataclasses.asdict(self.stats)}).encode()
        return b"".join([_MAGIC, len(head).to_bytes(4, "little"), head] + [a.tobytes() for _, _, a in arrays])

    @classmethod
    def from_bytes(cls, data: bytes) -> "ImageState":
        data = memoryview(data)
        if bytes(data[:4]) != _MAGIC:
            raise ValueError(f"not an ImageState: expected bytes starting {_MAGIC!r}, got {bytes(data[:4])!r}; "
                             "rows must be made by finedetail.state.ImageState.to_bytes")
        n = int.from_bytes(data[4:8], "little")
        head = json.loads(bytes(data[8:8 + n]))
        pos, state = 8 + n, cls(image=np.zeros((0, 0, 3), np.uint8), skipped=list(head["skipped"]),
                                stats=Stats(**head["stats"]))
        for slot, key, dtype, shape in head["arrays"]:
            dt = np.dtype(dtype)
            size = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            a = np.frombuffer(data[pos:pos + size], dt).reshape(shape).copy()
            pos += size
            if slot in ("coarse", "maps"):
                getattr(state, slot)[key] = a
            else:
                setattr(state, slot, a)
        return state
