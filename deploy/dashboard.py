"""``pedstream dashboard``: a live page of every camera, built only from the topics.

A subscriber like any other (its own consumer groups, so it takes nothing from the agents): it
reads frames, detections and alerts, keeps each camera's recent frames, draws the boxes of the
latest Detections on the frame they belong to, and serves a page (``/``) that refreshes each
camera's annotated frame (``/camera/<id>.jpg``), its counts, its latest alerts and the model
version that made its detections (``/api/cameras``). It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from streams.bus import RecordSubscriber
from streams.records import Alert, Detections, Frame
from streams.topics import Topics

log = logging.getLogger(__name__)

RECENT_FRAMES = 60  # frames kept per camera to find the one the latest detections belong to
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


@dataclass
class CameraView:
    camera_id: str
    frames: OrderedDict[int, bytes] = field(default_factory=OrderedDict)  # seq -> JPEG
    frames_seen: int = 0
    detections_seen: int = 0
    shed_seen: int = 0  # frames the agent did not infer (stale)
    latest: Detections | None = None
    annotated: bytes | None = None
    annotated_seq: int = -1
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=5))
    alerts_seen: int = 0
    updated: float = 0.0


def annotate(jpeg: bytes, detections: Detections, alerting: bool) -> bytes:
    """The frame with its boxes (coloured by track), scores and a header line."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return jpeg
    for box in detections.boxes:
        colour = COLOURS[(box.track_id or 0) % len(COLOURS)] if box.track_id is not None else (200, 200, 200)
        p1, p2 = (int(box.x1), int(box.y1)), (int(box.x2), int(box.y2))
        cv2.rectangle(image, p1, p2, colour, 2)
        label = f"#{box.track_id} {box.score:.2f}" if box.track_id is not None else f"{box.score:.2f}"
        cv2.putText(image, label, (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    header = f"{detections.camera_id}  frame {detections.seq}  people {len(detections.boxes)}  {detections.model_version}"
    cv2.rectangle(image, (0, 0), (image.shape[1], 22), (0, 0, 160) if alerting else (32, 32, 32), -1)
    cv2.putText(image, header, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


class SiteView:
    """Every camera's state, fed by the three subscribers."""

    def __init__(self) -> None:
        self.cameras: dict[str, CameraView] = {}
        self.lock = threading.Lock()

    def _camera(self, camera_id: str) -> CameraView:
        return self.cameras.setdefault(camera_id, CameraView(camera_id))

    def on_frame(self, frame: Frame) -> None:
        with self.lock:
            view = self._camera(frame.camera_id)
            view.frames[frame.seq] = frame.jpeg
            view.frames_seen += 1
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
            if view.latest is None or detections.seq >= view.latest.seq:
                view.latest = detections
            self._refresh(view)

    def on_alert(self, alert: Alert) -> None:
        with self.lock:
            view = self._camera(alert.camera_id)
            view.alerts.append(alert)
            view.alerts_seen += 1
            view.updated = time.time()

    def _refresh(self, view: CameraView) -> None:
        latest = view.latest
        if latest is None or latest.seq == view.annotated_seq or latest.seq not in view.frames:
            return
        recent_alert = bool(view.alerts) and time.time() - view.alerts[-1].capture_ts < 5
        view.annotated = annotate(view.frames[latest.seq], latest, recent_alert)
        view.annotated_seq = latest.seq
        view.updated = time.time()

    def image(self, camera_id: str) -> bytes | None:
        with self.lock:
            view = self.cameras.get(camera_id)
            if view is None:
                return None
            return view.annotated or (next(reversed(view.frames.values())) if view.frames else None)

    def summary(self) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for camera_id, view in sorted(self.cameras.items()):
                latest = view.latest
                out.append(
                    {
                        "camera": camera_id,
                        "frames": view.frames_seen,
                        "detections": view.detections_seen,
                        "shed": view.shed_seen,
                        "people": len(latest.boxes) if latest else None,
                        "model_version": latest.model_version if latest else None,
                        "agent": latest.agent_id if latest else None,
                        "seq": latest.seq if latest else None,
                        "latency_ms": latest.latency_ms.get("frame_to_detection") if latest else None,
                        "alerts": view.alerts_seen,
                        "recent_alerts": [{"rule": a.rule, "message": a.message, "ts": a.capture_ts} for a in reversed(view.alerts)],
                        "updated": view.updated,
                    }
                )
            return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pedstream</title>
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 16px; }
 h1 { font-size: 20px; margin: 0 0 12px; } h1 small { color: #999; font-weight: normal; }
 #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
 .cam { background: #1d1d1d; border-radius: 6px; padding: 8px; }
 .cam img { width: 100%; border-radius: 4px; background: #000; min-height: 120px; }
 .cam h2 { font-size: 15px; margin: 4px 0; } .stats { font-size: 13px; color: #bbb; }
 .version { color: #7fd; } .alert { color: #f77; font-size: 13px; } .empty { color: #999; }
</style></head>
<body><h1>pedstream <small>live: __TITLE__</small></h1>
<div id="grid"><p class="empty" id="waiting">waiting for cameras...</p></div>
<script>
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
async function refresh() {
  let cameras = [];
  try { cameras = await (await fetch('/api/cameras')).json(); } catch (e) { return; }
  const grid = document.getElementById('grid');
  if (cameras.length) { const w = document.getElementById('waiting'); if (w) w.remove(); }
  for (const c of cameras) {
    let card = document.getElementById('cam-' + c.camera);
    if (!card) {
      card = document.createElement('div'); card.className = 'cam'; card.id = 'cam-' + c.camera;
      card.innerHTML = '<h2></h2><img alt=""><div class="stats"></div><div class="alerts"></div>';
      grid.appendChild(card);
    }
    card.querySelector('h2').textContent = c.camera;
    card.querySelector('img').src = '/camera/' + encodeURIComponent(c.camera) + '.jpg?t=' + Date.now();
    card.querySelector('img').alt = 'latest frame of ' + c.camera;
    card.querySelector('.stats').innerHTML =
      'people <b>' + (c.people ?? '-') + '</b> &middot; frames ' + c.frames + ' &middot; detections ' + c.detections +
      ' &middot; alerts <b class="alert-count">' + c.alerts + '</b>' +
      (c.latency_ms != null ? ' &middot; latency ' + Math.round(c.latency_ms) + ' ms' : '') +
      '<br>model <span class="version">' + esc(c.model_version ?? '-') + '</span>' + (c.agent ? ' on ' + esc(c.agent) : '');
    card.querySelector('.alerts').innerHTML = c.recent_alerts.slice(0, 3)
      .map(a => '<div class="alert">&#9888; ' + esc(a.rule) + ': ' + esc(a.message) + '</div>').join('');
  }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


class Dashboard:
    """The three subscribers and the HTTP server."""

    def __init__(self, bootstrap: str, topics: Topics, host: str = "127.0.0.1", port: int = 8765, from_start: bool = False) -> None:
        self.view = SiteView()
        self.topics = topics
        group = f"pedstream-dashboard-{uuid.uuid4().hex[:8]}"
        offset = "earliest" if from_start else "latest"
        self.subscribers: list[tuple[RecordSubscriber[Any], Callable[[Any], None]]] = [
            (RecordSubscriber(bootstrap, topics, topics.frames, Frame, f"{group}-frames", auto_offset_reset=offset), self.view.on_frame),
            (
                RecordSubscriber(bootstrap, topics, topics.detections, Detections, f"{group}-detections", auto_offset_reset=offset),
                self.view.on_detections,
            ),
            (RecordSubscriber(bootstrap, topics, topics.alerts, Alert, f"{group}-alerts", auto_offset_reset=offset), self.view.on_alert),
        ]
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.threads = [
            threading.Thread(target=self._consume, args=(sub, handle), daemon=True, name=f"dashboard-{sub.topic}")
            for sub, handle in self.subscribers
        ]

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}/"

    def _consume(self, subscriber: RecordSubscriber[Any], handle: Any) -> None:
        while not self.stopping.is_set():
            try:
                for delivered in subscriber.poll(0.5):
                    handle(delivered.record)
            except Exception:  # noqa: BLE001 - the page keeps serving what it has
                log.exception("dashboard: reading %s failed", subscriber.topic)
                time.sleep(1.0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("dashboard: " + fmt, *args)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urlparse(self.path).path
                if path == "/":
                    title = html.escape(dashboard.topics.prefix)
                    self._send(200, PAGE.replace("__TITLE__", title).encode(), "text/html; charset=utf-8")
                elif path == "/api/cameras":
                    self._send(200, json.dumps(dashboard.view.summary()).encode(), "application/json")
                elif path.startswith("/camera/") and path.endswith(".jpg"):
                    image = dashboard.view.image(unquote(path[len("/camera/") : -len(".jpg")]))
                    if image is None:
                        self._send(404, b"no such camera", "text/plain")
                    else:
                        self._send(200, image, "image/jpeg")
                else:
                    self._send(404, b"not found", "text/plain")

        return Handler

    def run(self) -> None:
        for thread in self.threads:
            thread.start()
        try:
            self.server.serve_forever(poll_interval=0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        for subscriber, _ in self.subscribers:
            subscriber.close()
