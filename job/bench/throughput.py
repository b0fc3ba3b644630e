"""End-to-end throughput of the Ray job (``job.run.run_job``) on generated images.

Usage: ``python -m job.bench throughput [--images 16] [--size 512] [--refiner sam|sam-hq|sam2]
[--arch tiny|vit_b|vit_l|vit_h|hiera_t|hiera_s|hiera_b+|hiera_l] [--json]``.

``--refiner sam-hq|sam2`` runs the job with that refiner (``--refiner`` of ``python -m job run``); its random-weight
checkpoint is a transformers ``save_pretrained`` directory (tiny, or a full size of ``finedetail.models.tiny.HF_ARCHS``).

Writes ``--images`` scenes (``finedetail.synthetic.make_scene``, the four kinds in turn, PNG) and one prompt pair
(``prompts/images/p0.png`` + ``prompts/masks/p0.png``) to a temporary folder, saves random-weight checkpoints in
the official formats (tiny SAM + tiny SegGPT by default; ``--arch vit_b|vit_l|vit_h`` saves a full-size SAM
``.pth`` instead, ~0.4 / 1.2 / 2.5 GB, meant for a GPU machine; ``--seggpt full`` a full-size SegGPT), builds a
``JobConfig`` with ``job.config.job_config_from_dict`` (backend ``seggpt-sam``, the default method unless
``--scales`` / ``--tta`` / ``--no-crop``; ``refine.skip_empty`` off, so every refiner window is encoded although
random weights give empty coarse maps) and runs the job on the local Ray (started here when not running;
its start-up is timed apart and not part of the job's time).

Reports images/s and encoder passes/s over the job's wall time, then from the manifest (``output/manifest/*.parquet``,
columns ``seconds_<stage>``: each stage's actor time per image) the time per image of each stage, the rate of each
model stage (megapixels and encoder passes per actor-second) and the fuse stage's megapixels/s per core (megapixels
per second of fuse time: fuse runs in the write tasks, one process each, whatever fraction ``fuse_cpus`` (the write
task's ``io_cpus``) it reserves; it is the stage that must keep up with the GPU stages, so compare its rate with
theirs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["ensure_ray", "main", "read_manifest_table", "run", "stage_breakdown", "write_dataset"]

STAGES = ("decode", "coarse", "refine", "crop", "fuse", "write")
MODEL_STAGES = ("coarse", "refine", "crop")


def parse_size(text: str) -> tuple[int, int]:
    """"512" -> (512, 512); "384x512" -> (384, 512) as (h, w)."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW like 384x512, got {text!r}") from None
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 32:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with sides >= 32, got {text!r}")
    return hw  # type: ignore[return-value]


def write_dataset(root: Path, *, n: int, hw: tuple[int, int], seed: int = 0) -> tuple[Path, Path, int]:
    """``root/images/img_XXXX.png`` (n generated scenes) and ``root/prompts/{images,masks}/p0.png``.
    Returns (images dir, prompts dir, total pixels)."""
    from finedetail import synthetic
    from finedetail.codecs import encode_png

    images, prompts = root / "images", root / "prompts"
    images.mkdir(parents=True, exist_ok=True)
    pixels = 0
    for i in range(n):
        scene = synthetic.make_scene(synthetic.KINDS[i % len(synthetic.KINDS)], seed=seed + i, size=hw)
        (images / f"img_{i:04d}.png").write_bytes(encode_png(scene.image))
        pixels += hw[0] * hw[1]
    for sub in ("images", "masks"):
        (prompts / sub).mkdir(parents=True, exist_ok=True)
    p_image, p_mask = synthetic.make_prompt_pair("fur", seed=10_000 + seed, size=hw)
    (prompts / "images/p0.png").write_bytes(encode_png(p_image))
    (prompts / "masks/p0.png").write_bytes(encode_png(p_mask.astype(np.uint8) * 255))
    return images, prompts, pixels


def write_weights(root: Path, *, arch: str, seggpt: str, refiner: str = "sam") -> tuple[str, str]:
    """Random-weight checkpoints in the official formats -> (refiner checkpoint: SAM .pth path or a SAM-HQ / SAM 2
    ``save_pretrained`` directory, SegGPT directory)."""
    import torch
    from transformers import SegGptConfig, SegGptForImageSegmentation, SegGptImageProcessor

    from finedetail.models.tiny import SAM_ARCHS, build_hf_refiner, build_sam, save_tiny_sam, save_tiny_seggpt

    root.mkdir(parents=True, exist_ok=True)
    sam_path = root / f"sam_{arch}.pth"
    if refiner != "sam":
        sam_path = root / f"{refiner}_{arch}"
        model, processor = build_hf_refiner(refiner, arch)
        model.save_pretrained(sam_path)
        processor.save_pretrained(sam_path)
        del model
    elif arch == "tiny":
        save_tiny_sam(sam_path)
    else:
        sam = build_sam(SAM_ARCHS[arch], seed=0)
        torch.save(sam.state_dict(), sam_path)
        del sam
    seggpt_dir = root / f"seggpt_{seggpt}"
    if seggpt == "tiny":
        save_tiny_seggpt(seggpt_dir)
    else:  # transformers' default SegGptConfig is the seggpt-vit-large architecture
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = SegGptForImageSegmentation(SegGptConfig()).eval()
        model.save_pretrained(seggpt_dir)
        SegGptImageProcessor().save_pretrained(seggpt_dir)
        del model
    return str(sam_path), str(seggpt_dir)


