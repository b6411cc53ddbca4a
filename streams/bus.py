"""Typed Kafka clients (kafka-python): one publisher or subscriber per topic and record type.

A subscriber validates every message on the way in; a message that fails goes to the dead-letter
topic with its reason, its original bytes and headers, and the subscriber goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import RecordError
from streams.kafka_settings import TopicReplication, admin_settings, consumer_settings, producer_settings
from streams.metrics import DEAD_LETTERS
from streams.outage import OutageLog, closing_quietly
from streams.records import CameraStatus, Frame, HardExample, ModelAnnouncement, Record
from streams.topics import Topics, TopicSpec
from streams.wire import Headers, WireMessage, decode, encode, header_value

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

DLQ_REASON = "pedstream-dlq-reason"
DLQ_TOPIC = "pedstream-dlq-topic"
DLQ_PARTITION = "pedstream-dlq-partition"
DLQ_OFFSET = "pedstream-dlq-offset"
DLQ_TS = "pedstream-dlq-ts"
DLQ_GROUP = "pedstream-dlq-group"  # the consumer group that refused it (each group refuses a bad record once)
_DLQ_HEADERS = (DLQ_REASON, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET, DLQ_TS, DLQ_GROUP)


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], replication: TopicReplication | None = None) -> list[str]:
    """Create the topics that do not exist yet, with their partition counts and the replication of
    ``replication`` (default: $PEDSTREAM_REPLICATION_FACTOR / $PEDSTREAM_MIN_INSYNC_REPLICAS, else
    one copy); return those created."""
    replication = replication or TopicReplication.from_env()
    admin = KafkaAdminClient(**admin_settings(bootstrap))
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        try:
            admin.create_topics(
                [NewTopic(s.name, s.partitions, replication.factor, topic_configs=replication.topic_configs()) for s in missing]
            )
        except TopicAlreadyExistsError:
            pass  # another process created them meanwhile
        return [s.name for s in missing]
    finally:
        admin.close()


def make_producer(bootstrap: str, **overrides: object) -> KafkaProducer:
    return KafkaProducer(**producer_settings(bootstrap, **overrides))


DeliveryCallback = Callable[[Exception | None], None]


class RecordPublisher(Generic[R]):
    """Publishes one record type to one topic. Several publishers may share one KafkaProducer."""

    record_type: type[R]

    def __init__(self, producer: KafkaProducer, topic: TopicSpec) -> None:
        if topic.record_type is not self.record_type:
            raise TypeError(f"{type(self).__name__} publishes {self.record_type.__name__}, topic {topic.name} carries another type")
        self.producer = producer
        self.topic = topic.name

    def publish(self, record: R, on_delivery: DeliveryCallback | None = None) -> None:
        """Send without waiting; ``on_delivery(None)`` on ack or ``on_delivery(error)`` on failure."""
        self._send(self._encode(record), on_delivery)

    def _encode(self, record: R) -> WireMessage:
        if not isinstance(record, self.record_type):
            raise TypeError(f"expected {self.record_type.__name__}, got {type(record).__name__}")
        return encode(record)

    def _send(self, msg: WireMessage, on_delivery: DeliveryCallback | None = None) -> None:
        future = self.producer.send(self.topic, key=msg.key, value=msg.value, headers=msg.headers)
        if on_delivery is not None:
            future.add_callback(lambda _meta: on_delivery(None))
            future.add_errback(on_delivery)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout=timeout)


class FramePublisher(RecordPublisher[Frame]):
    """Publishes frames and sends again, once, those a restarting broker may have lost.

    A broker can lose writes it had acknowledged when it dies (the embedded tansu on its S3 engine
    does; Kafka with acks=all and two in-sync replicas does not). So the frames acknowledged in the
    last ``resend_window_s`` are kept; when a delivery fails or is acknowledged only after
    ``outage_ack_s`` (the broker was away meanwhile), then once the broker acknowledges again, the
    frames it acknowledged from the window before that frame was sent until then are published
    again, with the next frame. A frame whose delivery failed is published again the same way once
    the broker is back (its ``on_delivery`` saw the failure). Copies are counted in ``resent``.
    Consumers keep one record per (camera, seq, capture time): a copy changes nothing; the detector
    agent answers it again.
    """

    record_type = Frame

    def __init__(self, producer: KafkaProducer, topic: TopicSpec, resend_window_s: float = 10.0, outage_ack_s: float = 2.0) -> None:
        super().__init__(producer, topic)
        self.resend_window_s = resend_window_s
        self.outage_ack_s = outage_ack_s
        self.resent = 0  # frames sent again after an outage
        self._lock = threading.Lock()
        self._acked: deque[tuple[float, WireMessage]] = deque()  # (acknowledged at, message), oldest first
        self._failed: list[tuple[float, WireMessage]] = []  # (failed at, message)
        self._last_ack_ts = 0.0
        self._outage_from: float | None = None  # send time of the first late or failed frame not yet acted on
        self._handled_until = 0.0  # frames sent before this belong to an outage already acted on

    def publish(self, record: Frame, on_delivery: DeliveryCallback | None = None) -> None:
        if self.resend_window_s > 0:
            self._resend_after_outage()
        msg = self._encode(record)
        sent = time.time()

        def delivered(error: Exception | None) -> None:
            now = time.time()
            with self._lock:
                if error is not None:
                    self._failed.append((now, msg))
                else:
                    self._last_ack_ts = now
                    self._acked.append((now, msg))
                    while self._acked[0][0] < now - 2 * self.resend_window_s:
                        self._acked.popleft()
                late = error is not None or now - sent > self.outage_ack_s
                if late and self._outage_from is None and sent > self._handled_until:
                    self._outage_from = sent
            if on_delivery is not None:
                on_delivery(error)

        self._send(msg, delivered)

    def _resend_after_outage(self) -> None:
        with self._lock:
            back = self._last_ack_ts  # the broker acknowledged this recently: what failed before goes again
            again = [msg for failed_ts, msg in self._failed if failed_ts <= back]
            self._failed = [(ts, msg) for ts, msg in self._failed if ts > back]
            if self._outage_from is not None and back > self._outage_from:
                # what the broker acknowledged from the window before the outage until now (frames
                # the restarted broker acknowledged are copied needlessly, never missed)
                again += [msg for acked_ts, msg in self._acked if acked_ts >= self._outage_from - self.resend_window_s]
                self._acked.clear()
                self._outage_from = None
                self._handled_until = time.time()  # the copies and what was in flight with them are slow too
        for msg in again:
            self._send(msg)
        self.resent += len(again)
        if again:
            log.info("the broker was away: sent %d frames again (those it may have lost, %.0f s back)", len(again), self.resend_window_s)


class CameraStatusPublisher(RecordPublisher[CameraStatus]):
    record_type = CameraStatus


class HardExamplePublisher(RecordPublisher[HardExample]):
    record_type = HardExample


class ModelAnnouncementPublisher(RecordPublisher[ModelAnnouncement]):
    record_type = ModelAnnouncement


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed validation, as kept on the dead-letter topic: nothing of it is lost."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    dead_lettered_ts: float
    group: str  # the consumer group that refused it ("" when it had none, e.g. a one-off reader)
    key: bytes | None
    value: bytes | None
    headers: Headers

    @classmethod
    def from_message(cls, key: bytes | None, value: bytes | None, headers: Headers) -> DeadLetter:
        def text(name: str) -> str:
            raw = header_value(headers, name)
            return raw.decode(errors="replace") if raw is not None else ""

        return cls(
            reason=text(DLQ_REASON),
            source_topic=text(DLQ_TOPIC),
            source_partition=int(text(DLQ_PARTITION) or -1),
            source_offset=int(text(DLQ_OFFSET) or -1),
            dead_lettered_ts=float(text(DLQ_TS) or 0.0),
            group=text(DLQ_GROUP),
            key=key,
            value=value,
            headers=[(k, v) for k, v in headers if k not in _DLQ_HEADERS],
        )


def dead_letter_headers(
    headers: Headers | None, reason: str, source_topic: str, partition: int, offset: int, group: str | None = None
) -> Headers:
    """The original headers plus why, where from and which consumer group refused it: what every
    dead-letter entry carries."""
    return list(headers or []) + [
        (DLQ_REASON, reason.encode()),
        (DLQ_TOPIC, source_topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
        (DLQ_TS, f"{time.time():.3f}".encode()),
        (DLQ_GROUP, (group or "").encode()),
    ]


class DeadLetterPublisher:
    """Sends a rejected message, unchanged, to the dead-letter topic with why and where it came from."""

    def __init__(self, producer: KafkaProducer, topics: Topics, group: str | None = None) -> None:
        self.producer = producer
        self.topic = topics.dead_letter.name
        self.group = group

    def publish(
        self,
        reason: str,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
    ) -> None:
        dlq_headers = dead_letter_headers(headers, reason, source_topic, partition, offset, self.group)
        self.producer.send(self.topic, key=key, value=value, headers=dlq_headers)
        DEAD_LETTERS.labels(source_topic).inc()
        log.warning("dead-lettered %s[%d]@%d (group %s): %s", source_topic, partition, offset, self.group or "-", reason)


@dataclass(frozen=True)
class Delivered(Generic[R]):
    """A validated record with where it was read from."""

    record: R
    partition: int
    offset: int
    kafka_ts_ms: int


class RecordSubscriber(Generic[R]):
    """Reads one topic as one record type in a consumer group; bad messages go to the dead-letter topic.

    Offsets are committed by ``commit()`` after the caller has handled what ``poll()`` returned
    (at-least-once). Dead-lettered messages count as handled.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        topic: TopicSpec,
        record_type: type[R],
        group_id: str | None,
        dead_letters: DeadLetterPublisher | None = None,
        **consumer_overrides: object,
    ) -> None:
        if topic.record_type is not record_type:
            raise TypeError(f"topic {topic.name} does not carry {record_type.__name__}")
        self.record_type = record_type
        self.topic = topic.name
        self.consumer = KafkaConsumer(topic.name, **consumer_settings(bootstrap, group_id, **consumer_overrides))
        self._own_producer = dead_letters is None
        self.dead_letters = dead_letters or DeadLetterPublisher(make_producer(bootstrap), topics, group_id)
        self.dead_lettered = 0
        self.broker = OutageLog(f"broker (reading {topic.name})", log)
        self._closed = False

    def poll(self, timeout_s: float = 1.0) -> list[Delivered[R]]:
        """What arrived within ``timeout_s``. While the broker is unreachable (kafka-python raises a
        retriable error such as ECONNREFUSED from ``poll`` when a reconnect fails) this returns nothing
        after waiting ``timeout_s``, logs once per outage, and the consumer picks up where it was when
        the broker is back: no caller's loop dies with a broker restart."""
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            if not exc.retriable:
                raise
            self.broker.failed(str(exc))
            time.sleep(timeout_s)
            return []
        self.broker.recovered()
        out: list[Delivered[R]] = []
        for tp, messages in batches.items():
            for msg in messages:
                headers = list(msg.headers or [])
                try:
                    record = decode(self.record_type, msg.value, headers)
                except RecordError as exc:
                    self.dead_letters.publish(str(exc), msg.topic, tp.partition, msg.offset, msg.key, msg.value, headers)
                    self.dead_lettered += 1
                    continue
                out.append(Delivered(record, tp.partition, msg.offset, msg.timestamp))
        return out

    def commit(self) -> None:
        try:
            self.consumer.commit()
        except KafkaError as exc:  # a rebalance in between: the next owner re-reads (at-least-once)
            log.info("commit skipped after rebalance: %s", exc)

    def close(self) -> None:
        """Leave the group and close (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self.dead_letters.producer.flush(timeout=10)
        with closing_quietly():
            self.consumer.close()
            if self._own_producer:
                self.dead_letters.producer.close(timeout=5)


class RecordWatch(Generic[R]):
    """Reads one topic in a background thread, in a consumer group of its own, and keeps every record
    that arrives: how benchmarks, the closed loop and tests watch results (detections, alerts) flow
    while they drive the system. ``on_record(record, arrival_time)`` is called in that thread."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        topic: TopicSpec,
        record_type: type[R],
        group_id: str | None = None,
        on_record: Callable[[R, float], None] | None = None,
    ) -> None:
        group = group_id or f"watch-{topic.name}-{uuid.uuid4().hex[:8]}"
        self.subscriber = RecordSubscriber(bootstrap, topics, topic, record_type, group)
        self.records: list[R] = []
        self.on_record = on_record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{topic.name}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for item in self.subscriber.poll(0.2):
                now = time.time()
                self.records.append(item.record)
                if self.on_record is not None:
                    self.on_record(item.record, now)

    def snapshot(self) -> list[R]:
        return list(self.records)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.subscriber.close()


def read_dead_letters(bootstrap: str, topics: Topics, group_id: str | None = None, timeout_s: float = 5.0) -> list[DeadLetter]:
    """Read the dead-letter topic from the beginning until it has been quiet for ``timeout_s``."""
    consumer = KafkaConsumer(topics.dead_letter.name, **consumer_settings(bootstrap, group_id))
    letters: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=500).values():
                for msg in messages:
                    letters.append(DeadLetter.from_message(msg.key, msg.value, list(msg.headers or [])))
                    deadline = time.monotonic() + timeout_s
    finally:
        with closing_quietly():
            consumer.close()
    return letters
