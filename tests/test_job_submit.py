"""Submitting the job with the real `ray job submit` CLI to a local head started with `ray start --head --block`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_ports
from jobkit import CORRUPT, check_outputs, read_manifest_rows, write_inputs, write_prompts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray head on loopback, every port chosen free, ended by its process group when the test ends."""
    temp_dir = tempfile.mkdtemp(prefix="fdray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    (gcs, dash, agent_http, agent_grpc, runtime_env, metrics, client, node_mgr, obj_mgr) = free_ports(9)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--num-gpus=1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", "--disable-usage-stats",
           f"--temp-dir={temp_dir}"]
    log = open(tmp_path / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 300  # a loaded 2-core machine can take minutes to bring the dashboard up
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:
                break  # the dashboard answers (401 without the auth token): it is up
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not come up:\n{(tmp_path / 'head.log').read_text()[-3000:]}")
                time.sleep(1)
        yield address, env
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_job(ray_head, tmp_path):
    address, env = ray_head
    keys = write_inputs(tmp_path / "in", n_good=4)
    write_prompts(tmp_path / "prompts")
    out = tmp_path / "out"
    entry = (f"{sys.executable} -m job run --input {tmp_path / 'in'} --prompts {tmp_path / 'prompts'} "
             f"--output {out} --backend proxy --scales 1,2 --tta identity,hflip --gpu on")
    submit = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait",
                             "--submission-id", "finedetail-test", "--", *entry.split()],
                            env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline = time.time() + 420
    status = ""
    while time.time() < deadline:
        st = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, "finedetail-test"],
                            env=env, capture_output=True, text=True, timeout=60)
        status = (st.stdout + st.stderr).lower()  # "Job 'x' succeeded" in Ray 2.60, SUCCEEDED in older ones
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, "finedetail-test"],
                          env=env, capture_output=True, text=True, timeout=60).stdout
    assert "succeeded" in status, status + logs[-3000:]
    assert "done 4 ok, 3 errors" in logs
    check_outputs(out, [k for k in keys if k not in CORRUPT], tmp_path / "in")
    assert sorted(r["key"] for r in read_manifest_rows(out)) == keys
