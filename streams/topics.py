"""Topic names, partition counts and the partition key: the one place that says where records go."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from streams.errors import ConfigError
from streams.records import (
    Alert,
    CameraStatus,
    Detections,
    Frame,
    HardExample,
    ModelAnnouncement,
    Record,
    TileDetections,
    TileTask,
)

DEFAULT_PREFIX = "pedstream"
PREFIX_ENV = "PEDSTREAM_TOPIC_PREFIX"
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its full name, how many partitions it gets, and the record type it carries."""

    name: str
    partitions: int
    record_type: type[Record] | None  # None: the dead-letter topic, which keeps any bytes


@dataclass(frozen=True)
class Topics:
    """All pedstream topics under one prefix (``pedstream`` unless ``PEDSTREAM_TOPIC_PREFIX`` says otherwise).

    Camera records are keyed by camera id, so the default partitioner keeps each camera's
    messages in one partition, in order; partitions let detector agents split the cameras.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_PATTERN.match(self.prefix):
            raise ConfigError(f"topic prefix {self.prefix!r}: use letters, digits, '.', '_' or '-'")

    @classmethod
    def from_env(cls, prefix: str | None = None) -> Topics:
        return cls(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)

    def _spec(self, suffix: str, partitions: int, record_type: type[Record] | None) -> TopicSpec:
        return TopicSpec(f"{self.prefix}.{suffix}", partitions, record_type)

    @property
    def frames(self) -> TopicSpec:
        return self._spec("frames", 8, Frame)

    @property
    def detections(self) -> TopicSpec:
        return self._spec("detections", 8, Detections)

    @property
    def alerts(self) -> TopicSpec:
        return self._spec("alerts", 4, Alert)

    @property
    def hard_examples(self) -> TopicSpec:
        return self._spec("hard-examples", 4, HardExample)

    @property
    def models(self) -> TopicSpec:
        return self._spec("models", 1, ModelAnnouncement)

    @property
    def camera_status(self) -> TopicSpec:
        return self._spec("camera-status", 1, CameraStatus)

    @property
    def tiles(self) -> TopicSpec:
        return self._spec("tiles", 8, TileTask)

    @property
    def tile_detections(self) -> TopicSpec:
        return self._spec("tile-detections", 8, TileDetections)

    @property
    def dead_letter(self) -> TopicSpec:
        return self._spec("dead-letter", 1, None)

    def all(self) -> list[TopicSpec]:
        return [
            self.frames,
            self.detections,
            self.alerts,
            self.hard_examples,
            self.models,
            self.camera_status,
            self.tiles,
            self.tile_detections,
            self.dead_letter,
        ]


def partition_key(camera_id: str) -> bytes:
    """The Kafka key for a camera's records: its id, so its frames stay in order in one partition."""
    return camera_id.encode()


def partition_of(camera_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) puts a camera's records in."""
    from kafka.partitioner.default import murmur2

    return int((murmur2(partition_key(camera_id)) & 0x7FFFFFFF) % partitions)


def camera_ids_on_distinct_partitions(count: int, partitions: int, prefix: str = "cam") -> list[str]:
    """``count`` (at most ``partitions``) camera ids whose records land on distinct partitions, in
    partition order: with one camera per partition, agents in a group surely split the cameras."""
    if not 0 < count <= partitions:
        raise ValueError(f"count must be between 1 and {partitions} partitions, not {count}")
    ids: dict[int, str] = {}
    i = 0
    while len(ids) < partitions:
        camera_id = f"{prefix}-{i}"
        ids.setdefault(partition_of(camera_id, partitions), camera_id)
        i += 1
    return [ids[p] for p in sorted(ids)][:count]
