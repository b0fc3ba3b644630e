"""Bake model weights into the image at build time (Dockerfile build args ``SAM_CHECKPOINT_URL``,
``SAM_CHECKPOINT_SHA256``, ``SEGGPT_CHECKPOINT``). Not needed at run time: by default the image carries no weights and
the job fetches them into ``$FINEDETAIL_CACHE`` (``/cache``, a volume) on first use.

    python bake_weights.py --dest /opt/finedetail/weights --sam URL [--sam-sha256 HEX] [--seggpt HUB_ID_OR_URI]

SAM: the file lands as ``DEST/<basename of URL>``, SHA-256-verified (the official vit_h/vit_l/vit_b URLs are
checked against ``finedetail.models.weights.SAM_SHA256`` when no digest is given). SegGPT (a Hub id such as
``BAAI/seggpt-vit-large``, an ``s3://`` prefix or a directory) is saved as a ``save_pretrained`` directory
``DEST/seggpt``. Prints the ``python -m job run`` flags that use the baked files. Uses the project's own loaders, so
what is baked is exactly what the job would have downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path


def bake_sam(url: str, dest: Path, sha256: str | None = None) -> Path:
    from finedetail.models.weights import SAM_SHA256, SAM_URLS, resolve_checkpoint

    if not sha256:
        sha256 = {u: SAM_SHA256.get(k) for k, u in SAM_URLS.items()}.get(url)
    name = Path(urllib.parse.urlparse(url).path).name or "sam.pth"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        got = resolve_checkpoint(url, cache_dir=tmp, sha256=sha256)
        target = dest / name
        shutil.copyfile(got, target)
    return target


def bake_seggpt(source: str, dest: Path) -> Path:
    from finedetail.models.checkpoints import load_seggpt

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "seggpt"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        model, processor = load_seggpt(source, device="cpu", cache_dir=tmp, offline=False)
        model.save_pretrained(target)
        processor.save_pretrained(target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, required=True, help="folder in the image, e.g. /opt/finedetail/weights")
    ap.add_argument("--sam", help="SAM checkpoint: https://, s3:// or a local path")
    ap.add_argument("--sam-sha256", help="expected SHA-256 of the SAM checkpoint")
    ap.add_argument("--seggpt", help="SegGPT: Hub id (BAAI/seggpt-vit-large), s3:// prefix or directory")
    args = ap.parse_args(argv)
    flags = []
    if args.sam:
        flags.append(f"--sam-checkpoint {bake_sam(args.sam, args.dest, args.sam_sha256)}")
    if args.seggpt:
        flags.append(f"--seggpt-checkpoint {bake_seggpt(args.seggpt, args.dest)}")
    print("baked: python -m job run ... " + " ".join(flags) if flags else "nothing to bake")
    return 0


if __name__ == "__main__":
    sys.exit(main())