def ensure_ray(*, num_cpus: int | None = None, quiet: bool = True) -> float:
    """Start a local Ray unless one is running; returns the seconds its start took (0 when it was running)."""
    import ray

    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    if quiet:
        kwargs.update(log_to_driver=False, configure_logging=False)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(address="local", **kwargs)
    if quiet:
        ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - t0


def read_manifest_table(output: str | Path) -> list[dict[str, Any]]:
    """Every manifest row under ``output/manifest/*.parquet``."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for part in sorted(Path(output, "manifest").glob("*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def stage_breakdown(rows: Sequence[dict[str, Any]], *, fuse_cpus: float | None = None) -> dict[str, Any]:
    """Per-stage numbers from manifest rows (ok rows only): mean seconds per image, megapixels and encoder passes
    per actor-second of each model stage, and the fuse stage's megapixels/s per core."""
    ok = [r for r in rows if r["status"] == "ok"]
    mpx = sum(r["height"] * r["width"] for r in ok) / 1e6
    out: dict[str, Any] = {"images": len(ok), "megapixels": mpx}
    for s in STAGES:
        total = sum(r.get(f"seconds_{s}") or 0.0 for r in ok)
        out[f"seconds_{s}_per_image"] = total / max(1, len(ok))
        out[f"seconds_{s}_total"] = total
    for s in MODEL_STAGES:
        total = out[f"seconds_{s}_total"]
        out[f"{s}_mpx_per_s"] = mpx / total if total > 0 else None
    coarse_p = sum(r["coarse_passes"] or 0 for r in ok)
    refiner_p = sum(r["refiner_passes"] or 0 for r in ok)
    sam_s = out["seconds_refine_total"] + out["seconds_crop_total"]
    out.update(coarse_passes=coarse_p, refiner_passes=refiner_p,
               coarse_passes_per_s=coarse_p / out["seconds_coarse_total"] if out["seconds_coarse_total"] else None,
               refiner_passes_per_s=refiner_p / sam_s if sam_s else None)
    fuse_s = out["seconds_fuse_total"]
    out["fuse_mpx_per_s"] = mpx / fuse_s if fuse_s else None
    out["fuse_cpus"] = fuse_cpus
    # seconds_fuse is wall time inside one single-process write task, i.e. on one core (Ray's fractional num_cpus
    # is a scheduling reservation, not a limit): megapixels per actor-second is the rate per core
    out["fuse_mpx_per_s_per_core"] = out["fuse_mpx_per_s"]
    return out


