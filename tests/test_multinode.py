"""Several nodes on one machine: a head and two worker nodes as separate ``ray start`` processes, the job submitted
with ``ray job submit``, one worker node killed (its process group, by PID) mid-run (issue 18)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ray_head_process, ray_worker_process
from jobkit import read_manifest_rows, write_inputs, write_prompts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _ray(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    done = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_worker_node_lost_mid_run_every_input_ends_with_one_ok_row_and_one_mask(tmp_path):
    """Head (2 CPUs, no GPU; the driver and the key feed live here), worker A (2 CPUs + a fake GPU: the model
    pools), worker B (2 CPUs: reads, fuse, writes). The survivors keep room for what Ray re-runs (with a CPU each
    the write task waiting for a lost block and the actor that must rebuild it could wait for each other). B's processes are killed once the first rows are written; Ray
    restarts its actors and re-runs its tasks elsewhere. The job succeeds, every input has one ok row and its mask,
    and the manifest's compaction finds no row written twice."""
    keys = write_inputs(tmp_path / "in", n_good=16, corrupt=False)
    write_prompts(tmp_path / "prompts")
    out = tmp_path / "out"
    with ray_head_process(tmp_path / "head.log", num_cpus=2, num_gpus=0,
                          env_extra={"PYTHONPATH": str(ROOT)}) as head, \
            ray_worker_process(head, tmp_path / "a.log", num_cpus=2, num_gpus=1), \
            ray_worker_process(head, tmp_path / "b.log", num_cpus=2) as b:
        entry = (f"{sys.executable} -m job run --input {tmp_path / 'in'} --prompts {tmp_path / 'prompts'} "
                 f"--output {out} --backend proxy --scales 1 --tta identity --no-crop --gpu on --batch-size 1 "
                 f"--set resources.read_batch=1")
        submit = _ray("job", "submit", "--address", head.dashboard, "--no-wait", "--submission-id", "multinode",
                      "--", *entry.split(), env=head.env, timeout=120)
        assert "multinode" in submit, submit
        deadline = time.time() + 150
        while time.time() < deadline and len(list((out / "manifest").glob("part-*.parquet"))) < 2:
            time.sleep(0.2)
        assert b.poll() is None, "worker B ended before it could be killed"
        os.killpg(b.pid, signal.SIGKILL)  # the node's raylet, object store and workers: the whole group
        status = ""
        while time.time() < deadline + 150:
            status = _ray("job", "status", "--address", head.dashboard, "multinode", env=head.env).lower()
            if any(s in status for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(2)
        logs = _ray("job", "logs", "--address", head.dashboard, "multinode", env=head.env)
    assert "succeeded" in status, status + logs[-4000:]
    assert f"done {len(keys)} ok, 0 errors" in logs, logs[-4000:]
    compacted = re.search(r"manifest compacted: (\d+) rows \(\d+ new parts\) -> (\d+) keys", logs)
    assert compacted and compacted.group(1) == compacted.group(2) == str(len(keys)), logs[-4000:]
    rows = read_manifest_rows(out)
    assert sorted(r["key"] for r in rows) == keys and {r["status"] for r in rows} == {"ok"}
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == sorted(os.path.splitext(k)[0] + ".png" for k in keys)
