"""Records and their wire format: round trips, strict validation, clear reasons."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from streams.errors import RecordError
from streams.records import Alert, Box, CameraStatus, Detections, Frame, HardExample, ModelAnnouncement
from streams.wire import META_HEADER, RECORD_HEADER, decode, encode, header_value

JPEG = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
TS = 1_700_000_000.0


def frame(**kw: object) -> Frame:
    fields = dict(camera_id="cam-1", seq=3, capture_ts=TS, width=8, height=8, jpeg=JPEG, source_frame_index=7)
    fields.update(kw)
    return Frame(**fields)  # type: ignore[arg-type]


EXAMPLES = [
    frame(),
    Detections(
        camera_id="cam-1",
        seq=3,
        capture_ts=TS,
        width=8,
        height=8,
        source_frame_index=7,
        model_version="v1",
        boxes=[Box(x1=1, y1=2, x2=3, y2=4, score=0.9)],
        latency_ms={"infer": 3.5},
        agent_id="a1",
        produced_ts=TS,
    ),
    Detections(
        camera_id="cam-1",
        seq=4,
        capture_ts=TS,
        width=8,
        height=8,
        source_frame_index=8,
        model_version="v1",
        boxes=[],
        agent_id="a1",
        produced_ts=TS,
    ),
    Alert(
        camera_id="cam-1", alert_id="x", rule="crowd", kind="count", seq=1, capture_ts=TS, count=5, message="5 people", model_version="v1"
    ),
    HardExample(
        camera_id="cam-1",
        seq=1,
        capture_ts=TS,
        width=8,
        height=8,
        jpeg=JPEG,
        source_frame_index=1,
        model_version="v1",
        detections=[],
        reasons=["uncertain"],
        mined_ts=TS,
    ),
    ModelAnnouncement(
        version="v2", sha256="a" * 64, size_bytes=10, signature="c2ln", registry_key="k", model_format="student", published_ts=TS
    ),
    CameraStatus(camera_id="cam-1", state="retrying", reason="x", attempt=2, source="rtsp://x", ts=TS),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(record) -> None:  # type: ignore[no-untyped-def]
    msg = encode(record)
    assert header_value(msg.headers, RECORD_HEADER) == record.record_name.encode()
    assert decode(type(record), msg.value, msg.headers) == record


def test_frame_value_is_the_jpeg_itself_with_metadata_in_a_header() -> None:
    msg = encode(frame())
    assert msg.value == JPEG
    assert msg.key == b"cam-1"
    meta = json.loads(header_value(msg.headers, META_HEADER) or b"")
    assert meta["schema_version"] == 1 and meta["seq"] == 3 and "jpeg" not in meta


def test_json_records_carry_schema_version() -> None:
    assert json.loads(encode(EXAMPLES[1]).value)["schema_version"] == 1


def _frame_msg(meta_change: dict[str, object], value: bytes = JPEG) -> tuple[bytes, list[tuple[str, bytes]]]:
    msg = encode(frame())
    meta = json.loads(header_value(msg.headers, META_HEADER) or b"")
    meta.update(meta_change)
    return value, [(RECORD_HEADER, b"Frame"), (META_HEADER, json.dumps(meta).encode())]


@pytest.mark.parametrize(
    ("change", "value", "expected"),
    [
        ({"seq": -1}, JPEG, "field seq"),
        ({"seq": "3"}, JPEG, "field seq"),
        ({"width": 0}, JPEG, "field width"),
        ({"camera_id": "bad id!"}, JPEG, "field camera_id"),
        ({"extra": 1}, JPEG, "field extra"),
        ({"schema_version": 2}, JPEG, "unsupported schema_version 2"),
        ({}, b"GIF89a....", "not JPEG data"),
        ({"encoding": "png"}, JPEG, "field encoding"),
    ],
)
def test_invalid_frames_are_refused_with_the_field_named(change: dict[str, object], value: bytes, expected: str) -> None:
    raw, headers = _frame_msg(change, value)
    with pytest.raises(RecordError, match=expected):
        decode(Frame, raw, headers)


def test_missing_meta_header_and_wrong_type_are_refused() -> None:
    with pytest.raises(RecordError, match="missing header"):
        decode(Frame, JPEG, [(RECORD_HEADER, b"Frame")])
    with pytest.raises(RecordError, match="expected a Frame record"):
        decode(Frame, JPEG, [(RECORD_HEADER, b"Alert")])
    with pytest.raises(RecordError, match="not valid JSON"):
        decode(Detections, b"{nope", [])
    with pytest.raises(RecordError, match="must be a JSON object"):
        decode(Detections, b"[1]", [])


def test_box_corners_and_finite_numbers() -> None:
    with pytest.raises(ValueError, match="out of order"):
        Box(x1=5, y1=0, x2=1, y2=1)
    with pytest.raises(ValueError, match="finite"):
        frame(capture_ts=math.inf)
