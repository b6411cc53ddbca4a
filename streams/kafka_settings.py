"""Kafka client settings for kafka-python, valid for Apache Kafka and for the embedded tansu broker.

Tansu needs short group timeouts (joins otherwise wait half the session timeout) and raised fetch
sizes for large frames; both are ordinary Kafka settings and safe on Apache Kafka.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from streams.errors import ConfigError

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest message pedstream sends (a 4K JPEG is well under this). Apache Kafka brokers need
``message.max.bytes`` at least this large; docker-compose.yml sets it."""

CLIENT_ID = "pedstream"

FETCH_MAX_WAIT_MS = 10
"""How long the broker may hold a fetch for more data. The embedded broker holds every fetch this
long even when data arrives (measured: 110 ms p50 delivery at 500 ms, 4.7 ms at 10 ms), so it
bounds end-to-end latency; on Apache Kafka a short wait only means more idle fetch requests.
bench pipeline, student, 8 cameras x 5 fps: the broker step p50 17.4 ms at 50, 9.9 ms at 10, and
the detections consumer's delivery p50 12.8 -> 6.8 ms; the broker then used 0.2-0.3 of a core."""

FETCH_MAX_WAIT_ENV = "PEDSTREAM_FETCH_MAX_WAIT_MS"
DURABLE_FETCH_MAX_WAIT_MS = 100
"""The embedded broker on its S3 storage (``stack up --durable``) answers a fetch whose reads from the
store outlast the wait with no records at all, and the client asks again at the same offset: a
consumer reading data the broker must fetch from the store (after a broker restart) gets nothing,
forever, at 10 ms (measured: 0 of 407 frames; all 407 at 100 and 500 ms). Clients of a durable
stack use this wait (``streams.endpoints.resolve`` sets it from the stack's state)."""


def fetch_max_wait_ms() -> int:
    """The fetch wait clients use: ``$PEDSTREAM_FETCH_MAX_WAIT_MS`` or ``FETCH_MAX_WAIT_MS``."""
    raw = os.environ.get(FETCH_MAX_WAIT_ENV)
    if not raw:
        return FETCH_MAX_WAIT_MS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{FETCH_MAX_WAIT_ENV}={raw!r}: expected milliseconds, a whole number") from None
    if not 0 <= value <= 60_000:
        raise ConfigError(f"{FETCH_MAX_WAIT_ENV}={value}: expected 0 to 60000 ms")
    return value


REPLICATION_ENV = "PEDSTREAM_REPLICATION_FACTOR"
MIN_INSYNC_ENV = "PEDSTREAM_MIN_INSYNC_REPLICAS"


@dataclass(frozen=True)
class TopicReplication:
    """How pedstream creates its topics: copies of each partition, and how many must have a write
    before ``acks=all`` succeeds. The embedded broker has one node (1, none); docker-compose.yml
    runs three Kafka brokers with 3 and 2, so a write survives the loss of a broker."""

    factor: int = 1
    min_insync: int | None = None

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ConfigError(f"{REPLICATION_ENV}={self.factor}: must be at least 1")
        if self.min_insync is not None and not 1 <= self.min_insync <= self.factor:
            raise ConfigError(f"{MIN_INSYNC_ENV}={self.min_insync}: must be between 1 and {REPLICATION_ENV} ({self.factor})")

    @classmethod
    def from_env(cls) -> TopicReplication:
        return cls(_int_env(REPLICATION_ENV, 1) or 1, _int_env(MIN_INSYNC_ENV, None))

    def topic_configs(self) -> dict[str, str]:
        return {} if self.min_insync is None else {"min.insync.replicas": str(self.min_insync)}


def _int_env(name: str, default: int | None) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a whole number") from None


PRODUCER_BATCH_BYTES = 1 << 20
RECONNECT_BACKOFF_MAX_MS = 1000
"""A broker that went away is tried again at least every second (kafka-python's default backoff
grows to 30 s: a broker back after a 4 s restart waited up to 3 s more for its clients)."""


def producer_settings(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """Settings for a KafkaProducer: acks from all replicas, small linger, large requests allowed."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "client_id": CLIENT_ID,
        "acks": "all",
        "linger_ms": 5,
        # one produce request carries every waiting frame of a partition, not one: a frame (30-60 KB)
        # is larger than the default 16 KB batch, so each went alone, and a broker slower to
        # acknowledge (the durable embedded one after a restart: ~200 ms) capped a producer at one
        # frame per partition per request, which never drained the backlog of the outage
        "batch_size": PRODUCER_BATCH_BYTES,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "retries": 5,
        "max_request_size": MAX_MESSAGE_BYTES,
        "max_block_ms": 10_000,
        "request_timeout_ms": 15_000,
    }
    settings.update(overrides)
    return settings


def consumer_settings(bootstrap: str, group_id: str | None, **overrides: Any) -> dict[str, Any]:
    """Settings for a KafkaConsumer in a group with manual commits (commit after handling: at-least-once)."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "client_id": CLIENT_ID,
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
        "fetch_max_bytes": 4 * MAX_MESSAGE_BYTES,
        "max_poll_records": 200,
        "fetch_max_wait_ms": fetch_max_wait_ms(),
        "request_timeout_ms": 30_000,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    settings.update(overrides)
    return settings


def admin_settings(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap_servers": bootstrap.split(","), "client_id": CLIENT_ID, "request_timeout_ms": 15_000}
