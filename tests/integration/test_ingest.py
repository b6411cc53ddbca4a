"""Camera ingestion against the real tansu broker: order, completeness, groups, failures, dead letters."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer

from deploy.stack import free_loopback_port
from streams.bus import RecordSubscriber, ensure_topics, make_producer, read_dead_letters
from streams.cameras.agent import CameraFleet
from streams.cameras.config import parse_cameras
from streams.records import CameraStatus, Frame
from streams.topics import Topics
from streams.wire import META_HEADER, RECORD_HEADER, encode

pytestmark = pytest.mark.integration


def consume(  # type: ignore[no-untyped-def]
    bootstrap: str, topics: Topics, record_type, group: str, expect: int, timeout_s: float = 30.0, enough=None
) -> list:
    """Read ``expect`` records, or until ``enough(records)`` holds, or until timeout, with a fresh consumer in ``group``."""
    spec = topics.frames if record_type is Frame else topics.camera_status
    sub = RecordSubscriber(bootstrap, topics, spec, record_type, group)
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline and not (enough and enough(out)):
            out.extend(d.record for d in sub.poll(0.5))
        sub.commit()
    finally:
        sub.close()
    return out


def test_frames_arrive_complete_in_order_and_decode_to_the_expected_size(broker: str, topics: Topics, vtest: str) -> None:
    cameras = parse_cameras(
        {
            "defaults": {"fps": 0, "realtime": False, "loop": False},
            "cameras": [
                {"id": "full", "source": vtest, "start_frame": 100, "max_frames": 40, "max_width": 768},
                {"id": "small", "source": vtest, "max_frames": 40, "max_width": 384, "look": {"flip": True}},
                {"id": "night", "source": vtest, "start_frame": 500, "max_frames": 40, "look": {"brightness": 0.3, "noise": 5}},
            ],
        }
    )
    fleet = CameraFleet(cameras, broker, topics)
    fleet.start()
    fleet.wait(60)
    fleet.stop()
    assert [s["published"] for s in fleet.stats()] == [40, 40, 40]

    group_a = consume(broker, topics, Frame, "group-a", 120)
    group_b = consume(broker, topics, Frame, "group-b", 120)
    for frames in (group_a, group_b):
        by_camera: dict[str, list[Frame]] = {}
        for f in frames:
            by_camera.setdefault(f.camera_id, []).append(f)
        assert sorted(by_camera) == ["full", "night", "small"]
        for cid, first_index in (("full", 100), ("small", 0), ("night", 500)):
            got = by_camera[cid]
            assert [f.seq for f in got] == list(range(40)), f"{cid}: frames missing or out of order"
            assert [f.source_frame_index for f in got] == list(range(first_index, first_index + 40))
    sizes = {f.camera_id: cv2.imdecode(np.frombuffer(f.jpeg, np.uint8), cv2.IMREAD_COLOR).shape for f in group_a[::10]}
    assert sizes == {"full": (576, 768, 3), "small": (288, 384, 3), "night": (576, 768, 3)}
    assert all((f.width, f.height) == ((768, 576) if f.camera_id != "small" else (384, 288)) for f in group_a)
    assert {(f.camera_id, f.seq) for f in group_a} == {(f.camera_id, f.seq) for f in group_b}


def test_dead_rtsp_and_corrupt_video_are_reported_and_retried_while_others_publish(
    broker: str, topics: Topics, vtest: str, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00AVI " + np.random.default_rng(1).bytes(50_000))
    dead_port = free_loopback_port()  # a loopback port nobody listens on
    cameras = parse_cameras(
        {
            "defaults": {"retry": {"initial_s": 0.3, "max_s": 1.0}},
            "cameras": [
                {"id": "good", "source": vtest, "fps": 5},
                {"id": "dead-rtsp", "source": f"rtsp://127.0.0.1:{dead_port}/stream"},
                {"id": "corrupt", "source": str(corrupt)},
            ],
        }
    )
    fleet = CameraFleet(cameras, broker, topics)
    fleet.start()
    fleet.wait(8)
    good_midway = fleet.runners[0].stats.published
    fleet.wait(3)
    fleet.stop()
    stats = {s["camera_id"]: s for s in fleet.stats()}
    assert stats["good"]["published"] >= 35 and stats["good"]["published"] > good_midway  # kept publishing
    for cid in ("dead-rtsp", "corrupt"):
        assert stats[cid]["published"] == 0 and int(stats[cid]["attempts"]) >= 3, stats[cid]

    def retries_of(statuses: list[CameraStatus]) -> dict[str, list[CameraStatus]]:
        return {cid: [s for s in statuses if s.camera_id == cid and s.state == "retrying"] for cid in ("dead-rtsp", "corrupt")}

    def all_seen(statuses: list[CameraStatus]) -> bool:  # a fresh group may take seconds to get every partition
        seen = retries_of(statuses)
        good_running = any(s.camera_id == "good" and s.state == "running" for s in statuses)
        return good_running and all(len(r) >= int(stats[cid]["attempts"]) for cid, r in seen.items())

    statuses = consume(broker, topics, CameraStatus, "status-reader", 1000, timeout_s=30, enough=all_seen)
    retries = retries_of(statuses)
    assert len(retries["dead-rtsp"]) >= 3 and "cannot open" in (retries["dead-rtsp"][0].reason or "")
    assert len(retries["corrupt"]) >= 3 and retries["corrupt"][0].reason
    assert [r.attempt for r in retries["corrupt"][:3]] == [1, 2, 3]
    assert any(s.camera_id == "good" and s.state == "running" for s in statuses)
    assert not any(s.camera_id == "good" and s.state == "retrying" for s in statuses)


def test_invalid_records_go_to_the_dead_letter_topic_and_the_consumer_goes_on(broker: str, topics: Topics) -> None:
    ensure_topics(broker, topics.all())
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    good = Frame(camera_id="cam", seq=0, capture_ts=time.time(), width=16, height=16, jpeg=jpeg, source_frame_index=0)
    msg = encode(good)
    producer: KafkaProducer = make_producer(broker)
    producer.send(topics.frames.name, key=b"cam", value=b"not a jpeg", headers=msg.headers)
    producer.send(topics.frames.name, key=b"cam", value=jpeg, headers=[(RECORD_HEADER, b"Frame")])
    producer.send(topics.frames.name, key=b"cam", value=msg.value, headers=msg.headers)
    producer.flush()
    producer.close()

    group = f"g-{uuid.uuid4().hex[:6]}"
    frames = consume(broker, topics, Frame, group, 1)
    assert frames == [good]
    letters = read_dead_letters(broker, topics, timeout_s=3)
    assert len(letters) == 2
    by_value = {d.value: d for d in letters}
    assert "not JPEG data" in by_value[b"not a jpeg"].reason
    assert f"missing header {META_HEADER!r}" in by_value[jpeg].reason
    for letter in letters:
        assert letter.source_topic == topics.frames.name and letter.key == b"cam" and letter.source_offset >= 0 and letter.group == group
        assert (RECORD_HEADER, b"Frame") in letter.headers  # the original headers are kept
