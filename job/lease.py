"""One driver per output: a lease object ``_lease.json`` under ``--output`` (local folder or S3 prefix alike).

Two drivers on one output would both run everything (each lists the same undone inputs) and remove each other's
in-flight temp files and attempt notes. So a driver takes the lease before it touches the output and gives it back
when it ends; a second driver finds it and is refused, naming the holder. The lease holds the holder's run id,
host, pid, start time and a heartbeat the holder rewrites every `HEARTBEAT_S` seconds. A lease is free when it is
missing, unreadable, has had no heartbeat for `STALE_S` seconds (its driver was killed or lost its storage), or
names a process of this host that no longer runs (a killed driver re-run on the same machine need not wait).
``--force-lease`` takes it regardless: for a holder known to be gone.

Storage has no compare-and-swap that works the same on folders and S3, so taking a lease is write, wait
`SETTLE_S`, read back: of two drivers that start within that moment, the one whose write landed last keeps it and
the other is refused. This module imports neither ray nor torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from typing import Callable

from job import io as jio

__all__ = ["HEARTBEAT_S", "LEASE_KEY", "STALE_S", "Lease", "LeaseHeld", "acquire"]

log = logging.getLogger("finedetail.job")

LEASE_KEY = "_lease.json"
HEARTBEAT_S = 60.0
STALE_S = 600.0
SETTLE_S = 0.5


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease; the message names it and says how to go on."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """What ``_lease.json`` says: who holds the output. Times are seconds since the epoch."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"run {self.run_id} on host {self.host}, pid {self.pid}, started {since}, last heartbeat "
                f"{now - self.heartbeat:.0f} s ago")


def _pid_runs(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read(storage: jio.Storage) -> Holder | None:
    try:
        raw = jio.read_bytes(storage, LEASE_KEY)
    except jio.ObjectNotFoundError:
        return None
    try:
        d = json.loads(raw)
        return Holder(str(d["run_id"]), str(d["host"]), int(d["pid"]), float(d["started"]), float(d["heartbeat"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable lease %s", storage.uri_for(LEASE_KEY))
        return None


def _stale(holder: Holder, now: float) -> str | None:
    """Why ``holder``'s lease no longer counts, or None while it does."""
    if now - holder.heartbeat > STALE_S:
        return f"no heartbeat for {now - holder.heartbeat:.0f} s (> {STALE_S:.0f} s)"
    if holder.host == socket.gethostname() and not _pid_runs(holder.pid):
        return f"its process {holder.pid} no longer runs on this host"
    return None


class Lease:
    """The lease this run holds: heartbeats in a background thread until `release`."""

    def __init__(self, storage: jio.Storage, holder: Holder, *, clock: Callable[[], float] = time.time,
                 heartbeat_s: float = HEARTBEAT_S):
        self.storage, self.holder, self._clock = storage, holder, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="finedetail-lease",
                                        daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                current = _read(self.storage)
                if current is None or current.run_id != self.holder.run_id:
                    log.error("the lease on %s was taken over by %s; this run goes on without it",
                              self.storage.uri, current.describe(self._clock()) if current else "nobody")
                    return
                self.holder = dataclasses.replace(self.holder, heartbeat=self._clock())
                _write(self.storage, self.holder)
            except jio.StorageError as exc:  # the job's own writes will fail loudly if the storage is gone
                log.warning("lease heartbeat on %s failed: %s", self.storage.uri, exc)

    def release(self) -> None:
        """Stop heartbeating and delete the lease if it is still ours."""
        self._stop.set()
        self._thread.join()
        try:
            current = _read(self.storage)
            if current is not None and current.run_id == self.holder.run_id:
                jio.delete(self.storage, LEASE_KEY)
        except jio.StorageError as exc:
            log.warning("could not give back the lease on %s (it goes stale in %.0f s): %s", self.storage.uri,
                        STALE_S, exc)


def _write(storage: jio.Storage, holder: Holder) -> None:
    jio.write_bytes_atomic(storage, LEASE_KEY, json.dumps(dataclasses.asdict(holder)).encode())


def acquire(storage: jio.Storage, run_id: str, *, force: bool = False, clock: Callable[[], float] = time.time,
            settle_s: float = SETTLE_S, heartbeat_s: float = HEARTBEAT_S) -> Lease:
    """Take the lease on ``storage`` for ``run_id`` (see the module's docstring); raises `LeaseHeld` naming the
    holder when another run holds it (unless ``force``) or took it in the same moment."""
    where = storage.uri_for(LEASE_KEY)
    current = _read(storage)
    if current is not None and current.run_id != run_id:
        why = _stale(current, clock())
        if why is None and not force:
            raise LeaseHeld(
                f"output {storage.uri} is in use by another driver: {current.describe(clock())} (lease {where}). "
                f"Wait for it to end; if it is gone, re-run with --force-lease (a lease without heartbeat for "
                f"{STALE_S / 60:.0f} minutes is taken over without it)")
        log.warning("taking over the lease on %s from %s: %s", storage.uri, current.describe(clock()),
                    why or "--force-lease")
    now = clock()
    mine = Holder(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now)
    _write(storage, mine)
    time.sleep(settle_s)
    current = _read(storage)
    if current is None or current.run_id != run_id:
        raise LeaseHeld(f"output {storage.uri} was taken by another driver starting at the same moment: "
                        f"{current.describe(clock()) if current else 'its lease was removed'} (lease {where}); "
                        "run one driver per output")
    return Lease(storage, mine, clock=clock, heartbeat_s=heartbeat_s)
