"""Real-data benchmark: the job run as a user runs it, on real images with ground truth, one row per configuration.

Reads any folder in the common layout (``python -m job.datasets`` converts the public thin-structure sets into it)::

    DIR/images/NAME.<ext>  DIR/masks/NAME.png  [DIR/valid/NAME.png: score only inside]  [DIR/human/NAME.png]

Names are sorted; the first ``--prompts K`` pairs become the in-context prompt pairs, the next ``--inputs N`` images
the inputs. Every configuration is one ``python -m job run ...`` subprocess (the CLI, on a local Ray unless
``--address``), writing into its own output folder; its masks are read back and scored against the ground truth.
When ``human/`` exists, a second annotator's masks are scored the same way (row ``human``): what agreement between
people looks like on that set.

Multi-class sets (``DIR/classes.yaml``, masks = class-index maps; ``python -m job.datasets drive-od``): the prompt set
gets the classes file, the job writes ``masks/<class>/``, and every configuration gives one row per class
(``config:class``) with the same metrics plus ``other``: the share of the class's ground-truth pixels the job
labelled as another class.

Configurations (``--configs``, comma-separated; default all but ``selective`` on the weight-free backend):

    single      one pass: scale 1, identity view, no crops, no post-processing (coarse -> refine -> union)
    +crop       single + high-resolution crop refinement
    +scale2     single + the 2x scale (tiled into the refiner's windows)
    +tta        single + the flip view (TTA identity, hflip)
    +post       single + the default post-processing (guided filter, morphology)
    default     the defaults of the backend: what a user gets with no method flags
    preset      ``--preset NAME`` (``--preset`` of this benchmark; skipped when not given)
    selective   the defaults with ``--selective``
    NAME=ARGS   any other row: job flags as one shell-quoted string, e.g. ``'exact-gf=--set post.subsample=1'``

Metrics per image (inside ``valid`` when given), then means over images: pixel precision, recall and F1, IoU,
Boundary IoU, mBA (CascadePSP), clDice topology sensitivity (the ground truth's skeleton covered by the prediction)
and precision (the prediction's skeleton inside the ground truth), the 2-px tolerance F on skeletons (for
centre-line labels), encoder passes per image (from the manifest), and seconds per image (the
job's wall time, Ray's start included, divided by the inputs; and the manifest's per-image stage seconds).

Caveat on PLD-UAV: its ``groundTruth.Boundaries`` trace BOTH edges of a wire (up to ~10 px wide), not its centre
line, so a prediction that fills a wide wire thins to a centre line more than 2 px from either labelled edge and
loses tolerance F; pixel F1 has the same bias. Compare configurations on it, not absolute numbers with other sets.

Usage::

    python -m job.bench real --data data/drive --prompts 2 --inputs 8 --backend classical
    python -m job.bench real --data data/pldu --configs single,default --json
    python -m job.bench real --data data/crackforest --preset technical --keep --workdir /tmp/bench-crack
    python -m job.bench real --data data/drive --backend seggpt-sam --refiner sam-hq --configs single,default
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["CONFIGS", "FIELDS", "load_layout", "main", "run", "score_image"]

_POST_OFF = ["--set", "post.guided=false", "--set", "post.close_size=0", "--set", "post.hole_area=0",
             "--set", "post.opening=none", "--set", "post.island_area=0"]
_SINGLE = ["--scales", "1", "--tta", "identity", "--no-crop", *_POST_OFF]


def _post_on() -> list[str]:
    """The library's post-processing defaults (``PostprocessConfig``), set explicitly: a backend whose defaults
    turn post-processing off (``classical``) would otherwise run its "+post" row without it."""
    from finedetail.config import PostprocessConfig

    post = PostprocessConfig()
    return [a for name in ("guided", "close_size", "hole_area", "opening", "island_area")
            for a in ("--set", f"post.{name}={str(getattr(post, name)).lower()}")]


#: name -> job flags. "preset" gets its name from --preset at run time. Every "+stage" row turns its stage on
#: explicitly (crops: ``crop.enabled=true``): a backend's defaults may have it off (``finedetail.presets``).
CONFIGS: dict[str, list[str]] = {
    "single": _SINGLE,
    "+crop": ["--scales", "1", "--tta", "identity", "--set", "crop.enabled=true", *_POST_OFF],
    "+scale2": ["--scales", "1,2", "--tta", "identity", "--no-crop", *_POST_OFF],
    "+tta": ["--scales", "1", "--tta", "identity,hflip", "--no-crop", *_POST_OFF],
    "+post": ["--scales", "1", "--tta", "identity", "--no-crop", *_post_on()],
    "default": [],
    "preset": [],
    "selective": ["--selective"],
}
DEFAULT_CONFIGS = ("single", "+crop", "+scale2", "+tta", "+post", "default", "preset")

#: metric columns of every row (means over images), fractions in [0, 1]
FIELDS = ("f1", "precision", "recall", "iou", "boundary_iou", "mba", "topo_sens", "topo_prec", "tol_f")
_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class Item:
    name: str
    image: Path
    mask: Path
    valid: Path | None
    human: Path | None


def load_layout(data: Path) -> list[Item]:
    """Sorted (image, mask[, valid, human]) items of a folder in the common layout; refuses a folder without pairs."""
    data = Path(data)
    images, masks = data / "images", data / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise SystemExit(f"--data {data}: expected images/ and masks/ folders (convert a public set with "
                         f"python -m job.datasets, see its --help)")
    items = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in _EXTS):
        mask = masks / f"{img.stem}.png"
        if not mask.is_file():
            continue
        valid = data / "valid" / f"{img.stem}.png"
        human = data / "human" / f"{img.stem}.png"
        items.append(Item(img.stem, img, mask, valid if valid.is_file() else None, human if human.is_file() else None))
    if not items:
        raise SystemExit(f"--data {data}: no images/NAME.<ext> with a masks/NAME.png")
    return items


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def _read_labels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def read_classes(data: Path) -> tuple[str, ...]:
    """Class names of a multi-class set (``DIR/classes.yaml``); () for a binary set."""
    from job.models import read_prompt_classes

    return tuple(read_prompt_classes(str(data)) or ()) if (Path(data) / "classes.yaml").is_file() else ()


def score_image(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Every FIELDS metric of one (H, W) bool prediction against its (H, W) bool ground truth; outside ``valid``
    both are set to background first (DRIVE's convention: score inside the field of view)."""
    from finedetail import metrics

    if valid is not None:
        pred, gt = pred & valid, gt & valid
    topo_prec, topo_sens, _ = metrics.cldice_scores(pred, gt)
    return {
        "f1": metrics.pixel_f1(pred, gt),
        "precision": metrics.pixel_precision(pred, gt),
        "recall": metrics.pixel_recall(pred, gt),
        "iou": metrics.iou(pred, gt),
        "boundary_iou": metrics.boundary_iou(pred, gt),
        "mba": metrics.mba(pred, gt),
        "topo_sens": topo_sens,
        "topo_prec": topo_prec,
        "tol_f": metrics.tolerance_f(pred, gt, tol=2),
    }


