"""The model channel in Redis: where model versions live, which one is current, and how agents hear of it.

Keys (``P`` is the registry prefix, ``pedstream:models`` by default, or ``<topic prefix>:models``):

* ``P:version:<v>``       JSON: ``announcement`` (the version's ``ModelAnnouncement``: signed when
                          approved, unsigned when rejected), ``lineage``, ``state``, ``reason``, ``gate``
* ``P:version:<v>:onnx``  the ONNX bytes
* ``P:versions``          sorted set of every version by publish time
* ``P:numbers``, ``P:serials``  the last approval number and order serial given (milliseconds since
                          1970, or one more than the last: they rise even across a Redis wipe)
* ``P:orders``            hash scope -> the signed release order in force (``*``: the general model;
                          a camera id: that camera's own model)
* ``P:current``           the general model's version (what ``P:orders`` ``*`` names)
* ``P:history``           list of every release order, oldest first (the audit log)
* ``P:history:<scope>``   stack of the versions a scope was released to (rollback pops it)
* ``P:agents``            hash agent id -> JSON of what it serves per camera and what it refused
* channel ``P:announce``  each release order (a ``ModelAnnouncement`` JSON) as it is signed

Edge agents read only the orders, the bytes (checked against the signed order before anything
else) and the channel, and write only their own entry in ``P:agents``. ``ModelWatcher`` keeps
listening across Redis restarts and, on every (re)connect, reads ``P:orders`` so an order missed
while away, or signed before the agent started, is still served.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from streams.records import GENERAL_SCOPE, CompiledArtifact, ModelAnnouncement
from streams.signing import Verifier
from streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelKeys:
    prefix: str = "pedstream:models"

    @classmethod
    def for_topics(cls, topic_prefix: str | None) -> ModelKeys:
        """The registry beside the topics: ``--topic-prefix``, else ``$PEDSTREAM_TOPIC_PREFIX``, else ``pedstream``
        (as ``Topics.from_env``, so agents and commands agree)."""
        return cls(f"{Topics.from_env(topic_prefix).prefix}:models")

    def version(self, v: str) -> str:
        return f"{self.prefix}:version:{v}"

    def onnx(self, v: str) -> str:
        return f"{self.prefix}:version:{v}:onnx"

    def artifacts(self, v: str) -> str:
        """Hash: target id -> CompiledArtifact JSON, for version ``v``."""
        return f"{self.prefix}:version:{v}:artifacts"

    def artifact(self, v: str, target_id: str) -> str:
        return f"{self.prefix}:version:{v}:artifact:{target_id}"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:versions"

    @property
    def orders(self) -> str:
        return f"{self.prefix}:orders"

    @property
    def numbers(self) -> str:
        return f"{self.prefix}:numbers"

    @property
    def serials(self) -> str:
        return f"{self.prefix}:serials"

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    @property
    def history(self) -> str:
        return f"{self.prefix}:history"

    @property
    def agents(self) -> str:
        return f"{self.prefix}:agents"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:announce"


def connect_redis(url: str) -> redis.Redis:
    """A client whose replies are raw bytes (no ``decode_responses``): model bytes are binary."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)


def get_bytes(client: redis.Redis, key: str) -> bytes | None:
    """``GET key`` as bytes, or None when the key is missing."""
    return as_bytes(client.get(key))


def list_bytes(reply: object) -> list[bytes]:
    """A multi-value reply (``LRANGE``, ``ZRANGE``) as a list of bytes."""
    if not isinstance(reply, list):
        raise TypeError(f"expected a list reply from Redis, got {type(reply).__name__}")
    return [b for b in (as_bytes(v) for v in reply) if b is not None]


def as_bytes(reply: object) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):  # a client made with decode_responses=True
        return reply.encode()
    raise TypeError(f"expected a bytes reply from Redis, got {type(reply).__name__}")


