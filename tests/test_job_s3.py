"""The job reading from and writing to a real S3 server (SeaweedFS on loopback), run as the CLI would be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from jobkit import CORRUPT, write_inputs, write_prompts

ROOT = Path(__file__).resolve().parents[1]


def _upload(client, bucket: str, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(local).as_posix()}",
                              Body=path.read_bytes())


def test_job_reads_and_writes_s3(s3_server, tiny_weights, tmp_path):
    import pyarrow.parquet as pq
    from pycocotools import mask as mask_utils

    keys = write_inputs(tmp_path / "in", n_good=5)
    write_prompts(tmp_path / "prompts")
    bucket = s3_server.make_bucket("archive")
    client = s3_server.client()
    _upload(client, bucket, tmp_path / "in", "photos")
    _upload(client, bucket, tmp_path / "prompts", "prompts")
    # the SAM checkpoint comes from S3 too, through the real loader
    client.put_object(Bucket=bucket, Key="weights/sam_tiny.pth", Body=Path(tiny_weights["sam"]).read_bytes())

    env = {**os.environ, **s3_server.env(), "RAY_ADDRESS": "local", "FINEDETAIL_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "job", "run", "--input", f"s3://{bucket}/photos",
           "--prompts", f"s3://{bucket}/prompts", "--output", f"s3://{bucket}/out",
           "--backend", "seggpt-sam", "--sam-checkpoint", f"s3://{bucket}/weights/sam_tiny.pth",
           "--seggpt-checkpoint", tiny_weights["seggpt"], "--device", "cpu",
           "--scales", "1", "--tta", "identity,hflip", "--json"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert s3_server.secret_key not in done.stdout + done.stderr

    listing = client.list_objects_v2(Bucket=bucket, Prefix="out/")
    written = {o["Key"][len("out/"):] for o in listing.get("Contents", [])}
    good = [k for k in keys if k not in CORRUPT]
    for key in good:
        stem = os.path.splitext(key)[0]
        assert {f"masks/{stem}.png", f"probs/{stem}.png", f"rle/{stem}.json", f"overlays/{stem}.png"} <= written
        rle = __import__("json").loads(client.get_object(Bucket=bucket, Key=f"out/rle/{stem}.json")["Body"].read())
        assert mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).shape[:2] == tuple(rle["size"])
    for key in CORRUPT:
        assert not any(w.startswith(f"masks/{os.path.splitext(key)[0]}") for w in written)
    # pyarrow keeps an emptied "directory" as a 0-byte marker object ("manifest/"): the parts are the .parquet keys
    parts = [w for w in written if w.startswith("manifest/") and w.endswith(".parquet")]
    rows = []
    for part in parts:
        local = tmp_path / "part.parquet"
        local.write_bytes(client.get_object(Bucket=bucket, Key=f"out/{part}")["Body"].read())
        rows.extend(pq.read_table(local).to_pylist())
    assert sorted(r["key"] for r in rows) == keys
    status = {r["key"]: r["status"] for r in rows}
    assert all(status[k] == "ok" for k in good) and all(status[k] == "error" for k in CORRUPT)
    assert np.all([r["encoder_passes"] > 0 for r in rows if r["status"] == "ok"])
