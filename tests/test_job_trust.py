"""What a careful user finds in the first hour (issue 16): documented behaviour that must be true, layouts and
paths that must not surprise, failures that must be one-line refusals, two drivers on one output."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job import io as jio
from job import manifest as jm

ROOT = Path(__file__).resolve().parents[1]


def _row(key: str, status: str, t: float, config_hash: str = "h") -> dict:
    return {"key": key, "status": status, "error": "", "config_hash": config_hash, "finished_at": t}


# ------------------------------------------------------------------------------------------------- manifest docs


def test_manifest_statuses_are_the_documented_ones(tmp_path):
    """The README lists exactly the statuses rows can have; no other status is written or counted as done."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| `manifest/part-"))
    documented = re.search(r"status \(([^)]*)\)", line).group(1)
    assert documented == "/".join(f"`{s}`" for s in jm.STATUSES) == "`ok`/`error`"
    storage = jio.open_storage(str(tmp_path))[0]
    with pytest.raises(ValueError, match=r"status must be one of \('ok', 'error'\), got 'skipped'"):
        jm.write_part(storage, [_row("a", "skipped", time.time())])
    # a row written by hand (or by an older version) with another status is not "done": the input runs again
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.Table.from_pylist([_row("a", "skipped", 1.0), _row("b", "ok", 1.0)], schema=jm.SCHEMA),
                   tmp_path / "manifest" / "part-x.parquet")
    assert jm.done_keys(storage, "h") == {"b"}


def test_a_batch_written_again_adds_a_part_and_its_latest_rows_win(tmp_path):
    """As the manifest module says: a re-written batch adds a part (the name holds its finish time), the later rows
    are the ones read."""
    storage = jio.open_storage(str(tmp_path))[0]
    first = jm.write_part(storage, [_row("a", "error", 1.0), _row("b", "ok", 1.0)])
    second = jm.write_part(storage, [_row("a", "ok", 2.0), _row("b", "ok", 2.0)])
    assert first != second and first.startswith("manifest/part-") and second.endswith("-2000.parquet")
    assert len(jm.read_manifest(storage)) == 4
    assert {k: r["finished_at"] for k, r in jm.latest_rows(jm.read_manifest(storage)).items()} == {"a": 2.0, "b": 2.0}
    assert jm.done_keys(storage, "h") == {"a", "b"}


# ------------------------------------------------------------------------------------------- output inside input

MINIMAL = {"backend": "proxy", "scales": [1.0], "tta": ["identity"], "crop": {"enabled": False}}


def _cfg(**values):
    from job.config import job_config_from_dict

    return job_config_from_dict(values)


def test_output_inside_input_is_not_segmented_again(ray_local, tmp_path):
    """``--input photos --output photos/out``, run twice: the second run sees the same inputs (all done), never
    ``out/masks/...`` (which used to come back as ``out/masks/out/masks/x.png``, growing each run)."""
    from job.run import run_job
    from jobkit import read_manifest_rows, write_inputs, write_prompts

    photos = tmp_path / "photos"
    keys = write_inputs(photos, n_good=2, corrupt=False)
    write_prompts(tmp_path / "prompts")
    cfg = _cfg(input=str(photos), output=str(photos / "out"), prompts=str(tmp_path / "prompts"), **MINIMAL)
    assert run_job(cfg, out=io.StringIO())["ok"] == len(keys) and (photos / "out/masks").is_dir()
    log = io.StringIO()
    assert run_job(cfg, out=log)["images"] == 0, log.getvalue()
    assert f"{len(keys)} inputs, {len(keys)} already done" in log.getvalue()
    assert sorted(r["key"] for r in read_manifest_rows(photos / "out")) == keys
    assert not (photos / "out/masks/out").exists()


def test_output_equal_to_input_is_refused(tmp_path):
    from job.run import JobRefused, run_job

    (tmp_path / "photos").mkdir()
    cfg = _cfg(input=str(tmp_path / "photos"), output=str(tmp_path / "photos/"), prompts=str(tmp_path), **MINIMAL)
    with pytest.raises(JobRefused, match="--output is the --input folder itself"):
        run_job(cfg)


# ------------------------------------------------------------------------------ relative paths, existing cluster

MINIMAL_ARGS = ["--backend", "proxy", "--scales", "1", "--tta", "identity", "--no-crop"]


def test_relative_local_paths_are_made_absolute_when_the_config_is_built(tmp_path, monkeypatch):
    """Command line and YAML alike: every local path is resolved against the directory the command runs in (the
    driver's), never later in a worker; URIs, Hub ids and SAM model names stay as they are."""
    from job.__main__ import build_parser, config_from_args

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights/seggpt").mkdir(parents=True)
    (tmp_path / "job.yaml").write_text("prompts: prompts\ncoarse: ./coarse\nsam_checkpoint: weights/sam.pth\n")
    args = build_parser().parse_args(["run", "--config", "job.yaml", "--input", "in", "--output", "out/run1",
                                      "--seggpt-checkpoint", "weights/seggpt"])
    cfg = config_from_args(args)
    assert (cfg.input, cfg.output, cfg.prompts, cfg.coarse) == tuple(
        str(tmp_path / p) for p in ("in", "out/run1", "prompts", "coarse"))
    assert (cfg.sam_checkpoint, cfg.seggpt_checkpoint) == (str(tmp_path / "weights/sam.pth"),
                                                           str(tmp_path / "weights/seggpt"))
    kept = _cfg(input="s3://bucket/in", output="file:///tmp/out", prompts="s3://bucket/p",
                sam_checkpoint="vit_b", seggpt_checkpoint="BAAI/seggpt-vit-large")
    assert (kept.input, kept.output, kept.prompts, kept.sam_checkpoint, kept.seggpt_checkpoint) == (
        "s3://bucket/in", "file:///tmp/out", "s3://bucket/p", "vit_b", "BAAI/seggpt-vit-large")
    monkeypatch.chdir(tmp_path / "weights")  # a config rebuilt elsewhere (a worker) keeps the driver's paths
    assert dataclasses.replace(cfg, limit=1).input == str(tmp_path / "in")


@pytest.mark.slow
def test_relative_paths_with_address_of_an_existing_cluster(tmp_path):
    """``--address`` of a running head whose workers run in another directory than the command: relative
    ``--input``/``--prompts``/``--output`` still mean the command's directory (the workers used to look for the
    prompts in, and write ``_attempts/`` into, the head's)."""
    from conftest import ray_head_process
    from jobkit import read_manifest_rows, write_inputs, write_prompts

    head_dir, work = tmp_path / "head", tmp_path / "work"
    head_dir.mkdir()
    keys = write_inputs(work / "in", n_good=2, corrupt=False)
    write_prompts(work / "prompts")
    with ray_head_process(tmp_path / "head.log", cwd=head_dir, env_extra={"PYTHONPATH": str(ROOT)}) as head:
        done = subprocess.run([sys.executable, "-m", "job", "run", "--input", "in", "--prompts", "prompts",
                               "--output", "out", "--address", head.gcs, *MINIMAL_ARGS],
                              cwd=work, env={**head.env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(r["key"] for r in read_manifest_rows(work / "out") if r["status"] == "ok") == keys
    assert list(head_dir.iterdir()) == []
