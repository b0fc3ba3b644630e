"""Cost and quality of the weight-free backend on a folder of real images, in-process, on a fixed number of threads.

Usage::

    python -m job.bench classical --data DIR [--prompts 2] [--inputs 8] [--threads 1]
        [--configs single,+crop,+scale2,+tta,default] [--set post.guided=false ...] [--option KEY=VALUE ...] [--json]

``DIR`` has the common layout (``images/NAME.ext``, ``masks/NAME.png``, optional ``valid/NAME.png`` scored inside):
the first ``--prompts`` pairs (sorted names) say what to segment, the next ``--inputs`` are segmented. The models are
built as the job builds them (``job.models.build_coarse`` / ``build_refiner``, ``--option`` = ``backend_options``)
and ``finedetail.execute.run_image`` runs each configuration on each input. Each row's pipeline config is what
``python -m job run --backend classical`` with that row's flags resolves (the backend's defaults underneath, so no
post-processing unless the row adds it): ``single`` (scale 1, identity view, no crops), each stage added alone
(``+post`` = the library's ``PostprocessConfig()``), and ``default`` (no flags); ``--set`` overrides apply to every
one.

Columns: pixel F1, IoU and 2-px tolerance F on skeletons (``finedetail.metrics.tolerance_f``, PLD-UAV's goal)
inside ``valid`` (mean over inputs), wall and CPU seconds per image (CPU = this process's
time: on a busy machine wall time includes waiting for a core). ``--threads`` caps OpenCV's and OpenMP's threads
(scikit-learn's gradient boosting uses OpenMP) before anything is imported; the issue's targets are on one core.
The fit on the prompts (once per job and actor) is reported apart. Quality and the stages' effect through the CLI
and on every metric: ``python -m job.bench real``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

STAGES: dict[str, dict[str, Any]] = {
    "single": {"scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}},
    "+crop": {"scales": [1.0], "tta": ["identity"], "crop": {"enabled": True}},
    "+scale2": {"scales": [1.0, 2.0], "tta": ["identity"], "crop": {"enabled": False}},
    "+tta": {"scales": [1.0], "tta": ["identity", "hflip"], "crop": {"enabled": False}},
    "+post": {"scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}, "post": "library default"},
    "default": {},
}


def _merge(base: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = base
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def _pairs(root: Path) -> list[tuple[str, Path, Path, Path | None]]:
    images = sorted(p for p in (root / "images").iterdir() if p.is_file())
    if not images:
        raise SystemExit(f"no images under {root}/images; expected images/NAME.ext + masks/NAME.png")
    out = []
    for img in images:
        mask = root / "masks" / f"{img.stem}.png"
        if not mask.is_file():
            raise SystemExit(f"{img} has no mask: expected {mask}")
        valid = root / "valid" / f"{img.stem}.png"
        out.append((img.stem, img, mask, valid if valid.is_file() else None))
    return out


def row_config(name: str, overrides: Sequence[str] = ()) -> Any:
    """The ``PipelineConfig`` of row ``name`` (a STAGES key): what ``python -m job run --backend classical`` resolves
    from that row's flags (backend defaults < row < ``overrides``, each ``KEY=VALUE`` with a YAML value)."""
    import yaml

    from finedetail.config import PostprocessConfig
    from job.config import job_config_from_dict

    if name not in STAGES:
        raise SystemExit(f"unknown config {name!r}; choose from {list(STAGES)}")
    values = json.loads(json.dumps(STAGES[name]))
    for kv in overrides:
        key, _, value = kv.partition("=")
        _merge(values, key, yaml.safe_load(value))
    if values.get("post") == "library default":
        values["post"] = dataclasses.asdict(PostprocessConfig())
    return job_config_from_dict({"input": "/unused", "output": "/unused", "prompts": "/unused",
                                 "backend": "classical", **values}).pipeline


