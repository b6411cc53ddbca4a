"""Typed, versioned records for everything that crosses a process boundary, validated strictly.

Every record carries ``schema_version``; a reader refuses a version it does not know. The wire
format of each record (what goes in the Kafka key, value and headers) lives in ``streams.wire``
and is documented for other languages in ``docs/records.md``.
"""

from __future__ import annotations

import json
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1
"""The one schema version this build writes and reads."""

JPEG_MAGIC = b"\xff\xd8\xff"

CameraId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
"""1-64 characters of letters, digits, dot, dash and underscore, starting with a letter or digit."""

AlertKind = Literal["count", "dwell"]
HardExampleReason = Literal["uncertain", "flicker", "dark", "random"]
CameraState = Literal["starting", "running", "retrying", "finished", "stopped", "failed"]
ReleaseOrder = Literal["release", "rollback"]
VersionState = Literal["approved", "rejected"]

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Timestamp = Annotated[float, Field(gt=0, description="Unix time in seconds")]


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Record(_StrictModel):
    """Base of every record on the bus."""

    record_name: ClassVar[str] = "Record"
    schema_version: Literal[1] = SCHEMA_VERSION


class CameraRecord(Record):
    """A record about one camera; Kafka messages holding it are keyed by ``camera_id``."""

    camera_id: CameraId

    def partition_key(self) -> bytes:
        """The Kafka key: the camera id, so one camera's records stay in order in one partition."""
        return self.camera_id.encode()


