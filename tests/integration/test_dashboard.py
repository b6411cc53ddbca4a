"""`pedstream dashboard` as a real process reading the real broker, looked at in a real headless
Chromium: the page shows each camera's state (live, stale, retrying, failed and why), annotated
frame, counts, latency histogram, alerts with their time and snapshot, and the model version; a
corrupt frame is never shown; it serves /metrics. The screenshot is kept in artifacts/dashboard.png."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import cv2
import pytest

from deploy.stack import free_loopback_port
from streams.bus import ensure_topics, make_producer
from streams.records import Alert, Box, CameraStatus, Detections, Frame
from streams.topics import Topics
from streams.wire import encode

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _publish_site(broker: str, topics: Topics, vtest: str) -> float:
    """Two live cameras (frames, the detections of each frame, one alert on the first, a corrupt frame
    on the second), one stale, one failed and one retrying; returns the alert's time."""
    producer = make_producer(broker)
    capture = cv2.VideoCapture(vtest)
    now = time.time()
    for seq in range(6):
        ok, image = capture.read()
        assert ok
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        for camera, frame_image in (("gate", image), ("plaza", cv2.flip(image, 1))):
            jpeg = cv2.imencode(".jpg", frame_image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
            h, w = frame_image.shape[:2]
            records = [
                Frame(camera_id=camera, seq=seq, capture_ts=now + seq * 0.2, width=w, height=h, jpeg=jpeg, source_frame_index=seq),
                Detections(
                    camera_id=camera,
                    seq=seq,
                    capture_ts=now + seq * 0.2,
                    width=w,
                    height=h,
                    source_frame_index=seq,
                    model_version="student-test-v3",
                    agent_id="agent-t",
                    produced_ts=now + seq * 0.2 + 0.05,
                    boxes=[
                        Box(x1=100 + 10 * seq, y1=100, x2=150 + 10 * seq, y2=220, score=0.9, track_id=1),
                        Box(x1=400, y1=200, x2=450, y2=330, score=0.7, track_id=2),
                    ],
                    latency_ms={"frame_to_detection": 42.0},
                ),
            ]
            for record in records:
                msg = encode(record)
                topic = topics.frames if isinstance(record, Frame) else topics.detections
                producer.send(topic.name, key=msg.key, value=msg.value, headers=msg.headers)
    alert = Alert(
        camera_id="gate",
        alert_id="a-1",
        rule="crowd",
        kind="count",
        seq=5,
        capture_ts=now + 1.0,
        count=2,
        track_ids=[1, 2],
        message="2 people in the zone",
        model_version="student-test-v3",
    )
    msg = encode(alert)
    producer.send(topics.alerts.name, key=msg.key, value=msg.value, headers=msg.headers)
    # a frame that starts like a JPEG and does not decode (the detector dead-letters it): never shown
    corrupt = Frame(camera_id="plaza", seq=6, capture_ts=now + 1.2, width=w, height=h, jpeg=jpeg[:300], source_frame_index=6)
    # a camera that stopped sending five minutes ago, one whose source is gone, one retrying
    old = Frame(camera_id="attic", seq=0, capture_ts=now - 300, width=w, height=h, jpeg=jpeg, source_frame_index=0)
    for record in (corrupt, old):
        msg = encode(record)
        producer.send(topics.frames.name, key=msg.key, value=msg.value, headers=msg.headers)
    for camera, state, reason, attempt in (
        ("yard", "failed", "source not found: /videos/yard.mp4", 0),
        ("door", "retrying", "connection refused", 3),
    ):
        msg = encode(CameraStatus(camera_id=camera, state=state, reason=reason, attempt=attempt, source="x", ts=now))  # type: ignore[arg-type]
        producer.send(topics.camera_status.name, key=msg.key, value=msg.value, headers=msg.headers)
    producer.flush()
    producer.close()
    capture.release()
    return alert.capture_ts


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_dashboard_page_shows_every_camera_in_a_real_browser(broker: str, vtest: str, tmp_path: Path) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    alert_ts = _publish_site(broker, topics, vtest)
    port = free_loopback_port()
    with open(tmp_path / "dashboard.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.cli",
                "dashboard",
                "--bootstrap",
                broker,
                "--topic-prefix",
                topics.prefix,
                "--port",
                str(port),
                "--from-start",
                "--stale-after",
                "60",
                "--json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        cameras: list[dict] = []  # type: ignore[type-arg]
        by_name: dict[str, dict] = {}  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "api/cameras", timeout=2) as response:
                    cameras = json.loads(response.read())
            except OSError:
                cameras = []
            # four subscribers join their groups independently: wait until every one has caught up
            by_name = {c["camera"]: c for c in cameras}
            if (
                len(cameras) == 5
                and all(by_name[c]["seq"] == 5 for c in ("gate", "plaza"))
                and by_name["plaza"]["frames"] == 7
                and by_name["gate"]["recent_alerts"][:1]
                == [{"id": "a-1", "rule": "crowd", "message": "2 people in the zone", "ts": alert_ts, "snapshot": True}]
            ):
                break
            time.sleep(0.5)
        assert sorted(by_name) == ["attic", "door", "gate", "plaza", "yard"], (tmp_path / "dashboard.log").read_text()[-2000:]
        ready = json.loads(next(line for line in (tmp_path / "dashboard.log").read_text().splitlines() if line.startswith("{")))
        assert ready == {"url": url, "metrics": url + "metrics", "bootstrap": broker}  # `--json`: where it serves, for scripts
        gate = by_name["gate"]
        assert gate["frames"] == 6 and gate["people"] == 2 and gate["model_version"] == "student-test-v3" and gate["alerts"] == 1
        assert gate["latency"]["count"] == 6 and gate["latency"]["p50_ms"] == 42.0
        states = {name: (c["state"], c["state_detail"]) for name, c in by_name.items()}
        assert states["gate"] == ("live", None) and states["attic"][0] == "stale"
        assert states["yard"] == ("failed", "source not found: /videos/yard.mp4")
        assert states["door"] == ("retrying", "attempt 3: connection refused")
        assert not by_name["yard"]["has_image"] and by_name["attic"]["has_image"]
        with urllib.request.urlopen(url + "alert/gate/a-1.jpg", timeout=5) as response:
            snapshot = cv2.imdecode(__import__("numpy").frombuffer(response.read(), "uint8"), cv2.IMREAD_COLOR)
        assert snapshot is not None and snapshot.shape[:2] == (576, 768)
        with urllib.request.urlopen(url + "metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'pedstream_site_camera_state{camera="yard",state="failed"} 1.0' in metrics
        assert 'pedstream_site_model_info{camera="gate",version="student-test-v3"} 1.0' in metrics
        assert "pedstream_site_frame_to_detection_seconds_bucket" in metrics and "pedstream_detector_" not in metrics
        for camera in ("gate", "plaza"):  # plaza's newest frame does not decode: its last good one is shown
            with urllib.request.urlopen(url + f"camera/{camera}.jpg", timeout=5) as response:
                annotated = cv2.imdecode(__import__("numpy").frombuffer(response.read(), "uint8"), cv2.IMREAD_COLOR)
            assert annotated is not None and annotated.shape[:2] == (576, 768)

        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard.png"
        screenshot.unlink(missing_ok=True)
        browser = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=4000",
            "--window-size=1300,1400",
        ]
        dom = subprocess.run(
            [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)}
        )
        assert "cam-gate" in dom.stdout and "cam-plaza" in dom.stdout, dom.stderr[-2000:]
        assert "student-test-v3" in dom.stdout and "2 people in the zone" in dom.stdout
        assert 'src="/camera/gate.jpg' in dom.stdout and 'src="/alert/gate/a-1.jpg"' in dom.stdout
        assert "failed: source not found: /videos/yard.mp4" in dom.stdout and "retrying: attempt 3: connection refused" in dom.stdout
        assert "stale: no frame for" in dom.stdout and "no frame to show" in dom.stdout and 'class="hist"' in dom.stdout
        assert "<time datetime=" in dom.stdout and "latency p50 42 ms" in dom.stdout and "no latency yet" in dom.stdout
        shot = subprocess.run(
            [*browser, f"--screenshot={screenshot}", url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(tmp_path)},
        )
        assert screenshot.is_file(), shot.stderr[-2000:]
        image = cv2.imread(str(screenshot))
        assert image is not None and image.shape[:2] == (1400, 1300)
        assert image.std() > 20  # frames drawn, not an empty page
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0  # SIGTERM stops it cleanly