def read_orders(client: redis.Redis, keys: ModelKeys) -> dict[str, ModelAnnouncement]:
    """The release orders in force, by scope (``*`` first, then cameras); a malformed entry is
    skipped with a warning (its agents keep what they serve)."""
    reply = client.hgetall(keys.orders)
    if not isinstance(reply, dict):
        raise TypeError(f"expected a hash reply from Redis, got {type(reply).__name__}")
    by_scope = {(as_bytes(field_name) or b"").decode(): raw for field_name, raw in reply.items()}
    out: dict[str, ModelAnnouncement] = {}
    for scope in sorted(by_scope, key=lambda s: (s != GENERAL_SCOPE, s)):
        raw = by_scope[scope]
        try:
            out[scope] = ModelAnnouncement.model_validate_json(as_bytes(raw) or b"")
        except ValueError as exc:
            log.warning("ignoring a malformed release order for %s: %s", scope, exc)
    return out


def read_announcement(client: redis.Redis, keys: ModelKeys, version: str | None = None) -> ModelAnnouncement | None:
    """The announcement of ``version``, or of the current version when None (None if there is none)."""
    if version is None:
        raw_version = get_bytes(client, keys.current)
        if not raw_version:
            return None
        version = raw_version.decode()
    raw = get_bytes(client, keys.version(version))
    if raw is None:
        return None
    return ModelAnnouncement.model_validate_json(json.dumps(json.loads(raw)["announcement"]))


class ModelReader:
    """What an edge agent may read from the registry, verified."""

    def __init__(self, client: redis.Redis, keys: ModelKeys, verifier: Verifier) -> None:
        self.client = client
        self.keys = keys
        self.verifier = verifier

    def announcement(self, version: str) -> ModelAnnouncement | None:
        return read_announcement(self.client, self.keys, version)

    def current(self) -> ModelAnnouncement | None:
        return read_announcement(self.client, self.keys)

    def orders(self) -> dict[str, ModelAnnouncement]:
        return read_orders(self.client, self.keys)

    def fetch(self, order: ModelAnnouncement) -> bytes:
        """The model's bytes, verified against the signed release order."""
        from streams.signing import VerificationError

        data = get_bytes(self.client, order.registry_key)
        if data is None:
            raise VerificationError(f"model {order.version}: no bytes at {order.registry_key}")
        self.verifier.verify(data, order)
        return data

    def artifact(self, version: str, target_id: str) -> tuple[CompiledArtifact, bytes] | None:
        """The library compiled for ``target_id`` from ``version``, verified (signature and digest);
        None when none was published for that target."""
        raw = as_bytes(self.client.hget(self.keys.artifacts(version), target_id))
        if raw is None:
            return None
        record = CompiledArtifact.model_validate_json(raw)
        data = get_bytes(self.client, record.registry_key)
        if data is None:
            from streams.signing import VerificationError

            raise VerificationError(f"artifact of {version} for {target_id}: no bytes at {record.registry_key}")
        self.verifier.verify_artifact(data, record)
        return record, data

    def report(self, agent_id: str, status: dict[str, object]) -> None:
        """Record what this agent serves (and refused) for operators and the loop benchmark."""
        self.client.hset(self.keys.agents, agent_id, json.dumps({**status, "agent_id": agent_id, "ts": time.time()}))


class ModelWatcher:
    """Calls ``on_announcement`` for every release order in force at start and for every order after,
    reconnecting with backoff when Redis goes away (the agent keeps serving meanwhile)."""

    def __init__(self, url: str, keys: ModelKeys, on_announcement: Callable[[ModelAnnouncement], None], max_backoff_s: float = 5.0) -> None:
        self.url = url
        self.keys = keys
        self.on_announcement = on_announcement
        self.max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self.connected = threading.Event()
        self.reconnects = 0

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            client = connect_redis(self.url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
            try:
                pubsub.subscribe(self.keys.channel)
                in_force = read_orders(client, self.keys)  # after subscribing: nothing published in between is missed
                self.connected.set()
                backoff = 0.2
                for order in in_force.values():
                    self._deliver(order)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        try:
                            announcement = ModelAnnouncement.model_validate_json(message["data"])
                        except ValueError as exc:
                            log.warning("ignoring a malformed model announcement: %s", exc)
                            continue
                        self._deliver(announcement)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("model channel: Redis at %s went away (%s); still serving, reconnecting", self.url, exc)
                self.connected.clear()
                self.reconnects += 1
                self._stop.wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass

    def _deliver(self, announcement: ModelAnnouncement) -> None:
        try:
            self.on_announcement(announcement)
        except Exception:  # noqa: BLE001 - a bad model must never stop the watcher
            log.exception("model %s: handling the announcement failed", announcement.version)