def _mean_rows(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in FIELDS}


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _manifest(out: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: dict[str, dict[str, Any]] = {}
    for part in sorted((out / "manifest").glob("*.parquet")):
        for r in pq.read_table(part).to_pylist():
            if r["key"] not in rows or (r.get("finished_at") or 0) >= (rows[r["key"]].get("finished_at") or 0):
                rows[r["key"]] = r
    return rows


def _job_flags(name: str, extra: dict[str, list[str]], preset: str | None) -> list[str] | None:
    if name in extra:
        return extra[name]
    if name == "preset":
        return ["--preset", preset] if preset else None
    return list(CONFIGS[name])


def run(data: Path, *, prompts: int = 2, inputs: int = 8, configs: Sequence[str] = DEFAULT_CONFIGS,
        extra: dict[str, list[str]] | None = None, backend: str = "classical", preset: str | None = None,
        workdir: Path | None = None, keep: bool = False, address: str | None = None,
        job_args: Sequence[str] = (), refiner: str | None = None, log=print) -> dict[str, Any]:
    """Run every configuration through the job CLI and score it. Returns ``{"rows": [...], "data": ..., ...}``."""
    extra = dict(extra or {})
    items = load_layout(data)
    if len(items) < prompts + 1:
        raise SystemExit(f"--data {data} has {len(items)} pairs; need --prompts {prompts} plus at least one input")
    prompt_items, input_items = items[:prompts], items[prompts:prompts + inputs]
    classes = read_classes(data)
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="finedetail-real-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for it in prompt_items:
            _place(it.image, work / "prompts" / "images" / it.image.name)
            _place(it.mask, work / "prompts" / "masks" / f"{it.name}.png")
        if classes:
            _place(Path(data) / "classes.yaml", work / "prompts" / "classes.yaml")
        for it in input_items:
            _place(it.image, work / "inputs" / it.image.name)
        truth = {}
        for it in input_items:
            truth[it.name] = (_read_labels(it.mask) if classes else _read_mask(it.mask),
                              _read_mask(it.valid) if it.valid else None)
        rows = []
        humans = [it for it in input_items if it.human]
        if humans:
            per = [score_image(_read_mask(it.human), *truth[it.name]) for it in humans]
            rows.append({"name": "human", "images": len(per), **_mean_rows(per), "encoder_passes": None,
                         "seconds_per_image": None, "stage_seconds_per_image": None, "flags": "second annotator"})
            log(_line(rows[-1]))
        for name in configs:
            flags = _job_flags(name, extra, preset)
            if flags is None:
                log(f"{name}: skipped (no --preset given)")
                continue
            out = work / f"out-{_slug(name)}"
            if out.exists():
                shutil.rmtree(out)
            cmd = [sys.executable, "-m", "job", "run", "--input", str(work / "inputs"),
                   "--prompts", str(work / "prompts"), "--output", str(out), "--backend", backend,
                   "--no-overlays", "--json", *flags, *job_args]
            if refiner is not None:
                cmd += ["--refiner", refiner]
            if address:
                cmd += ["--address", address]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                rows.append({"name": name, "error": f"exit {proc.returncode}: " + " | ".join(tail),
                             "flags": shlex.join(flags)})
                log(f"{name}: FAILED ({rows[-1]['error']})")
                continue
            manifest = _manifest(out)
            per: dict[str, list[dict[str, float]]] = {c: [] for c in classes or ("",)}
            passes, stage_s = [], []
            for it in input_items:
                key = next((k for k in manifest if Path(k).stem == it.name), None)
                paths = {c: out / "masks" / c / f"{it.name}.png" for c in per} if classes else {
                    "": out / "masks" / f"{it.name}.png"}
                if key is None or manifest[key]["status"] != "ok" or not all(p.is_file() for p in paths.values()):
                    raise SystemExit(f"{name}: no ok mask for {it.name} in {out} (see its manifest)")
                gt, valid = truth[it.name]
                if classes:
                    pred = {c: _read_mask(p) for c, p in paths.items()}
                    for i, c in enumerate(classes):
                        row = score_image(pred[c], gt == i + 1, valid)
                        want = (gt == i + 1) & (valid if valid is not None else True)
                        taken = np.logical_or.reduce([pred[o] for o in classes if o != c]) & want
                        row["other"] = float(taken.sum() / max(1, want.sum()))
                        per[c].append(row)
                else:
                    per[""].append(score_image(_read_mask(paths[""]), gt, valid))
                passes.append(manifest[key]["encoder_passes"] or 0)
                stage_s.append(sum(float(manifest[key].get(f"seconds_{s}") or 0.0)
                                   for s in ("decode", "coarse", "refine", "crop", "fuse", "write")))
            for c, got in per.items():
                extra_cols = {"other": float(np.mean([r["other"] for r in got]))} if classes else {}
                rows.append({"name": f"{name}:{c}" if c else name, "images": len(got), **_mean_rows(got),
                             **extra_cols, "encoder_passes": float(np.mean(passes)),
                             "seconds_per_image": wall / len(got), "stage_seconds_per_image": float(np.mean(stage_s)),
                             "flags": shlex.join(flags)})
                log(_line(rows[-1]))
        return {"data": str(data), "backend": backend, "refiner": refiner, "prompts": [it.name for it in prompt_items],
                "inputs": [it.name for it in input_items], "preset": preset, "rows": rows,
                "workdir": str(work) if keep else None}
    finally:
        if own_tmp and not keep:
            shutil.rmtree(work, ignore_errors=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['name']}: FAILED {row['error']}"
    other = f" other {row['other']:.3f}" if "other" in row else ""
    return (f"{row['name']}: F1 {row['f1']:.3f} IoU {row['iou']:.3f} BIoU {row['boundary_iou']:.3f} "
            f"topo sens {row['topo_sens']:.3f} prec {row['topo_prec']:.3f} tolF {row['tol_f']:.3f}{other} "
            f"passes {_fmt(row['encoder_passes'], 1)} s/img {_fmt(row['seconds_per_image'], 1)}")


def table(result: dict[str, Any]) -> str:
    cols = ("f1", "precision", "recall", "iou", "boundary_iou", "mba", "topo_sens", "topo_prec", "tol_f")
    if any("other" in r for r in result["rows"]):
        cols += ("other",)
    head = ["config", *cols, "passes", "s/img", "stage s/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |")
            continue
        vals = [_fmt(r.get(c)) for c in cols]
        vals += [_fmt(r["encoder_passes"], 1), _fmt(r["seconds_per_image"], 1), _fmt(r["stage_seconds_per_image"], 1)]
        lines.append("| " + " | ".join([r["name"], *vals]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench real", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder with images/ and masks/ (optional valid/, human/)")
    p.add_argument("--prompts", type=int, default=2, help="first K pairs are the prompt pairs (default 2)")
    p.add_argument("--inputs", type=int, default=8, help="the next N images are the inputs (default 8)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated rows: {', '.join(CONFIGS)} or NAME=ARGS (default: %(default)s)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=ARGS",
                   help="an extra row with these job flags, e.g. 'exact-gf=--set post.subsample=1' (repeatable)")
    p.add_argument("--backend", default="classical", help="job --backend (default classical: runs without weights)")
    p.add_argument("--refiner", choices=("sam", "sam-hq", "sam2"),
                   help="job --refiner for every row (backend seggpt-sam; default: the job's, sam); its weights by "
                        "--job-arg=--sam-checkpoint=...")
    p.add_argument("--preset", help="the preset row's --preset (e.g. medical for vessels, technical for cracks/wires)")
    p.add_argument("--workdir", type=Path, help="keep prompts/, inputs/ and out-*/ here (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the temp workdir and print where it is")
    p.add_argument("--address", help="Ray address for every run (default: each run starts a local Ray)")
    p.add_argument("--job-arg", action="append", default=[], metavar="ARG",
                   help="extra argument passed to every job run (repeatable), e.g. --job-arg=--set=... ")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = p.parse_args(argv)
    if args.prompts < 1 or args.inputs < 1:
        p.error(f"--prompts and --inputs must be >= 1, got {args.prompts} and {args.inputs}")
    names, extra = [], {}
    for entry in [*_split(args.configs), *args.extra]:
        if "=" in entry:
            name, flags = entry.split("=", 1)
            extra[name.strip()] = shlex.split(flags)
            names.append(name.strip())
        elif entry in CONFIGS:
            names.append(entry)
        else:
            p.error(f"unknown config {entry!r}; choose from {', '.join(CONFIGS)} or give NAME=ARGS")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    result = run(args.data, prompts=args.prompts, inputs=args.inputs, configs=names, extra=extra,
                 backend=args.backend, preset=args.preset, workdir=args.workdir, keep=args.keep,
                 address=args.address, job_args=args.job_arg, refiner=args.refiner, log=log)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print()
        print(f"{args.data} - backend {args.backend}{f' (refiner {args.refiner})' if args.refiner else ''}, prompts {result['prompts']}, {len(result['inputs'])} inputs")
        print(table(result))
        if result["workdir"]:
            print(f"outputs kept in {result['workdir']}")
    return 1 if any("error" in r for r in result["rows"]) else 0


def _split(text: str) -> list[str]:
    # "a,b,NAME=--scales 1,2" : a comma inside NAME=ARGS belongs to the args; split only before known names
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if out and "=" in out[-1] and part not in CONFIGS and "=" not in part:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
