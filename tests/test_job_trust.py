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


# ------------------------------------------------------------------------------ failures that must be refusals


def _refusal(tmp_path: Path, args: list[str], **env_extra) -> tuple[str, Path]:
    """Run the CLI on one generated input; assert it refused: exit 2, one line on stderr, no traceback, no
    ``_attempts/`` written, Ray never started (its temp folder never made). Returns (stderr, output folder)."""
    import os

    from jobkit import write_inputs

    if not (tmp_path / "in").exists():
        write_inputs(tmp_path / "in", n_good=1, corrupt=False)
    out, ray_tmp = tmp_path / "out", tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "local",
           "FINEDETAIL_CACHE": str(tmp_path / "cache"), **env_extra}
    done = subprocess.run([sys.executable, "-m", "job", "run", "--input", str(tmp_path / "in"), "--output", str(out),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.startswith("finedetail: error:") and done.stderr.count("\n") == 1, done.stderr
    assert not (out / "_attempts").exists() and not ray_tmp.exists()
    return done.stderr, out


def _offline_env() -> dict[str, str]:
    """A machine without network: the Hub and every https:// download get connection refused at once."""
    from conftest import free_ports

    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    return {"HF_ENDPOINT": closed, "https_proxy": closed, "HTTPS_PROXY": closed, "http_proxy": closed,
            "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": "", "HF_HUB_OFFLINE": "0"}


def test_default_backend_without_weights_offline_is_refused(tmp_path):
    """No flags at all (seggpt-sam, the official SegGPT and SAM weights), nothing cached, no network."""
    from jobkit import write_prompts

    prompts = write_prompts(tmp_path / "prompts")
    err, _ = _refusal(tmp_path, ["--prompts", str(prompts)], **_offline_env())
    assert "model weights not available: cannot load SegGPT 'BAAI/seggpt-vit-large'" in err
    assert f"--cache-dir {tmp_path / 'cache' / 'huggingface'}" in err and "--seggpt-checkpoint DIR" in err


@pytest.mark.parametrize("sam", ["official", "missing-file"])
def test_sam_weights_that_cannot_be_had_are_refused(sam, tiny_weights, tmp_path):
    from jobkit import write_prompts

    prompts = write_prompts(tmp_path / "prompts")
    args = ["--prompts", str(prompts), "--seggpt-checkpoint", tiny_weights["seggpt"]]
    if sam == "missing-file":
        args += ["--sam-checkpoint", str(tmp_path / "sam_vit_b.pth")]
    err, _ = _refusal(tmp_path, args, **_offline_env())
    if sam == "official":
        assert ("cannot reach https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in err
                and "pass --sam-checkpoint PATH" in err and str(tmp_path / "cache") in err), err
    else:
        assert f"checkpoint '{tmp_path / 'sam_vit_b.pth'}' does not exist" in err


def test_weights_in_reach_are_fetched_by_the_driver_into_the_cache(tiny_weights, tmp_path, monkeypatch):
    """The same check passes when the weights can be had: an http:// SAM checkpoint lands in the cache (the
    workers of a local run then read it there)."""
    import functools
    import http.server
    import threading

    from finedetail.models.weights import cache_path_for
    from job.models import fetch_weights

    (tmp_path / "srv").mkdir()
    (tmp_path / "srv/sam.pth").write_bytes(Path(tiny_weights["sam"]).read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/sam.pth"
    monkeypatch.setenv("FINEDETAIL_CACHE", str(tmp_path / "cache"))
    try:
        fetch_weights(_cfg(input=str(tmp_path), output=str(tmp_path / "out"), prompts=str(tmp_path),
                           backend="seggpt-sam", sam_checkpoint=url, seggpt_checkpoint=tiny_weights["seggpt"]))
    finally:
        server.shutdown()
    assert cache_path_for(url).read_bytes() == Path(tiny_weights["sam"]).read_bytes()


def _red_on_white_prompts(root: Path) -> Path:
    import numpy as np

    from finedetail import synthetic
    from finedetail.codecs import encode_png

    image, mask = synthetic.make_prompt_pair("fur", seed=500, size=(80, 112))
    rgb = np.full((*mask.shape, 3), 255, np.uint8)
    rgb[mask] = (255, 0, 0)
    for sub, data in (("images", encode_png(image)), ("masks", encode_png(rgb))):
        (root / sub).mkdir(parents=True)
        (root / sub / "p0.png").write_bytes(data)
    return root


@pytest.mark.parametrize("backend", ["seggpt-sam", "classical"])
def test_prompt_mask_with_no_background_is_refused(backend, tmp_path):
    """RGB red on white: every pixel is nonzero, so the whole prompt image would be the object. Refused before the
    weights are even looked at."""
    prompts = _red_on_white_prompts(tmp_path / "prompts")
    err, out = _refusal(tmp_path, ["--prompts", str(prompts), "--backend", backend], **_offline_env())
    assert "masks/p0.png" in err and "has no background: every pixel is nonzero" in err and "red on white" in err
    assert not out.exists()


def test_unknown_backend_option_is_refused(tmp_path):
    from jobkit import write_prompts

    prompts = write_prompts(tmp_path / "prompts")
    err, out = _refusal(tmp_path, ["--prompts", str(prompts), "--backend", "classical", "--set",
                                   "backend_options.refiner_reach_fraction=0.3"])
    assert "unknown backend_options key 'refiner_reach_fraction'" in err and "'refiner_reach_frac'" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------- one driver per output


@pytest.fixture(params=["local", "s3"])
def out_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.make_bucket('lease-test')}/{tmp_path.name}/out"


def test_a_second_driver_is_refused_naming_the_holder(out_uri, caplog):
    import socket

    from job import lease as jl

    storage = jio.open_storage(out_uri)[0]
    first = jl.acquire(storage, "run-a", settle_s=0.05, heartbeat_s=0.05)
    try:
        with pytest.raises(jl.LeaseHeld) as info:
            jl.acquire(storage, "run-b", settle_s=0.05)
        msg = str(info.value)
        assert f"run run-a on host {socket.gethostname()}, pid {first.holder.pid}" in msg
        assert "--force-lease" in msg and f"{out_uri}/_lease.json" in msg
        time.sleep(0.3)
        assert jl._read(storage).heartbeat > first.holder.started  # the holder keeps it fresh
        second = jl.acquire(storage, "run-b", force=True, settle_s=0.05)
        time.sleep(0.3)  # the first holder's heartbeat sees it was taken over and stops writing
        assert jl._read(storage).run_id == "run-b" and "was taken over" in caplog.text
        first.release()  # not ours any more: left alone
        assert jl._read(storage).run_id == "run-b"
        second.release()
        assert jl._read(storage) is None
    finally:
        first.release()


def test_a_stale_lease_is_taken_over(tmp_path, caplog):
    """No heartbeat for STALE_S, or a holder process on this host that is gone (a killed driver re-run at once)."""
    import dataclasses as dc
    import socket

    from job import lease as jl

    storage = jio.open_storage(str(tmp_path))[0]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    holders = [jl.Holder("old", "another-host", 1, now - 3600, now - jl.STALE_S - 1),
               jl.Holder("killed", socket.gethostname(), int(gone.stdout), now - 60, now - 1)]
    for holder in holders:
        jl._write(storage, holder)
        lease = jl.acquire(storage, "new", settle_s=0.01)
        assert jl._read(storage).run_id == "new"
        lease.release()
    assert "no heartbeat for" in caplog.text and "no longer runs on this host" in caplog.text
    jl._write(storage, dc.replace(holders[0], heartbeat=now - jl.STALE_S + 60))  # fresh enough: still held
    with pytest.raises(jl.LeaseHeld):
        jl.acquire(storage, "new", settle_s=0.01)


def test_two_drivers_starting_together_get_one_lease(tmp_path):
    import threading

    from job import lease as jl

    storage = jio.open_storage(str(tmp_path))[0]
    results, go = {}, threading.Barrier(2)

    def driver(name: str) -> None:
        go.wait()
        try:
            results[name] = jl.acquire(storage, name, settle_s=0.3)
        except jl.LeaseHeld as exc:
            results[name] = exc

    threads = [threading.Thread(target=driver, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results.values() if isinstance(r, jl.Lease)]
    assert len(held) == 1 and jl._read(storage).run_id == held[0].holder.run_id
    held[0].release()


def test_cli_refuses_a_held_output_and_force_lease_takes_it(tmp_path):
    """The whole command: a second driver on a held output exits 2 with one line naming the holder, before Ray
    starts; ``--force-lease`` runs the job (and gives the lease back at the end)."""
    from job import lease as jl
    from jobkit import write_prompts

    prompts = write_prompts(tmp_path / "prompts")
    args = ["--prompts", str(prompts), *MINIMAL_ARGS]
    (tmp_path / "out").mkdir()
    held = jl.acquire(jio.open_storage(str(tmp_path / "out"))[0], "holder-run", settle_s=0.01)
    try:
        err, out = _refusal(tmp_path, args)
        assert "is in use by another driver: run holder-run on host" in err and "--force-lease" in err
        assert not (out / "manifest").exists()
        import os

        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}
        done = subprocess.run([sys.executable, "-m", "job", "run", "--input", str(tmp_path / "in"), "--output",
                               str(out), *args, "--force-lease"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "done 1 ok" in done.stdout and not (out / "_lease.json").exists()
    finally:
        held.release()


def test_cli_refuses_a_held_s3_output(s3_env, tmp_path):
    from job import lease as jl
    from jobkit import write_prompts

    bucket = s3_env.make_bucket("lease-cli")
    held = jl.acquire(jio.open_storage(f"s3://{bucket}/out")[0], "s3-holder", settle_s=0.01)
    try:
        err, _ = _refusal(tmp_path, ["--prompts", str(write_prompts(tmp_path / "prompts")), *MINIMAL_ARGS,
                                     "--output", f"s3://{bucket}/out"])
        assert f"output s3://{bucket}/out is in use by another driver: run s3-holder" in err
    finally:
        held.release()
