"""Submitting the job with the real `ray job submit` CLI to a local head started with `ray start --head --block`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ray_head_process
from jobkit import CORRUPT, check_outputs, read_manifest_rows, write_inputs, write_prompts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray head on loopback, every port chosen free, ended by its process group when the test ends."""
    with ray_head_process(tmp_path / "head.log") as head:
        yield head.dashboard, head.env


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
