"""The dashboard's view of the site: camera states from frames and status reports, alert snapshots,
latency histograms, unreadable frames never shown, and the same as Prometheus metrics."""

from __future__ import annotations

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from deploy.site_view import SiteCollector, SiteView
from streams.records import Alert, Box, CameraStatus, Detections, Frame

NOW = 1_800_000_000.0


def jpeg(shade: int = 90) -> bytes:
    image = np.full((120, 160, 3), shade, np.uint8)
    cv2.rectangle(image, (40, 30), (80, 100), (255, 255, 255), -1)
    return bytes(cv2.imencode(".jpg", image)[1])


def frame(camera: str, seq: int, ts: float, data: bytes | None = None) -> Frame:
    return Frame(camera_id=camera, seq=seq, capture_ts=ts, width=160, height=120, jpeg=data or jpeg(), source_frame_index=seq)


def detections(camera: str, seq: int, ts: float, latency_ms: float) -> Detections:
    return Detections(
        camera_id=camera,
        seq=seq,
        capture_ts=ts,
        width=160,
        height=120,
        source_frame_index=seq,
        model_version="student-v9",
        agent_id="agent-1",
        produced_ts=ts + latency_ms / 1000,
        boxes=[Box(x1=40, y1=30, x2=80, y2=100, score=0.9, track_id=3)],
        latency_ms={"frame_to_detection": latency_ms},
    )


def status(camera: str, state: str, ts: float, reason: str | None = None, attempt: int = 0) -> CameraStatus:
    return CameraStatus(camera_id=camera, state=state, reason=reason, attempt=attempt, source="rtsp://x", ts=ts)  # type: ignore[arg-type]


def by_camera(view: SiteView, now: float) -> dict[str, dict]:  # type: ignore[type-arg]
    return {c["camera"]: c for c in view.summary(now)}


def test_states_come_from_frames_and_the_camera_agents_reports() -> None:
    view = SiteView(stale_after_s=10)
    view.on_frame(frame("live", 0, NOW - 1))
    view.on_frame(frame("old", 0, NOW - 300))
    view.on_status(status("door", "retrying", NOW - 5, "connection refused", attempt=3))
    view.on_status(status("yard", "failed", NOW - 60, "source not found: /videos/yard.mp4"))
    view.on_status(status("back", "retrying", NOW - 50, "timeout", attempt=1))
    view.on_frame(frame("back", 0, NOW - 2))  # frames after the report: it came back
    cameras = by_camera(view, NOW)
    assert cameras["live"]["state"] == "live" and cameras["live"]["state_detail"] is None
    assert cameras["old"]["state"] == "stale" and cameras["old"]["state_detail"] == "no frame for 300 s"
    assert cameras["door"]["state"] == "retrying" and cameras["door"]["state_detail"] == "attempt 3: connection refused"
    assert cameras["yard"]["state"] == "failed" and "yard.mp4" in cameras["yard"]["state_detail"]
    assert cameras["back"]["state"] == "live"
    assert not cameras["yard"]["has_image"] and view.image("yard") is None  # nothing to show, not a broken image
    view.on_status(status("live", "finished", NOW, "end of video"))
    assert by_camera(view, NOW + 1)["live"]["state"] == "finished"


def test_an_unreadable_frame_is_never_shown() -> None:
    view = SiteView()
    good = jpeg()
    view.on_frame(frame("cam", 0, NOW, good))
    view.on_frame(frame("cam", 1, NOW + 0.2, good[:200]))  # starts like a JPEG, does not decode
    assert view.image("cam") == good  # no detections yet: the newest frame that decodes
    view.on_detections(detections("cam", 1, NOW + 0.2, 40.0))
    assert by_camera(view, NOW)["cam"]["bad_frames"] == 1 and view.image("cam") == good
    view.on_detections(detections("cam", 0, NOW, 40.0))  # older: the latest stays seq 1
    view.on_frame(frame("cam", 2, NOW + 0.4))
    view.on_detections(detections("cam", 2, NOW + 0.4, 40.0))
    drawn = cv2.imdecode(np.frombuffer(view.image("cam") or b"", np.uint8), cv2.IMREAD_COLOR)
    assert drawn is not None and drawn.shape == (120, 160, 3) and view.image("cam") != good
    view.on_frame(frame("broken", 0, NOW, good[:200]))  # frames arrive, none decodes: a placeholder, not a broken <img>
    assert not by_camera(view, NOW)["broken"]["has_image"] and view.image("broken") is None
    assert by_camera(view, NOW)["cam"]["has_image"]


def test_alerts_get_a_snapshot_of_the_frame_they_were_raised_on_whatever_arrives_first() -> None:
    view = SiteView()
    alert = Alert(
        camera_id="cam",
        alert_id="a-7",
        rule="crowd",
        kind="count",
        seq=4,
        capture_ts=NOW,
        count=1,
        track_ids=[3],
        message="1 person",
        model_version="student-v9",
    )
    view.on_alert(alert)  # before its frame and detections
    assert view.snapshot("cam", "a-7") is None
    view.on_detections(detections("cam", 4, NOW, 80.0))
    view.on_frame(frame("cam", 4, NOW))
    snapshot = view.snapshot("cam", "a-7")
    assert snapshot is not None and cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR) is not None
    recent = by_camera(view, NOW)["cam"]["recent_alerts"]
    assert recent == [{"id": "a-7", "rule": "crowd", "message": "1 person", "ts": NOW, "snapshot": True}]


def test_latency_histogram_and_metrics() -> None:
    view = SiteView(stale_after_s=10)
    for seq, ms in enumerate([20.0, 30.0, 30.0, 120.0, 700.0, 6000.0]):
        view.on_frame(frame("cam", seq, NOW + seq))
        view.on_detections(detections("cam", seq, NOW + seq, ms))
    latency = by_camera(view, NOW + 6)["cam"]["latency"]
    assert latency["count"] == 6 and latency["p50_ms"] == 120.0 and latency["max_ms"] == 6000.0
    assert [b["count"] for b in latency["buckets"]] == [1, 2, 0, 1, 0, 0, 1, 0, 0, 1]
    registry = CollectorRegistry()
    registry.register(SiteCollector(view))
    assert registry.get_sample_value("pedstream_site_frame_to_detection_seconds_bucket", {"camera": "cam", "le": "0.05"}) == 3
    assert registry.get_sample_value("pedstream_site_frame_to_detection_seconds_count", {"camera": "cam"}) == 6
    assert registry.get_sample_value("pedstream_site_model_info", {"camera": "cam", "version": "student-v9"}) == 1
    assert registry.get_sample_value("pedstream_site_frames_total", {"camera": "cam"}) == 6
    live = registry.get_sample_value("pedstream_site_camera_state", {"camera": "cam", "state": "live"})
    stale = registry.get_sample_value("pedstream_site_camera_state", {"camera": "cam", "state": "stale"})
    assert (live, stale) in ((1, 0), (0, 1))  # by the wall clock at scrape time
