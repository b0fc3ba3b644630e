"""Command line: ``python -m job run|quickstart|bench|report|config ...`` (also the ``finedetail`` console script).

``run`` reads its settings from ``--config FILE.yaml`` (optional) and the options below; the command line wins over
the file, the file over ``--preset``. Every setting is validated before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

__all__ = ["build_parser", "config_from_args", "main"]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,2 — got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("data")
    io.add_argument("--config", help="YAML file with any of the keys below (command line wins)")
    io.add_argument("--input", help="folder or prefix of images: /path/to/dir or s3://bucket/prefix")
    io.add_argument("--prompts", help="prompt pairs: images/NAME.<ext> + masks/NAME.png under this URI")
    io.add_argument("--coarse", help="coarse masks made elsewhere (same relative keys as --input, .png); "
                                     "replaces SegGPT's coarse step")
    io.add_argument("--output", help="where masks/, probs/, rle/, overlays/ and manifest/ go (folder or s3://)")
    io.add_argument("--limit", type=int, help="process at most N inputs (trial runs)")
    io.add_argument("--classes", type=_names, help="class names in mask-index order, e.g. road,water (default: object)")
    io.add_argument("--coco", action="store_const", const=True, default=None,
                    help="write instances/<key>.json per image and a dataset-level coco.json")
    io.add_argument("--no-overlays", dest="overlays", action="store_const", const=False, help="skip overlays/")
    io.add_argument("--max-pixels", type=int, help="refuse images with more pixels than this (decompression bombs)")
    m = p.add_argument_group("models")
    m.add_argument("--backend", choices=("seggpt-sam", "classical", "proxy"),
                   help="seggpt-sam (default, needs weights), classical (weight-free, lower quality), "
                        "proxy (benchmarks only)")
    m.add_argument("--refiner", choices=("sam", "sam-hq", "sam2"),
                   help="the promptable refiner: sam (default, segment-anything), sam-hq (HQ-SAM: finer boundaries, "
                        "~5 M more parameters) or sam2 (SAM 2.1: faster encoder); README, Choosing the refiner")
    m.add_argument("--sam-checkpoint", help="the refiner's weights. sam: a .pth, local path, s3:// or https:// "
                                            "(default: official vit_h URL); sam-hq / sam2: a transformers directory, "
                                            "s3:// prefix or Hub id (default: syscv-community/sam-hq-vit-huge, "
                                            "facebook/sam2.1-hiera-large)")
    m.add_argument("--sam-model-type", choices=("vit_h", "vit_l", "vit_b"), help="default: inferred from weights")
    m.add_argument("--sam-sha256", metavar="HEX|skip",
                   help="expected SHA-256 of the SAM checkpoint. Default: the official URLs are checked against "
                        "their pinned digests, other sources are not. A local or cached file that does not match is "
                        "reported and kept, never deleted; 'skip' accepts it unchecked")
    m.add_argument("--seggpt-checkpoint", help="SegGPT: transformers directory, s3:// prefix or hub id "
                                               "(default BAAI/seggpt-vit-large)")
    m.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    meth = p.add_argument_group("method")
    meth.add_argument("--preset", choices=("wildlife", "satellite", "medical", "technical"))
    meth.add_argument("--scales", type=_floats, help="e.g. 1,2 (a scale whose image exceeds 1024 px is tiled)")
    meth.add_argument("--tta", type=_names, help="e.g. identity,hflip,rot90,shift:8,8")
    meth.add_argument("--ensemble", choices=("union", "majority", "mean", "majority_or_confident"))
    meth.add_argument("--no-crop", action="store_true", help="turn high-resolution crop refinement off")
    meth.add_argument("--selective", action="store_true", help="selective compute (fewer encoder passes)")
    meth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="any config key, dotted for sections, value in YAML: --set post.radius=8 "
                           "--set refine.multimask=iou (repeatable)")
    res = p.add_argument_group("resources")
    res.add_argument("--gpu", choices=("auto", "on", "off"), help="ask for GPUs (default auto: if the cluster has any)")
    res.add_argument("--coarse-gpus", type=float, help="GPU fraction per coarse actor")
    res.add_argument("--refiner-gpus", type=float, help="GPU fraction per refiner actor (refine and crop steps)")
    res.add_argument("--max-actors", type=int, help="upper bound of each model actor pool")
    res.add_argument("--chain", choices=("auto", "on", "off"),
                     help="run all model stages in one actor pool (default auto: on when they run on CPU)")
    res.add_argument("--batch-size", type=int, help="rows per model batch")
    res.add_argument("--encode-batch", type=int, help="images per encoder forward")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    from job.lease import LEASE_KEY, STALE_S

    p.add_argument("--force-lease", action="store_true",
                   help=f"take the output's lease ({LEASE_KEY}) even if another driver holds it: only when that "
                        f"driver is gone (a lease without heartbeat for {STALE_S / 60:.0f} minutes is taken over "
                        "without this)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finedetail", description="Fine-detail segmentation of image archives "
                                     "on Ray Data (SegGPT + SAM hybrid, no retraining).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment every image under --input", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(run)
    qs = sub.add_parser("quickstart", help="generate example scenes, run the job with the classical backend, "
                                            "print single-pass vs fine-detail metrics")
    qs.add_argument("--workdir", default="finedetail-quickstart", help="where data and outputs go")
    qs.add_argument("--images", type=int, default=6)
    qs.add_argument("--size", type=int, default=768)
    qs.add_argument("--address", help="Ray address (default: a local Ray)")
    sub.add_parser("bench", help="benchmarks: python -m job.bench --help", add_help=False)
    sub.add_parser("report", help="a static HTML page of a run's output: python -m job report OUTPUT "
                                  "[--out FILE] (--help for more)", add_help=False)
    doc = sub.add_parser("config", help="describe the config: --doc prints every key (README, Configuration "
                                        "reference)")
    doc.add_argument("--doc", action="store_true", help="print every key: type, default, range, what it does")
    doc.add_argument("--readme", metavar="FILE", help="with --doc: rewrite that file's reference section instead")
    return parser


_FLAG_KEYS = {
    "input": "input", "prompts": "prompts", "coarse": "coarse", "output": "output", "limit": "limit",
    "classes": "classes", "overlays": "overlays", "coco": "coco", "max_pixels": "max_pixels", "backend": "backend", "refiner": "refiner",
    "sam_checkpoint": "sam_checkpoint", "sam_model_type": "sam_model_type", "sam_sha256": "sam_sha256",
    "seggpt_checkpoint": "seggpt_checkpoint", "device": "device", "preset": "preset", "scales": "scales",
    "tta": "tta", "ensemble": "ensemble.rule", "gpu": "resources.gpu", "coarse_gpus": "resources.coarse_gpus",
    "refiner_gpus": "resources.refiner_gpus",
    "max_actors": "resources.max_actors", "batch_size": "resources.batch_size",
    "chain": "resources.chain",
    "encode_batch": "resources.encode_batch",
}


def _put(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"config key {dotted!r}: {p!r} is not a section")
        d = nxt
    d[parts[-1]] = value


def config_from_args(args: argparse.Namespace):
    """YAML file (if any) overridden by the command line -> validated JobConfig."""
    import yaml

    from job.config import job_config_from_dict, load_yaml

    values: dict[str, Any] = {}
    if args.config:
        from job import io as jio

        values = load_yaml(jio.read_uri(args.config).decode())
    for attr, key in _FLAG_KEYS.items():
        v = getattr(args, attr, None)
        if v is not None:
            _put(values, key, v)
    if args.no_crop:
        _put(values, "crop.enabled", False)
    if args.selective:
        _put(values, "selective.enabled", True)
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        _put(values, key.strip(), yaml.safe_load(raw))
    return job_config_from_dict(values)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from job.bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "report":
        from job.report import main as report_main

        return report_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "config":
        from job.configdoc import main as config_main

        return config_main(doc=args.doc, readme=args.readme)
    if args.command == "quickstart":
        from job.quickstart import quickstart

        return quickstart(workdir=args.workdir, images=args.images, size=args.size, address=args.address)
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.exit(2, f"finedetail: error: {exc}\n")
    from job.run import JobFailed, JobRefused, run_job

    try:
        summary = run_job(cfg, address=args.address, force_lease=args.force_lease)
    except JobRefused as exc:  # refused before any work: nothing written, Ray not started
        parser.exit(2, f"finedetail: error: {exc}\n")
    except JobFailed as exc:  # stopped part-way; finished rows are in the manifest and a rerun resumes
        parser.exit(1, f"finedetail: failed: {exc}\n")
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["errors"] == 0 or summary["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
