"""What the dashboard knows about every camera, built only from the topics: its state (live, stale
for N s, retrying, failed and why), its latest annotated frame, alerts with their time and a
snapshot (the annotated frame the alert was raised on), a histogram of capture-to-detection
latency, and the model that served it. ``SiteCollector`` exports the same as Prometheus metrics.

Fed by the dashboard's subscribers (``deploy.dashboard``), read by its HTTP handlers; thread-safe.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.records import Alert, CameraStatus, Detections, Frame

RECENT_FRAMES = 60  # frames (and detections) kept per camera to find the ones alerts and detections belong to
ALERTS_KEPT = 10  # per camera, with their snapshots
LATENCY_BUCKETS_MS = (25.0, 50.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
RECENT_LATENCIES = 500  # for the percentiles shown on the page
COLOURS = [
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (52, 147, 26),
    (187, 212, 0),
    (168, 153, 44),
    (255, 194, 0),
    (147, 69, 52),
    (255, 115, 100),
]
CAMERA_STATES = ("live", "stale", "waiting", "retrying", "failed", "finished", "stopped")


def annotate(jpeg: bytes, detections: Detections, header_colour: tuple[int, int, int], note: str = "") -> bytes | None:
    """The frame with its boxes (coloured by track), scores and a header line; None when the JPEG
    does not decode (a corrupt frame is never shown as a broken image)."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    for box in detections.boxes:
        colour = COLOURS[(box.track_id or 0) % len(COLOURS)] if box.track_id is not None else (200, 200, 200)
        p1, p2 = (int(box.x1), int(box.y1)), (int(box.x2), int(box.y2))
        cv2.rectangle(image, p1, p2, colour, 2)
        label = f"#{box.track_id} {box.score:.2f}" if box.track_id is not None else f"{box.score:.2f}"
        cv2.putText(image, label, (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    header = note or f"{detections.camera_id}  frame {detections.seq}  people {len(detections.boxes)}  {detections.model_version}"
    cv2.rectangle(image, (0, 0), (image.shape[1], 22), header_colour, -1)
    cv2.putText(image, header, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def decodes(jpeg: bytes) -> bool:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


@dataclass
class AlertView:
    alert: Alert
    snapshot: bytes | None = None
    gave_up: bool = False  # its frame left the window before it could be drawn


@dataclass
class LatencyHistogram:
    """Capture-to-detection latency of one camera: cumulative buckets (for Prometheus) and the
    recent values (for percentiles)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    total_ms: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        self.total_ms += ms
        self.recent.append(ms)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def summary(self) -> dict[str, Any]:
        recent = sorted(self.recent)
        pct = (lambda q: round(recent[min(len(recent) - 1, int(q * len(recent)))], 1)) if recent else (lambda q: None)
        labels = [f"≤{int(b)}" for b in LATENCY_BUCKETS_MS] + [f">{int(LATENCY_BUCKETS_MS[-1])}"]
        return {
            "p50_ms": pct(0.5),
            "p95_ms": pct(0.95),
            "max_ms": round(recent[-1], 1) if recent else None,
            "count": self.count,
            "buckets": [{"le": label, "count": n} for label, n in zip(labels, self.counts, strict=True)],
        }


@dataclass
class CameraView:
    camera_id: str
    frames: OrderedDict[int, Frame] = field(default_factory=OrderedDict)  # seq -> frame
    detections: OrderedDict[int, Detections] = field(default_factory=OrderedDict)  # seq -> detections
    frames_seen: int = 0
    bad_frames: int = 0  # frames whose JPEG did not decode: never shown
    detections_seen: int = 0
    shed_seen: int = 0  # frames the agent did not infer (stale)
    latest: Detections | None = None
    annotated: bytes | None = None
    annotated_seq: int = -1
    last_frame_ts: float | None = None  # capture time of the newest frame
    status: CameraStatus | None = None  # the camera agent's latest report
    alerts: deque[AlertView] = field(default_factory=lambda: deque(maxlen=ALERTS_KEPT))
    alerts_seen: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def state(self, now: float, stale_after_s: float) -> tuple[str, str | None]:
        """(state, detail): frames newer than the agent's last report decide; otherwise the report does."""
        status = self.status
        frames_since_report = status is None or (self.last_frame_ts is not None and self.last_frame_ts >= status.ts)
        if status is not None and not frames_since_report:
            if status.state == "retrying":
                return "retrying", f"attempt {status.attempt}: {status.reason or 'no reason given'}"
            if status.state in ("failed", "finished", "stopped"):
                return status.state, status.reason
        if self.last_frame_ts is None:
            return "waiting", "no frame yet"
        age = now - self.last_frame_ts
        if age > stale_after_s:
            return "stale", f"no frame for {age:.0f} s"
        return "live", None


class SiteView:
    """Every camera's view, fed by the dashboard's subscribers."""

    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.stale_after_s = stale_after_s
        self.cameras: dict[str, CameraView] = {}
        self.lock = threading.Lock()

    def _camera(self, camera_id: str) -> CameraView:
        return self.cameras.setdefault(camera_id, CameraView(camera_id))

    def on_frame(self, frame: Frame) -> None:
        with self.lock:
            view = self._camera(frame.camera_id)
            view.frames[frame.seq] = frame
            view.frames_seen += 1
            view.last_frame_ts = max(view.last_frame_ts or 0.0, frame.capture_ts)
            while len(view.frames) > RECENT_FRAMES:
                view.frames.popitem(last=False)
            self._refresh(view)

    def on_detections(self, detections: Detections) -> None:
        with self.lock:
            view = self._camera(detections.camera_id)
            if detections.skipped is not None:  # shed: not inferred, nothing to draw
                view.shed_seen += 1
                return
            view.detections_seen += 1
            view.detections[detections.seq] = detections
            while len(view.detections) > RECENT_FRAMES:
                view.detections.popitem(last=False)
            latency = detections.latency_ms.get("frame_to_detection")
            if latency is not None:
                view.latency.observe(latency)
            if view.latest is None or detections.seq >= view.latest.seq:
                view.latest = detections
            self._refresh(view)

    def on_alert(self, alert: Alert) -> None:
        with self.lock:
            view = self._camera(alert.camera_id)
            view.alerts.append(AlertView(alert))
            view.alerts_seen += 1
            self._refresh(view)

    def on_status(self, status: CameraStatus) -> None:
        with self.lock:
            view = self._camera(status.camera_id)
            if view.status is None or status.ts >= view.status.ts:
                view.status = status

    def _refresh(self, view: CameraView) -> None:
        """Draw what can be drawn now: the latest detections on their frame, and pending snapshots."""
        latest = view.latest
        if latest is not None and latest.seq != view.annotated_seq and latest.seq in view.frames:
            recent_alert = bool(view.alerts) and latest.capture_ts - view.alerts[-1].alert.capture_ts < 5
            drawn = annotate(view.frames[latest.seq].jpeg, latest, (0, 0, 160) if recent_alert else (32, 32, 32))
            view.annotated_seq = latest.seq
            if drawn is None:
                view.bad_frames += 1
            else:
                view.annotated = drawn
        oldest = next(iter(view.frames), None)
        for pending in view.alerts:
            if pending.snapshot is not None or pending.gave_up:
                continue
            seq = pending.alert.seq
            if seq in view.frames and seq in view.detections:
                when = time.strftime("%H:%M:%S", time.localtime(pending.alert.capture_ts))
                note = f"{view.camera_id}  {when}  {pending.alert.rule}: {pending.alert.message}"
                pending.snapshot = annotate(view.frames[seq].jpeg, view.detections[seq], (0, 0, 200), note)
                pending.gave_up = pending.snapshot is None
            elif oldest is not None and seq < oldest and len(view.frames) >= RECENT_FRAMES:
                pending.gave_up = True

    def image(self, camera_id: str) -> bytes | None:
        """The latest annotated frame, else the newest frame that decodes; None: nothing to show."""
        with self.lock:
            view = self.cameras.get(camera_id)
            if view is None:
                return None
            if view.annotated is not None:
                return view.annotated
            frames = list(view.frames.values())
        for frame in reversed(frames):
            if decodes(frame.jpeg):
                return frame.jpeg
        return None

    def snapshot(self, camera_id: str, alert_id: str) -> bytes | None:
        with self.lock:
            view = self.cameras.get(camera_id)
            for pending in view.alerts if view else ():
                if pending.alert.alert_id == alert_id:
                    return pending.snapshot
            return None

    def summary(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self.lock:
            out = []
            for camera_id, view in sorted(self.cameras.items()):
                latest = view.latest
                state, detail = view.state(now, self.stale_after_s)
                out.append(
                    {
                        "camera": camera_id,
                        "state": state,
                        "state_detail": detail,
                        "has_image": view.annotated is not None,  # or a frame that decodes: below, outside the lock
                        "frames": view.frames_seen,
                        "bad_frames": view.bad_frames,
                        "detections": view.detections_seen,
                        "shed": view.shed_seen,
                        "people": len(latest.boxes) if latest else None,
                        "model_version": latest.model_version if latest else None,
                        "agent": latest.agent_id if latest else None,
                        "seq": latest.seq if latest else None,
                        "latency_ms": latest.latency_ms.get("frame_to_detection") if latest else None,
                        "latency": view.latency.summary(),
                        "alerts": view.alerts_seen,
                        "recent_alerts": [
                            {
                                "id": a.alert.alert_id,
                                "rule": a.alert.rule,
                                "message": a.alert.message,
                                "ts": a.alert.capture_ts,
                                "snapshot": a.snapshot is not None,
                            }
                            for a in reversed(view.alerts)
                        ],
                    }
                )
        for entry in out:  # the page shows an <img> only when image() has something to serve
            entry["has_image"] = bool(entry["has_image"]) or self.image(str(entry["camera"])) is not None
        return out


class SiteCollector(Collector):
    """The site as the dashboard sees it, for Prometheus: each camera's state, frames, detections,
    alerts, capture-to-detection latency and the model that served it."""

    def __init__(self, view: SiteView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("pedstream_site_camera_state", "1 for the state each camera is in", labels=["camera", "state"])
        frames = CounterMetricFamily("pedstream_site_frames", "Frames seen on the frames topic", labels=["camera"])
        detections = CounterMetricFamily("pedstream_site_detections", "Detections seen (shed frames excluded)", labels=["camera"])
        alerts = CounterMetricFamily("pedstream_site_alerts", "Alerts seen", labels=["camera"])
        model = GaugeMetricFamily(
            "pedstream_site_model_info", "The model version that made each camera's latest detections", labels=["camera", "version"]
        )
        latency = HistogramMetricFamily(
            "pedstream_site_frame_to_detection_seconds", "Capture to detection, as the Detections records report it", labels=["camera"]
        )
        now = time.time()
        with self.view.lock:
            for camera, view in sorted(self.view.cameras.items()):
                current, _ = view.state(now, self.view.stale_after_s)
                for name in CAMERA_STATES:
                    state.add_metric([camera, name], 1.0 if name == current else 0.0)
                frames.add_metric([camera], view.frames_seen)
                detections.add_metric([camera], view.detections_seen)
                alerts.add_metric([camera], view.alerts_seen)
                if view.latest is not None:
                    model.add_metric([camera, view.latest.model_version], 1.0)
                cumulative, buckets = 0, []
                for bound, n in zip((*LATENCY_BUCKETS_MS, float("inf")), view.latency.counts, strict=True):
                    cumulative += n
                    buckets.append((str(bound / 1000.0) if bound != float("inf") else "+Inf", float(cumulative)))
                latency.add_metric([camera], buckets, view.latency.total_ms / 1000.0)
        yield from (state, frames, detections, alerts, model, latency)
