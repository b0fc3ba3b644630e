"""Quality benchmark: what each stage of the method buys, on synthetic scenes with resolution-limited proxy models.

Runs the REAL pipeline (``finedetail.execute.run_image``) with ``ProxySegGPT`` / ``ProxySAM``
(``finedetail.models.proxy``: colour-keyed stand-ins that see the image only at the real models' resolution, so a
1-px wire is lost at 1x exactly as it is for SAM) on ``finedetail.synthetic`` scenes (fur, wires/poles, vessels,
roads/rivers) with exact ground truth, once per configuration of a cumulative ladder (each row adds one stage to
the previous one; ``--verbose`` prints the config dicts):

    coarse          SegGPT coarse map only (refiner off, no crops, one scale, no TTA, no post-processing)
    +sam            + SAM multi-prompt refinement per component, refined map only (no union with coarse)
    +union          + union with the coarse map
    +crop           + high-resolution crop refinement per object
    +multiscale     + 2x scale, tiled into 1024 windows
    +tta            + a circular-shift TTA view ("shift:2,2": moves the refiner's 4-px decision grid by half a cell)
    +post           + edge-aware post-processing (guided filter + gentle morphology, PostprocessConfig defaults)
    full            + the default flip TTA view too: PipelineConfig defaults + the shift view
    full+selective  full with selective compute on (SelectiveConfig defaults)

Metrics (``finedetail.metrics``) on the final mask, class 0: IoU, Boundary IoU, boundary F within 2 px
(``boundary_f_tol``; not DAVIS's F), mBA, thin-structure recall (skeleton of the 1-3 px parts), and encoder passes
per image (coarse + refiner encodes, ``Stats.encoder_passes``). Means over scenes; the table adds refiner windows
and crops per image, and breakdowns per kind and per size. The last lines check the targets: full's thin recall
>= 20 points above coarse; selective compute within 1 Boundary IoU point of full at <= half its encoder passes.

Usage::

    python -m job.bench quality                       # default scenes: 512 px x seeds 0,1; 1024 and 2048 px x seed 0
                                                      # (16 scenes, ~4 min CPU, 2 worker processes)
    python -m job.bench quality --json                # list of rows: name, iou, boundary_iou, boundary_f_tol, mba,
                                                      # thin_recall, encoder_passes (+ by_kind, by_size, windows,
                                                      # crops, scenes, seconds, config)
    python -m job.bench quality --quick               # small fast subset (tests)
    python -m job.bench quality --kinds fur,wires --seeds 0,1,2 --sizes 512,1024 --configs coarse,full
    python -m job.bench quality --scenes 512:0,1/1024:0,1/2048:0 --records records.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np

from finedetail import metrics
from finedetail.config import config_from_dict
from finedetail.models.proxy import ProxySAM, ProxySegGPT
from finedetail.execute import run_image
from finedetail.synthetic import KINDS, make_prompt_pair, make_scene
from finedetail.types import PromptPair

#: printed with every table: what these numbers can and cannot show
GEOMETRY_NOTE = ("NOTE: generated scenes + proxy models that read the scenes' colour key: a test of geometry (frames, "
                 "tiling, seams, inverses, prompt placement), NOT of segmentation quality on real images; for that "
                 "see python -m job.bench real")

__all__ = ["CONFIGS", "GEOMETRY_NOTE", "DEFAULT_SCENES", "FIELDS", "main", "run", "run_scene", "scene_list", "score", "summarize",
           "table", "targets"]

#: metric fields of every JSON row, all means over scenes; fractions in [0, 1] except encoder_passes
FIELDS = ("iou", "boundary_iou", "boundary_f_tol", "mba", "thin_recall", "encoder_passes")

DEFAULT_KINDS = KINDS
#: default scene set, (size, seeds) pairs: 16 scenes, ~4 min of CPU (a 1024 or 2048 px scene costs ~5-7x a 512 one:
#: the refiner works on 1024 px windows whatever the image size, and the 2x variant has 9 or 25 of them)
DEFAULT_SCENES: tuple[tuple[int, tuple[int, ...]], ...] = ((512, (0, 1)), (1024, (0,)), (2048, (0,)))
#: ``--quick``: two kinds, one small scene each (SAM still works on 1024 px: cost is per encoder pass, not per pixel)
QUICK: tuple[tuple[int, tuple[int, ...]], ...] = ((192, (0,)),)
QUICK_KINDS = ("fur", "wires")

_POST_OFF = {"guided": False, "close_size": 0, "hole_area": 0, "opening": "none", "island_area": 0}


def _ladder() -> dict[str, dict[str, Any]]:
    """The configurations, as ``config_from_dict`` overrides of ``PipelineConfig()``; each row adds one stage."""
    rows: dict[str, dict[str, Any]] = {}
    cfg: dict[str, Any] = {
        "scales": [1.0],
        "tta": ["identity"],
        "refine": {"enabled": False},
        "crop": {"enabled": False},
        "post": dict(_POST_OFF),
    }
    rows["coarse"] = cfg

    def add(name: str, **change: Any) -> None:
        nonlocal cfg
        cfg = copy.deepcopy(cfg)
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            elif value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        rows[name] = cfg

    add("+sam", refine={"enabled": True, "union": False})
    add("+union", refine={"union": True})
    add("+crop", crop={"enabled": True})
    add("+multiscale", scales=[1.0, 2.0])
    add("+tta", tta=["identity", "shift:2,2"])
    add("+post", post=None)  # PostprocessConfig defaults
    add("full", tta=["identity", "hflip", "shift:2,2"])
    add("full+selective", selective={"enabled": True})
    return rows


#: name -> config overrides (``finedetail.config.config_from_dict`` input), in table order
CONFIGS: dict[str, dict[str, Any]] = _ladder()


def score(mask: np.ndarray, scene) -> dict[str, float]:
    """Metrics of one predicted (H, W) bool mask against a ``synthetic.Scene``."""
    return {
        "iou": metrics.iou(mask, scene.mask),
        "boundary_iou": metrics.boundary_iou(mask, scene.mask),
        "boundary_f_tol": metrics.boundary_f_tol(mask, scene.mask),
        "mba": metrics.mba(mask, scene.mask),
        "thin_recall": metrics.thin_recall(mask, scene.skeleton),
    }


def _models(kind: str, seed: int) -> tuple[ProxySegGPT, ProxySAM]:
    seg = ProxySegGPT()
    image, mask = make_prompt_pair(kind, seed=1000 + seed, size=(256, 256))
    seg.set_prompts([PromptPair(image=image, mask=mask)])
    return seg, ProxySAM()


def run_scene(kind: str, seed: int, size: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every config in ``names`` on one scene: one record each (name, kind, seed, size, the metrics,
    encoder_passes, windows, crops, seconds)."""
    scene = make_scene(kind, seed=seed, size=(size, size))
    out = []
    for name in names:
        seg, sam = _models(kind, seed)  # fresh models: nothing carries over between configs
        t0 = time.perf_counter()
        result = run_image(scene.image, seg, sam, config_from_dict(CONFIGS[name]))
        st = result.stats
        out.append({"name": name, "kind": kind, "seed": seed, "size": size, **score(result.mask[0], scene),
                    "encoder_passes": float(st.encoder_passes), "windows": float(st.encoded_windows),
                    "crops": float(st.crops),
                    "seconds": time.perf_counter() - t0})
    return out


