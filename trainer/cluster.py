"""A Ray cluster on loopback only, with pinned ports: started as a ``ray start --head`` child, or joined.

Ray replaces 127.0.0.1 with the machine's other address and binds ``*`` unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; with it, every Ray process (GCS, raylet, workers) listens
on 127.0.0.1. Every port Ray opens is pinned from one base port (``RayPorts``) so runs do not
collide and a firewall rule can name them. We never run ``ray stop`` (it kills every Ray process
on the machine): the head we start is stopped by signalling the process group we started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.errors import PedstreamError

LOOPBACK = "127.0.0.1"
DEFAULT_BASE_PORT = 27300
"""Below the kernel's ephemeral range (32768-60999 here): an outgoing connection never holds a pinned port."""
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class RayPorts:
    """Every port a Ray head uses, from ``base``: 8 service ports, then 100 for worker processes."""

    base: int = DEFAULT_BASE_PORT

    @property
    def gcs(self) -> int:
        return self.base

    @property
    def worker_range(self) -> tuple[int, int]:
        return self.base + 20, self.base + 119

    def start_flags(self) -> list[str]:
        b = self.base
        low, high = self.worker_range
        return [
            f"--port={b}",
            f"--node-manager-port={b + 1}",
            f"--object-manager-port={b + 2}",
            f"--dashboard-agent-listen-port={b + 3}",
            f"--dashboard-agent-grpc-port={b + 4}",
            f"--runtime-env-agent-port={b + 5}",
            f"--metrics-export-port={b + 6}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
        ]

    @property
    def autoscaler_metrics(self) -> int:
        """The autoscaler's Prometheus port (Ray listens on 44217 unless told, once prometheus_client is installed)."""
        return self.base + 7

    def start_env(self) -> dict[str, str]:
        return {"AUTOSCALER_METRIC_PORT": str(self.autoscaler_metrics)}

    def service_ports(self) -> list[int]:
        return [self.base + i for i in range(8)]

    def check_free(self) -> None:
        """Raise ``PedstreamError`` naming the busy ports when a head could not start on them (checked
        by commands before long work, such as labelling, and by every head start)."""
        busy = [p for p in self.service_ports() if _port_in_use(p)]
        if busy:
            raise PedstreamError(
                f"Ray ports {busy} on {LOOPBACK} are in use: pass another --ray-port base (pinned range {self.base}-{self.worker_range[1]})"
            )


REMOTE_ENV = "PEDSTREAM_RAY_REMOTE"  # "1": the trainer may join a Ray cluster on other machines (docker-compose)


def pin_loopback_environment() -> None:
    """Make this process (a Ray driver) and its children keep Ray on loopback, even if Ray was
    imported before the environment was set (Ray reads it into a module constant at import)."""
    os.environ.update(LOOPBACK_ENV)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the head when the driver that started it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


class LocalRayCluster:
    """A Ray head on 127.0.0.1 started by us, connected as a driver; ``stop()`` ends what we started."""

    def __init__(
        self, ports: RayPorts = RayPorts(), num_cpus: int | None = None, temp_dir: Path | None = None, startup_timeout_s: float = 60.0
    ) -> None:
        self.ports = ports
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.temp_dir = temp_dir or Path(tempfile.gettempdir()) / f"pedstream-ray-{ports.base}"
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.temp_dir / "head.log"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.ports.gcs}"

    def start(self) -> LocalRayCluster:
        self.ports.check_free()
        pin_loopback_environment()
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ray_cli = Path(sys.executable).with_name("ray")
        command = [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={LOOPBACK}",
            *self.ports.start_flags(),
            "--include-dashboard=false",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env={**os.environ, **LOOPBACK_ENV, **self.ports.start_env()},
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while not _port_in_use(self.ports.gcs) or not _port_in_use(self.ports.base + 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PedstreamError(f"Ray head did not start on {self.address}; see {self.log_path}")
            time.sleep(0.2)
        connect(self.address)
        return self

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()  # `ray start --block` stops the processes it started
                try:
                    self.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            try:  # whatever is left of the group (a worker mid-exit)
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self.process = None

    def pids(self) -> list[int]:
        """The head process and every process under it (GCS, raylet, workers)."""
        import psutil  # the trainer extra's; kept out of import time so the CLI can read DEFAULT_BASE_PORT

        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def connect(address: str, timeout_s: float = 60.0) -> None:
    """Join an existing Ray cluster as a driver (its head must have been started on loopback)."""
    import ray

    if ray.is_initialized():
        return
    host = address.rsplit(":", 1)[0]
    if host not in (LOOPBACK, "localhost"):
        if os.environ.get(REMOTE_ENV) != "1":
            raise PedstreamError(
                f"Ray address {address}: pedstream keeps Ray on loopback ({LOOPBACK}); "
                f"set {REMOTE_ENV}=1 to join a Ray cluster across machines"
            )
    else:
        pin_loopback_environment()
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def sockets_off_loopback(pids: list[int]) -> list[str]:
    """Every inet socket of these processes bound to, or talking to, an address other than loopback."""
    import psutil

    bad = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in connections:
            ends = [c.laddr] + ([c.raddr] if c.raddr else [])
            for end in ends:
                ip = end.ip.removeprefix("::ffff:")
                if ip not in (LOOPBACK, "::1"):
                    bad.append(
                        f"pid {pid}: {c.laddr.ip}:{c.laddr.port} -> {c.raddr.ip + ':' + str(c.raddr.port) if c.raddr else '-'} ({c.status})"
                    )
    return bad


@contextlib.contextmanager
def ray_session(address: str | None = None, ports: RayPorts = RayPorts(), num_cpus: int | None = None) -> Iterator[LocalRayCluster | None]:
    """Join the Ray cluster at ``address``, or start a loopback head for the duration."""
    import ray

    if address:
        connect(address)
        try:
            yield None
        finally:
            ray.shutdown()
        return
    with LocalRayCluster(ports, num_cpus=num_cpus) as cluster:
        yield cluster
