"""Command line: ``python -m job run|quickstart|bench|report|config ...`` (also the ``finedetail`` console script).

``run`` reads its settings from ``--config FILE.yaml`` (optional) and the options below; the command line wins over
the file, the file over ``--preset``. Every setting is validated before any work starts. Exit statuses:
`job.errors`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

__all__ = ["build_parser", "config_from_args", "main"]

RUN_DESCRIPTION = """\
Segment every image under --input. Settings come from --config FILE.yaml (optional) and the options below; the
command line wins over the file, the file over --preset. Every setting is validated before any work starts."""

RUN_EPILOG = """\
examples:
  weight-free trial on 5 images:
    python -m job run --backend classical --input photos/ --prompts prompts/ --output out/ --limit 5
  SegGPT + SAM on S3, two scales and a flip:
    python -m job run --input s3://archive/photos --prompts s3://archive/prompts \\
        --output s3://archive/out --scales 1,2 --tta identity,hflip
  settings from a file, one key changed:
    python -m job run --config job.yaml --set post.radius=8
  every config key: python -m job config --doc

exit status: 0 done, 1 the job failed (a re-run resumes) or every input failed, 2 refused before any work
(nothing written), 3 with --strict when some inputs became error rows, 130 interrupted (a re-run resumes)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``finedetail run: error: ...; see --help`` (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,2 — got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_run_options(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("data")
    io.add_argument("--config", metavar="FILE", help="YAML file with any of the keys below (command line wins)")
    io.add_argument("--input", metavar="URI", help="required (here or in --config): folder or prefix of images, "
                                                   "/path/to/dir or s3://bucket/prefix")
    io.add_argument("--prompts", metavar="URI", help="required unless --coarse: prompt pairs, images/NAME.<ext> + "
                                                     "masks/NAME.png under this URI")
    io.add_argument("--coarse", metavar="URI", help="coarse masks made elsewhere (same relative keys as --input, "
                                                    ".png); replaces SegGPT's coarse step")
    io.add_argument("--output", metavar="URI", help="required (here or in --config): where masks/, probs/, rle/, "
                                                    "overlays/ and manifest/ go (folder or s3://)")
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
    meth.add_argument("--preset", choices=("wildlife", "satellite", "medical", "technical"),
                      help="method keys tuned for a domain (README, Presets); explicit keys win")
    meth.add_argument("--scales", type=_floats, help="e.g. 1,2 (a scale whose image exceeds 1024 px is tiled)")
    meth.add_argument("--tta", type=_names, help="e.g. identity,hflip,rot90,shift:8,8")
    meth.add_argument("--ensemble", choices=("union", "majority", "mean", "majority_or_confident"),
                      help="how the variants' maps are combined (ensemble.rule)")
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
    out = p.add_argument_group("output of the command")
    out.add_argument("--strict", action="store_true",
                     help="exit with status 3 when some inputs became error rows (default 0: they are listed)")
    out.add_argument("--progress-every", type=int, metavar="N",
                     help="in a log, a progress line every N images (default: a twentieth of the run)")
    out.add_argument("--progress-seconds", type=float, default=30.0, metavar="S",
                     help="in a log, a progress line at least every S seconds (default 30)")
    from job.lease import LEASE_KEY, STALE_S

    p.add_argument("--force-lease", action="store_true",
                   help=f"take the output's lease ({LEASE_KEY}) even if another driver holds it: only when that "
                        f"driver is gone (a lease without heartbeat for {STALE_S / 60:.0f} minutes is taken over "
                        "without this)")
    out.add_argument("--json", action="store_true",
                     help="print the summary as one JSON document on stdout (and nothing else there)")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="show Ray's own logs (INFO) and tracebacks of unexpected errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finedetail", description="Fine-detail segmentation of image archives "
                     "on Ray Data (SegGPT + SAM hybrid, no retraining).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment every image under --input", description=RUN_DESCRIPTION,
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(run)
    qs = sub.add_parser("quickstart", help="generate example scenes, run the job with the classical backend, "
                                            "print single-pass vs fine-detail metrics",
                        epilog="example: python -m job quickstart --images 3 --size 512",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    qs.add_argument("--workdir", default="finedetail-quickstart", help="where data and outputs go")
    qs.add_argument("--images", type=int, default=6, help="number of generated scenes (default 6)")
    qs.add_argument("--size", type=int, default=768, help="scene side in px (default 768; >= 64)")
    qs.add_argument("--address", help="Ray address (default: a local Ray)")
    qs.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs (INFO)")
    sub.add_parser("bench", help="benchmarks: python -m job.bench --help", add_help=False)
    sub.add_parser("report", help="a static HTML page of a run's output: python -m job report OUTPUT "
                                  "[--out FILE] (--help for more)", add_help=False)
    doc = sub.add_parser("config", help="describe the config: --doc prints every key (README, Configuration "
                                        "reference)")
    doc.add_argument("--doc", action="store_true", help="print every key: type, default, range, what it does")
    doc.add_argument("--readme", metavar="FILE", help="with --doc: rewrite that file's reference section instead")
    return parser


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

    from job.config import FLAG_KEYS, job_config_from_dict, load_yaml

    from job import io as jio
    from job.errors import config_file_error

    values: dict[str, Any] = {}
    if args.config:
        try:
            values = load_yaml(jio.read_uri(args.config).decode())
        except (OSError, jio.StorageError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(config_file_error(jio.redact(args.config), exc)) from exc
        except ValueError as exc:
            raise ValueError(f"--config {jio.redact(args.config)}: {exc}") from exc
    for attr, key in FLAG_KEYS.items():
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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item}: the value is not valid YAML ({getattr(exc, 'problem', exc)}); quote "
                             "strings with YAML's special characters") from None
        _put(values, key.strip(), value)
    return job_config_from_dict(values)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (`job.errors`). Every error is one line on stderr."""
    from job import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from job.bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "report":
        from job.report import main as report_main

        return report_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    from job.logs import setup_logging

    setup_logging(verbose)
    try:
        return _command(args)
    except KeyboardInterrupt:
        print("finedetail: interrupted; images finished so far are in the manifest, re-run the same command to "
              "resume", file=sys.stderr, flush=True)
        return errors.INTERRUPTED
    except Exception as exc:  # a bug or an error the job does not explain yet: still one line, unless -v
        if verbose:
            raise
        print(f"finedetail: failed: {type(exc).__name__}: {errors.one_line(exc)} (re-run with -v for the "
              "traceback)", file=sys.stderr, flush=True)
        return errors.FAILED


def _command(args: argparse.Namespace) -> int:
    from job import errors

    if args.command == "config":
        from job.configdoc import main as config_main

        return config_main(doc=args.doc, readme=args.readme)
    if args.command == "quickstart":
        from job.quickstart import quickstart

        if args.images < 1 or args.size < 64:
            return _refuse(f"quickstart needs --images >= 1 and --size >= 64, got --images {args.images} --size "
                           f"{args.size}")
        return quickstart(workdir=args.workdir, images=args.images, size=args.size, address=args.address,
                          quiet=not args.verbose)
    try:
        cfg = config_from_args(args)
        from job.progress import ProgressOptions

        progress = ProgressOptions(every=args.progress_every, seconds=args.progress_seconds)
    except (ValueError, TypeError) as exc:
        return _refuse(errors.one_line(exc))
    from job.run import JobFailed, JobRefused, run_job

    # with --json stdout holds the JSON document only: our lines and anything Ray prints go to stderr
    out = sys.stderr if args.json else sys.stdout
    stdout, sys.stdout = sys.stdout, out
    try:
        summary = run_job(cfg, address=args.address, force_lease=args.force_lease, out=out, progress=progress,
                          quiet=not args.verbose)
    except JobRefused as exc:  # refused before any work: nothing written, Ray not started
        return _refuse(errors.one_line(exc))
    except JobFailed as exc:  # stopped part-way; finished rows are in the manifest and a rerun resumes
        print(f"finedetail: failed: {errors.one_line(exc)}", file=sys.stderr, flush=True)
        return errors.FAILED
    finally:
        sys.stdout = stdout
    if args.json:
        print(json.dumps(summary), flush=True)
    return errors.exit_status(summary, strict=args.strict)


def _refuse(message: str) -> int:
    from job.errors import REFUSED

    print(f"finedetail: error: {message}", file=sys.stderr, flush=True)
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