def _run_scene_args(args: tuple[str, int, int, Sequence[str]]) -> list[dict[str, Any]]:
    return run_scene(*args)


def scene_list(*, kinds: Sequence[str] = DEFAULT_KINDS, seeds: Sequence[int] | None = None,
               sizes: Sequence[int] | None = None,
               default: Sequence[tuple[int, Sequence[int]]] = DEFAULT_SCENES) -> list[tuple[str, int, int]]:
    """(kind, seed, size) triples: the grid kinds x seeds x sizes; a missing ``seeds`` / ``sizes`` comes from
    ``default`` (its sizes; for each size its seeds)."""
    pairs = [(z, tuple(seeds) if seeds is not None else ss) for z, ss in default] if sizes is None else \
        [(z, tuple(seeds) if seeds is not None else next((ss for dz, ss in default if dz == z), default[0][1]))
         for z in sizes]
    return [(k, s, z) for z, ss in pairs for k in kinds for s in ss]


def run(scenes: Sequence[tuple[str, int, int]], *, configs: Iterable[str] | None = None, jobs: int = 1,
        progress: bool = False) -> list[dict[str, Any]]:
    """Records of every config on every (kind, seed, size) scene, in scene order then ``CONFIGS`` order. ``jobs``
    > 1 runs scenes in that many worker processes (results are the same: everything is deterministic)."""
    names = list(CONFIGS) if configs is None else list(configs)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    for n in names:
        config_from_dict(CONFIGS[n])  # fail before any work
    work = [(k, s, z, names) for k, s, z in scenes]
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []

    def note(j: int, recs: list[dict[str, Any]]) -> None:
        records.extend(recs)
        if progress:
            k, s, z, _ = work[j]
            print(f"[{len(records) // max(1, len(names))}/{len(work)}] {k} seed={s} {z}x{z} done, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    if jobs > 1 and len(work) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(jobs, len(work))) as pool:
            for j, recs in enumerate(pool.imap(_run_scene_args, work)):
                note(j, recs)
    else:
        for j, w in enumerate(work):
            note(j, _run_scene_args(w))
    return records


def _mean(records: list[dict[str, Any]], field: str) -> float:
    return float(np.mean([r[field] for r in records])) if records else float("nan")


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config (in ``CONFIGS`` order): name, the means of ``FIELDS`` over scenes, and extras: ``by_kind`` (kind ->
    the same means over that kind's scenes), ``by_size`` (str(size) -> likewise), ``windows`` and ``crops`` (mean
    refiner windows encoded and crops per image), ``scenes`` (count), ``seconds`` (mean wall time per image), ``config``
    (the overrides)."""
    rows = []
    for name in [n for n in CONFIGS if any(r["name"] == n for r in records)]:
        mine = [r for r in records if r["name"] == name]
        row: dict[str, Any] = {"name": name}
        row.update({f: _mean(mine, f) for f in FIELDS})
        for key, label in (("kind", "by_kind"), ("size", "by_size")):
            groups = list(dict.fromkeys(r[key] for r in mine))
            row[label] = {str(g): {f: _mean([r for r in mine if r[key] == g], f) for f in FIELDS} for g in groups}
        row["windows"] = _mean(mine, "windows")
        row["crops"] = _mean(mine, "crops")
        row["scenes"] = len(mine)
        row["seconds"] = _mean(mine, "seconds")
        row["config"] = CONFIGS[name]
        rows.append(row)
    return rows


_SHORT = {"iou": "IoU", "boundary_iou": "BIoU", "boundary_f_tol": "BF2px", "mba": "mBA", "thin_recall": "thin",
          "encoder_passes": "passes"}


def _fmt(field: str, value: float) -> str:
    return f"{value:7.1f}" if field == "encoder_passes" else f"{100 * value:7.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Main table (fractions as %), then thin recall / Boundary IoU / IoU / passes per kind and per size."""
    out = [f"{'config':16s}" + "".join(f"{_SHORT[f]:>8s}" for f in FIELDS) + f"{'windows':>8s}{'crops':>8s}"
           f"{'s/img':>8s}"]
    for r in rows:
        out.append(f"{r['name']:16s}" + "".join(" " + _fmt(f, r[f]) for f in FIELDS)
                   + f" {r['windows']:7.1f} {r['crops']:7.1f} {r['seconds']:7.2f}")
    for label, title in (("by_kind", "by kind"), ("by_size", "by size")):
        groups = list(dict.fromkeys(g for r in rows for g in r[label]))
        for field in ("thin_recall", "boundary_iou", "iou", "encoder_passes"):
            out.append("")
            out.append(f"{_SHORT[field] + ' ' + title:16s}" + "".join(f"{g:>9s}" for g in groups))
            for r in rows:
                out.append(f"{r['name']:16s}" + "".join("  " + _fmt(field, r[label][g][field]) for g in groups))
    return "\n".join(out)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The benchmark's targets as readable lines (those whose rows are present)."""
    by = {r["name"]: r for r in rows}
    lines = []
    if "coarse" in by and "full" in by:
        gain = 100 * (by["full"]["thin_recall"] - by["coarse"]["thin_recall"])
        lines.append(f"thin recall full - coarse: {gain:+.1f} points (target >= +20): "
                     f"{'ok' if gain >= 20 else 'MISSED'}")
    if "full" in by and "full+selective" in by:
        d = 100 * (by["full+selective"]["boundary_iou"] - by["full"]["boundary_iou"])
        ratio = by["full+selective"]["encoder_passes"] / max(by["full"]["encoder_passes"], 1e-9)
        lines.append(f"selective: Boundary IoU {d:+.2f} points (target >= -1), encoder passes x{ratio:.2f} of full "
                     f"(target <= 0.5): {'ok' if d >= -1 and ratio <= 0.5 else 'MISSED'}")
    return lines


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _scenes(text: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """"512:0,1/1024:0" -> ((512, (0, 1)), (1024, (0,)))."""
    out = []
    for part in text.split("/"):
        size, _, seeds = part.partition(":")
        try:
            out.append((int(size), _ints(seeds) if seeds else (0,)))
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected SIZE:SEED,SEED/SIZE:SEED..., got {text!r}") from None
    return tuple(out)


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", type=_names, default=None, help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--seeds", type=_ints, default=None,
                   help="comma-separated seeds for every size (default: per size, see --sizes)")
    p.add_argument("--sizes", type=_ints, default=None,
                   help="square scene sides in px (default: " + ", ".join(
                       f"{z} (seeds {','.join(map(str, ss))})" for z, ss in DEFAULT_SCENES) + ")")
    p.add_argument("--scenes", type=_scenes, default=None, metavar="SIZE:SEEDS/...",
                   help="per-size seeds, e.g. 512:0,1/1024:0,1/2048:0 (instead of --sizes/--seeds)")
    p.add_argument("--configs", type=_names, default=None, help=f"subset of {','.join(CONFIGS)}")
    p.add_argument("--quick", action="store_true",
                   help=f"small fast subset (tests): kinds {','.join(QUICK_KINDS)}, 192 px, seed 0")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one scene each (default 2)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list instead of the table")
    p.add_argument("--verbose", action="store_true", help="print each config dict and per-scene progress")
    p.add_argument("--records", default=None, metavar="PATH", help="also write the per-scene records (JSON) here")
    args = p.parse_args(argv)
    kinds = args.kinds or (QUICK_KINDS if args.quick else DEFAULT_KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kind(s) {bad}; choose from {list(KINDS)}")
    if args.configs:
        bad = [c for c in args.configs if c not in CONFIGS]
        if bad:
            p.error(f"unknown config(s) {bad}; choose from {list(CONFIGS)}")
    if args.scenes and (args.sizes or args.seeds):
        p.error("--scenes replaces --sizes and --seeds; give one or the other")
    sizes_given = args.sizes or [z for z, _ in args.scenes or ()]
    if any(s < 64 for s in sizes_given):
        p.error(f"sizes must be >= 64 px, got {sizes_given}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    scenes = scene_list(kinds=kinds, seeds=args.seeds, sizes=args.sizes,
                        default=args.scenes or (QUICK if args.quick else DEFAULT_SCENES))
    if args.verbose:
        for name in args.configs or CONFIGS:
            print(f"# {name} (config_from_dict overrides of PipelineConfig()): "
                  f"{json.dumps(CONFIGS[name], sort_keys=True)}", file=sys.stderr)
    t0 = time.perf_counter()
    records = run(scenes, configs=args.configs, jobs=args.jobs, progress=args.verbose)
    rows = summarize(records)
    if args.records:
        with open(args.records, "w") as f:
            json.dump(records, f, indent=1)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    sizes = ", ".join(f"{z} px x seeds {','.join(str(s) for s in sorted({s for _, s, zz in scenes if zz == z}))}"
                      for z in dict.fromkeys(z for _, _, z in scenes))
    print(f"quality: {len(scenes)} scenes (kinds {','.join(kinds)}; {sizes}) x {len(rows)} configs, "
          f"proxy models, {time.perf_counter() - t0:.0f} s")
    print(GEOMETRY_NOTE)
    print(table(rows))
    for line in targets(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
