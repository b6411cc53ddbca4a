"""Start a consumer group near "now" by record timestamps: a new or long-stopped group of detector
agents must not replay hours of camera history before it reaches live frames.

Kafka's own answers do not serve here on the embedded broker: ``offsets_for_times`` returns offset
0 and ``latest`` is the base offset of the newest batch + 1 (see the README's notes on tansu). So
this module finds, per partition, the first offset whose record timestamp is within ``max_age_s``
by galloping and bisecting over the records themselves (one short fetch per probe, about 2 log2(n)
probes), and commits it for the group when that moves the group forward. It never moves a group back, and
leaves a partition alone when its committed position is already recent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streams.kafka_settings import consumer_settings
from streams.outage import closing_quietly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """What ``skip_history`` did for one partition."""

    partition: int
    from_offset: int
    to_offset: int

    @property
    def records(self) -> int:
        return self.to_offset - self.from_offset


class _Probe:
    """Reads the timestamp (ms) of the record at an offset with a consumer assigned to one partition."""

    def __init__(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        self.consumer = consumer
        self.tp = tp

    def timestamp_ms(self, offset: int, timeout_s: float = 1.0) -> int | None:
        """The first record at or after ``offset`` -> its timestamp; None when there is none."""
        self.consumer.seek(self.tp, offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records = self.consumer.poll(timeout_ms=200, max_records=1).get(self.tp, [])
            if records:
                return int(records[0].timestamp)
        return None


def first_offset_since(probe: _Probe, start: int, since_ms: int) -> int:
    """The smallest offset at or after ``start`` whose record is at or after ``since_ms``, or the end of
    the partition when every record is older. Gallops forward (1, 2, 4, ... records) to bracket it,
    then bisects; the broker's end offset is not trusted (tansu's is short). Assumes timestamps grow
    with offsets, as producer CreateTime does."""
    low, step = start, 1  # invariant: the record at ``low`` is older than since_ms
    while True:
        ts = probe.timestamp_ms(low + step)
        if ts is None or ts >= since_ms:
            high = low + step
            break
        low, step = low + step, step * 2
    low += 1
    while low < high:
        mid = (low + high) // 2
        ts = probe.timestamp_ms(mid)
        if ts is None or ts >= since_ms:
            high = mid
        else:
            low = mid + 1
    return low


def _settings(bootstrap: str, group_id: str) -> dict[str, object]:
    """A short-lived consumer's settings: small fetches, and a quick answer when the broker is down."""
    return consumer_settings(bootstrap, group_id, max_partition_fetch_bytes=1 << 20, bootstrap_timeout_ms=5000)


def first_timestamps(consumer: KafkaConsumer, starts: dict[TopicPartition, int], timeout_s: float = 1.0) -> dict[TopicPartition, int]:
    """The timestamp of the first record at or after each start offset, read in one pass over all the
    partitions; a partition with no record there is absent from the answer."""
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    found: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(starts) and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=100).items():
            if records and tp not in found:
                found[tp] = int(records[0].timestamp)
                consumer.pause(tp)
    consumer.resume(*starts)
    return found


def skip_history(bootstrap: str, topic: str, group_id: str, max_age_s: float, timeout_s: float = 20.0) -> list[Skipped]:
    """Commit, for ``group_id``, each partition of ``topic`` at its first record younger than
    ``max_age_s`` when the group's position there is older. Returns what moved; errors are logged and
    leave the group as it was (the agent then sheds the old frames one by one).

    Finding the targets needs no group membership (about 1 s when nothing is old). Committing does:
    brokers refuse commits from outside a group that has or had members, so when something is to be
    skipped this joins the group briefly, commits for the partitions it is given, and leaves."""
    try:
        targets = _targets(bootstrap, topic, group_id, max_age_s, timeout_s)
        return _commit_as_member(bootstrap, topic, group_id, targets, timeout_s) if targets else []
    except KafkaError as exc:  # no broker yet, for one: the agent starts anyway and sheds what is old
        log.warning("could not skip old history of %s for group %s: %s", topic, group_id, exc)
        return []


def _targets(bootstrap: str, topic: str, group_id: str, max_age_s: float, timeout_s: float) -> dict[TopicPartition, Skipped]:
    consumer = KafkaConsumer(**_settings(bootstrap, group_id))
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout_s
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        since_ms = int((time.time() - max_age_s) * 1000)
        beginning = consumer.beginning_offsets(tps)
        committed = {tp: consumer.committed(tp) for tp in tps}
        starts = {tp: committed[tp] if committed[tp] is not None else beginning[tp] for tp in tps}
        stale = [tp for tp, ts in first_timestamps(consumer, starts).items() if ts < since_ms]
        targets = {}
        for tp in stale:
            consumer.assign([tp])
            target = first_offset_since(_Probe(consumer, tp), starts[tp], since_ms)
            targets[tp] = Skipped(tp.partition, starts[tp], target)
        return targets
    except KafkaError as exc:
        log.warning("could not read the history of %s for group %s: %s", topic, group_id, exc)
        return {}
    finally:
        with closing_quietly():
            consumer.close(autocommit=False)


def _commit_as_member(bootstrap: str, topic: str, group_id: str, targets: dict[TopicPartition, Skipped], timeout_s: float) -> list[Skipped]:
    # kafka-python offers "range" and "roundrobin"; faust's agents (no tables, no standbys) join with
    # aiokafka's "roundrobin": a group refuses a member that shares no assignment protocol with it
    consumer = KafkaConsumer(**_settings(bootstrap, group_id))
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        ours = {tp: skipped for tp, skipped in targets.items() if tp in consumer.assignment()}
        moved = []
        for tp, skipped in ours.items():
            current = consumer.committed(tp)
            if current is None or current < skipped.to_offset:  # only ever forward
                moved.append(skipped)
        if moved:
            consumer.commit({TopicPartition(topic, s.partition): OffsetAndMetadata(s.to_offset, "pedstream: skipped history", -1)
                             for s in moved})  # fmt: skip
        return moved
    finally:
        with closing_quietly():
            consumer.close(autocommit=False)