def run(args: argparse.Namespace) -> dict[str, Any]:
    import cv2
    import numpy as np
    import yaml

    from finedetail.codecs import decode_image, decode_mask
    from finedetail.execute import run_image
    from finedetail.metrics import tolerance_f
    from finedetail.types import PromptPair
    from job.config import job_config_from_dict
    from job.models import build_coarse, build_refiner

    cv2.setNumThreads(args.threads)
    pairs = _pairs(Path(args.data))
    if len(pairs) < args.prompts + 1:
        raise SystemExit(f"{args.data} has {len(pairs)} pairs; need --prompts {args.prompts} and at least one input")
    prompts = [PromptPair(decode_image(i.read_bytes()), decode_mask(m.read_bytes()), name=n)
               for n, i, m, _ in pairs[:args.prompts]]
    inputs = [(n, decode_image(i.read_bytes()), decode_mask(m.read_bytes()),
               decode_mask(v.read_bytes()) if v is not None else None)
              for n, i, m, v in pairs[args.prompts:args.prompts + args.inputs]]
    options = {}
    for kv in args.option:
        key, _, value = kv.partition("=")
        options[key] = yaml.safe_load(value)
    job = job_config_from_dict({"input": "/unused", "output": "/unused", "prompts": "/unused", "backend": "classical",
                                "backend_options": options})
    t0, c0 = time.perf_counter(), time.process_time()
    coarse = build_coarse(job, prompts)
    fit = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    refiner = build_refiner(job)
    rows = []
    for name in args.configs.split(","):
        cfg = row_config(name, args.set)
        f1s, ious, tols, wall, cpu = [], [], [], [], []
        for _, image, gt, valid in inputs:
            t0, c0 = time.perf_counter(), time.process_time()
            pred = run_image(image, coarse, refiner, cfg).mask[0]
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if valid is not None:
                pred, gt = pred & valid, gt & valid
            tp, fp, fn = int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())
            f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
            ious.append(tp / max(1, tp + fp + fn))
            tols.append(tolerance_f(pred, gt, tol=2))
        mp = float(np.mean([im.shape[0] * im.shape[1] for _, im, _, _ in inputs])) / 1e6
        rows.append({"config": name, "f1": float(np.mean(f1s)), "iou": float(np.mean(ious)),
                     "tol_f": float(np.mean(tols)),
                     "wall_s": float(np.mean(wall)), "cpu_s": float(np.mean(cpu)), "megapixels": mp})
    return {"data": str(args.data), "prompts": [p.name for p in prompts], "inputs": [n for n, *_ in inputs],
            "threads": args.threads, "set": args.set, "options": options, "fit": fit, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m job.bench classical", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with images/, masks/ and optional valid/")
    p.add_argument("--prompts", type=int, default=2, help="first K pairs are the prompts (default 2)")
    p.add_argument("--inputs", type=int, default=8, help="the next N pairs are segmented (default 8)")
    p.add_argument("--threads", type=int, default=1, help="OpenCV and OpenMP threads (default 1)")
    p.add_argument("--configs", default=",".join(STAGES), help=f"comma-separated, from {list(STAGES)}")
    p.add_argument("--set", action="append", default=[], help="pipeline override KEY=VALUE, e.g. post.guided=false")
    p.add_argument("--option", action="append", default=[], help="backend option KEY=VALUE, e.g. coarse_iterations=100")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = p.parse_args(argv)
    if args.prompts < 1 or args.inputs < 1 or args.threads < 1:
        p.error(f"--prompts, --inputs and --threads must be >= 1, got {args.prompts}, {args.inputs}, {args.threads}")
    # before scikit-learn (OpenMP) is first imported: its thread count is read once
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['data']}: prompts {out['prompts']}, {len(out['inputs'])} inputs, {out['threads']} thread(s), "
          f"set {out['set'] or '-'}, options {out['options'] or '-'}")
    print(f"fit on the prompts: {out['fit']['wall_s']:.1f} s wall, {out['fit']['cpu_s']:.1f} s CPU (once per actor)")
    print(f"{'config':10s}{'F1':>8s}{'IoU':>8s}{'tol F':>8s}{'wall s/img':>12s}{'CPU s/img':>11s}{'MP':>7s}")
    for r in out["rows"]:
        print(f"{r['config']:10s}{r['f1']:8.3f}{r['iou']:8.3f}{r['tol_f']:8.3f}{r['wall_s']:12.2f}{r['cpu_s']:11.2f}"
              f"{r['megapixels']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