def run(*, images: int = 16, size: tuple[int, int] = (512, 512), arch: str = "tiny", seggpt: str = "tiny",
        refiner: str = "sam",
        device: str | None = None, scales: Sequence[float] | None = None, tta: Sequence[str] | None = None,
        crop: bool = True, resources: dict[str, Any] | None = None, workdir: str | None = None,
        num_cpus: int | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the numbers ``main`` prints."""
    import ray

    from job.config import job_config_from_dict
    from job.run import plan_resources, run_job

    with tempfile.TemporaryDirectory(prefix="fd-throughput-", dir=workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        in_dir, prompts, _ = write_dataset(root / "data", n=images, hw=size)
        sam_path, seggpt_dir = write_weights(root / "weights", arch=arch, seggpt=seggpt, refiner=refiner)
        prep_s = time.perf_counter() - t0
        values: dict[str, Any] = {
            "input": str(in_dir), "prompts": str(prompts), "output": str(root / "out"), "backend": "seggpt-sam",
            "refiner": refiner,
            "sam_checkpoint": sam_path, "seggpt_checkpoint": seggpt_dir, "device": device,
            "resources": dict(resources or {}),
            # random weights give empty coarse maps: without this every refiner window would be skipped as
            # prompt-less (refine.skip_empty) and the bench would time no SAM encoder work at all
            "refine": {"skip_empty": False},
        }
        if scales is not None:
            values["scales"] = list(scales)
        if tta is not None:
            values["tta"] = list(tta)
        if not crop:
            values["crop"] = {"enabled": False}
        cfg = job_config_from_dict(values)
        ray_start_s = ensure_ray(num_cpus=num_cpus)
        plan = plan_resources(cfg, ray.cluster_resources())
        log = io.StringIO()
        t0 = time.perf_counter()
        summary = run_job(cfg, out=log)
        wall = time.perf_counter() - t0
        rows = read_manifest_table(root / "out")
    stages = stage_breakdown(rows, fuse_cpus=plan.io_cpus)
    passes = stages["coarse_passes"] + stages["refiner_passes"]
    return {
        "images": images,
        "ok": summary["ok"],
        "errors": summary["errors"],
        "size_hw": list(size),
        "refiner": refiner,
        "arch": arch,
        "seggpt": seggpt,
        "device": device or "auto",
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")},
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
        "prepare_s": prep_s,
        "ray_start_s": ray_start_s,
        "wall_s": wall,
        "images_per_s": summary["ok"] / wall if wall > 0 else 0.0,
        "encoder_passes": passes,
        "encoder_passes_per_image": passes / max(1, summary["ok"]),
        "encoder_passes_per_s": passes / wall if wall > 0 else 0.0,
        "stages": stages,
    }


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (``job.bench`` dispatches here); prints a table, or one JSON object with ``--json``."""
    p = argparse.ArgumentParser(prog="job.bench throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16, help="generated images (default 16)")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="image size N or HxW (default 512)")
    p.add_argument("--refiner", default="sam", choices=("sam", "sam-hq", "sam2"), help="the job's --refiner")
    p.add_argument("--arch", default="tiny",
                   choices=("tiny", "vit_b", "vit_l", "vit_h", "hiera_t", "hiera_s", "hiera_b+", "hiera_l"),
                   help="refiner size, random weights (default tiny; full sizes are meant for a GPU; vit_* for sam "
                        "and sam-hq, hiera_* for sam2)")
    p.add_argument("--seggpt", default="tiny", choices=("tiny", "full"), help="SegGPT size, random weights")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--scales", type=_floats, default=None, help="e.g. 1,2 (default: the method's default)")
    p.add_argument("--tta", type=_names, default=None, help="e.g. identity,hflip (default: the method's default)")
    p.add_argument("--no-crop", dest="crop", action="store_false", help="crop refinement off")
    p.add_argument("--batch-size", type=int, default=None, help="resources.batch_size (rows per map_batches call)")
    p.add_argument("--encode-batch", type=int, default=None, help="resources.encode_batch (images per forward)")
    p.add_argument("--max-actors", type=int, default=None, help="resources.max_actors per model pool")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray started here (default: all)")
    p.add_argument("--workdir", default=None, help="parent of the temporary folder (default: system temp)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    if args.arch != "tiny" and (args.refiner == "sam2") != args.arch.startswith("hiera"):
        p.error(f"--arch {args.arch} is not a {args.refiner} size (vit_* for sam / sam-hq, hiera_* for sam2)")
    res_kw = {k: v for k, v in (("batch_size", args.batch_size), ("encode_batch", args.encode_batch),
                                ("max_actors", args.max_actors)) if v is not None}
    res = run(images=args.images, size=args.size, arch=args.arch, seggpt=args.seggpt, refiner=args.refiner,
              device=args.device,
              scales=args.scales, tta=args.tta, crop=args.crop, resources=res_kw, workdir=args.workdir,
              num_cpus=args.num_cpus)
    if args.json:
        print(json.dumps(res, default=str))
        return 0
    st = res["stages"]
    print(f"throughput bench: {res['images']} images {res['size_hw'][1]}x{res['size_hw'][0]}, refiner "
          f"{res['refiner']} {res['arch']}, "
          f"SegGPT {res['seggpt']}, cluster {res['cluster']}; Ray start {res['ray_start_s']:.1f} s (not counted)")
    print(f"job: {res['ok']} ok, {res['errors']} errors in {res['wall_s']:.1f} s -> {res['images_per_s']:.3f} "
          f"images/s, {res['encoder_passes_per_s']:.2f} encoder passes/s ({res['encoder_passes_per_image']:.1f} "
          f"per image)")
    print(f"{'stage':8s} {'s/image':>9s} {'MPx/s':>9s}  (actor time per image, from the manifest)")
    for s in STAGES:
        rate = st.get(f"{s}_mpx_per_s")
        print(f"{s:8s} {st[f'seconds_{s}_per_image']:9.3f} {'' if rate is None else f'{rate:9.3f}'}")
    if st["refiner_passes_per_s"]:
        print(f"SAM passes per actor-second (refine + crop): {st['refiner_passes_per_s']:.2f}")
    if st["fuse_mpx_per_s_per_core"]:
        print(f"fuse: {st['fuse_mpx_per_s_per_core']:.2f} MPx/s per core (fuse_cpus={st['fuse_cpus']}) vs "
              + ", ".join(f"{s} {st[f'{s}_mpx_per_s']:.2f}" for s in MODEL_STAGES if st.get(f"{s}_mpx_per_s"))
              + " MPx/s per model actor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