class Box(_StrictModel):
    """One detected or labelled box, in frame pixels (x1, y1) top-left to (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    class_id: NonNegativeInt = 0
    track_id: int | None = None

    @model_validator(mode="after")
    def _ordered_corners(self) -> Box:
        if not (self.x2 >= self.x1 and self.y2 >= self.y1):
            raise ValueError(f"box corners out of order: ({self.x1},{self.y1})-({self.x2},{self.y2})")
        return self


class _ImageFields(CameraRecord):
    """Fields shared by records whose Kafka value is a JPEG image."""

    seq: NonNegativeInt = Field(description="Per-camera frame sequence number, increasing by one")
    capture_ts: Timestamp
    width: PositiveInt
    height: PositiveInt
    encoding: Literal["jpeg"] = "jpeg"
    jpeg: bytes = Field(repr=False, min_length=4)

    @field_validator("jpeg")
    @classmethod
    def _looks_like_jpeg(cls, data: bytes) -> bytes:
        if not data.startswith(JPEG_MAGIC):
            raise ValueError(f"not JPEG data: starts with {data[:4].hex() or 'nothing'}, expected ffd8ff")
        return data


class Frame(_ImageFields):
    """One camera frame. On the wire the value is the JPEG itself and the rest travels in headers."""

    record_name: ClassVar[str] = "Frame"
    source_frame_index: NonNegativeInt = Field(description="Index of this frame in its source (0-based)")
    period_ms: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Nominal time between this camera's frames (live or paced sources); detector agents shed a frame "
        "older than its deadline (by default two periods). None: a replay published as fast as possible, never shed",
    )


class Detections(CameraRecord):
    """What a detector agent found in one frame, with the model version that found it."""

    record_name: ClassVar[str] = "Detections"
    seq: NonNegativeInt
    capture_ts: Timestamp
    width: PositiveInt
    height: PositiveInt
    source_frame_index: NonNegativeInt
    model_version: str = Field(min_length=1)
    boxes: list[Box]
    latency_ms: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Where the frame's time went, in ms, step by step: camera (capture to publish), broker (publish to "
        "the agent reading it), admit, queue, decode, preprocess, infer, postprocess, publish (result to record "
        "sent); total (inside the agent's pipeline) and frame_to_detection (capture to record sent)",
    )
    agent_id: str = Field(min_length=1)
    produced_ts: Timestamp
    skipped: str | None = Field(
        None, description="Set when the frame was not inferred (shed: older than its deadline), with why; boxes is then empty"
    )


class Alert(CameraRecord):
    """An alert rule fired for a camera."""

    record_name: ClassVar[str] = "Alert"
    alert_id: str = Field(min_length=1)
    rule: str = Field(min_length=1)
    kind: AlertKind
    zone: str | None = None
    seq: NonNegativeInt
    capture_ts: Timestamp
    count: NonNegativeInt
    track_ids: list[int] = Field(default_factory=list)
    message: str
    model_version: str = Field(min_length=1)


class HardExample(_ImageFields):
    """A frame the edge model found hard, for the teacher to label. The value is the JPEG."""

    record_name: ClassVar[str] = "HardExample"
    source_frame_index: NonNegativeInt
    model_version: str = Field(min_length=1)
    detections: list[Box]
    reasons: list[HardExampleReason] = Field(min_length=1)
    mined_ts: Timestamp


class TileTask(_ImageFields):
    """One tile of a frame, fanned out to whichever detector agent owns its partition.

    The value is the tile's JPEG; ``width``/``height`` are the tile's, ``x0``/``y0`` its place in
    the frame. Keyed by camera id and tile index, so a frame's tiles spread over the agents.
    """

    record_name: ClassVar[str] = "TileTask"
    source_frame_index: NonNegativeInt
    frame_width: PositiveInt
    frame_height: PositiveInt
    tile_index: NonNegativeInt
    tile_count: PositiveInt
    x0: NonNegativeInt
    y0: NonNegativeInt
    requested_by: str = Field(min_length=1)

    def partition_key(self) -> bytes:
        return f"{self.camera_id}#{self.tile_index}".encode()


class TileDetections(CameraRecord):
    """What an agent found in one tile, already in frame coordinates; merged per (camera, seq)."""

    record_name: ClassVar[str] = "TileDetections"
    seq: NonNegativeInt
    capture_ts: Timestamp
    frame_width: PositiveInt
    frame_height: PositiveInt
    source_frame_index: NonNegativeInt
    tile_index: NonNegativeInt
    tile_count: PositiveInt
    model_version: str = Field(min_length=1)
    boxes: list[Box]
    latency_ms: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    agent_id: str = Field(min_length=1)
    produced_ts: Timestamp


GENERAL_SCOPE = "*"
"""Where an order's scope is kept (``P:orders`` field, agents' status): the general model."""


def describe_scope(cameras: list[str] | tuple[str, ...]) -> str:
    """How messages name what an order is for: ``the general model``, ``camera a`` or ``cameras a, b``."""
    named = sorted(c for c in cameras if c != GENERAL_SCOPE)
    if not named:
        return "the general model"
    return f"camera{'s' if len(named) > 1 else ''} {', '.join(named)}"


class ModelAnnouncement(Record):
    """A release order from the model registry: serve ``version`` on the cameras in ``scope``.

    ``scope`` empty means the general model, served by every camera that has no model of its own.
    ``number`` is the version's approval number (versions approved later have higher numbers);
    ``serial`` numbers the orders themselves. An edge agent serves an order only when its Ed25519
    signature covers exactly these fields (``release_statement``), its serial is newer than the
    order the camera serves now, and, unless ``order`` is ``rollback``, its number is not lower.
    """

    record_name: ClassVar[str] = "ModelAnnouncement"
    version: str = Field(min_length=1)
    sha256: Sha256Hex
    size_bytes: PositiveInt
    signature: str | None = Field(default=None, description="Ed25519 signature of the release statement, base64; None: unsigned")
    registry_key: str = Field(min_length=1, description="Redis key holding the ONNX bytes")
    parent_version: str | None = None
    model_format: str = Field(min_length=1)
    published_ts: Timestamp
    metrics: dict[str, float] = Field(default_factory=dict)
    scope: list[CameraId] = Field(default_factory=list, description="cameras this order is for; empty: the general model")
    number: NonNegativeInt = Field(default=0, description="the version's approval number")
    serial: NonNegativeInt = Field(default=0, description="the order's number; every order the registry signs gets a higher one")
    order: ReleaseOrder = "release"
    state: VersionState = "approved"

    def release_statement(self) -> bytes:
        """What the signature covers: the bytes' digest and everything that decides where and when
        they are served (canonical JSON)."""
        fields = {
            "version": self.version,
            "sha256": self.sha256,
            "scope": sorted(self.scope),
            "number": self.number,
            "serial": self.serial,
            "order": self.order,
            "state": self.state,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class CompiledArtifact(Record):
    """A model compiled ahead of time for one device target (a TVM library), stored beside the
    version's ONNX bytes and signed like them. Edge agents load it; they never compile while serving."""

    version: str
    model_sha256: str  # the ONNX bytes it was compiled from
    runtime: Literal["tvm"] = "tvm"
    target: str  # the compiler's target, as JSON (e.g. llvm with this CPU's -mcpu)
    target_id: str  # a short digest of target + compiler version: what an agent looks up
    sha256: str  # of the artifact bytes
    size_bytes: int
    registry_key: str
    settings: dict[str, str] = Field(default_factory=dict)  # layout, schedule, tuning trials
    compile_s: float = 0.0
    approved_ts: float = 0.0  # when the version was approved (time to artifact = published_ts - approved_ts)
    published_ts: float = 0.0
    signature: str | None = None

    def statement(self) -> bytes:
        """What the signature covers: the artifact's digest, the model it belongs to and its target."""
        fields = {
            "version": self.version,
            "model_sha256": self.model_sha256,
            "runtime": self.runtime,
            "target_id": self.target_id,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class CameraStatus(CameraRecord):
    """A camera ingestion agent's report on one camera: running, retrying after a failure, finished."""

    record_name: ClassVar[str] = "CameraStatus"
    state: CameraState
    reason: str | None = None
    attempt: NonNegativeInt = 0
    retry_in_s: Annotated[float, Field(ge=0)] | None = None
    frames_published: NonNegativeInt = 0
    source: str
    ts: Timestamp


JSON_RECORDS: tuple[type[Record], ...] = (Detections, Alert, ModelAnnouncement, CameraStatus, TileDetections)
IMAGE_RECORDS: tuple[type[_ImageFields], ...] = (Frame, HardExample, TileTask)
ALL_RECORDS: dict[str, type[Record]] = {cls.record_name: cls for cls in (*JSON_RECORDS, *IMAGE_RECORDS)}
