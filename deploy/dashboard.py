"""``pedstream dashboard``: a live page of every camera, built only from the topics.

A subscriber like any other (its own consumer groups, so it takes nothing from the agents): it
reads frames, detections, alerts and the camera agents' status reports into a ``SiteView``
(``deploy.site_view``) and serves a page (``/``) that refreshes, per camera: its state (live, stale
for N s, retrying, failed and why), its annotated frame (``/camera/<id>.jpg``), counts, a latency
histogram, the model that served it, and its alerts with their time and snapshot
(``/alert/<camera>/<alert id>.jpg``). ``/api/cameras`` is the same as JSON and ``/metrics`` as
Prometheus metrics. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from deploy.site_view import SiteCollector, SiteView
from streams.bus import RecordSubscriber
from streams.metrics import DEAD_LETTERS, role_registry
from streams.records import Alert, CameraStatus, Detections, Frame
from streams.topics import Topics

log = logging.getLogger(__name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pedstream</title>
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 16px; }
 h1 { font-size: 20px; margin: 0 0 12px; } h1 small { color: #999; font-weight: normal; }
 #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
 .cam { background: #1d1d1d; border-radius: 6px; padding: 8px; }
 .cam img.frame { width: 100%; border-radius: 4px; background: #000; }
 .noimage { display: flex; align-items: center; justify-content: center; aspect-ratio: 4 / 3; background: #000;
   border-radius: 4px; color: #888; font-size: 14px; }
 .cam h2 { font-size: 15px; margin: 4px 0; } .stats { font-size: 13px; color: #bbb; }
 .state { font-size: 12px; padding: 1px 6px; border-radius: 8px; margin-left: 6px; font-weight: normal; }
 .state-live { background: #1b5e20; } .state-stale, .state-waiting { background: #8d6e00; }
 .state-retrying { background: #b34700; } .state-failed { background: #8b0000; }
 .state-finished, .state-stopped { background: #444; }
 .version { color: #7fd; } .alert { color: #f77; font-size: 13px; margin-top: 4px; display: flex; gap: 6px; align-items: center; }
 .alert img { height: 48px; border-radius: 3px; } .alert time { color: #faa; font-variant-numeric: tabular-nums; }
 .hist { display: flex; align-items: flex-end; gap: 2px; height: 40px; margin-top: 6px; }
 .hist div { flex: 1; background: #4a8; min-height: 1px; position: relative; }
 .hist-labels { display: flex; gap: 2px; font-size: 9px; color: #888; } .hist-labels span { flex: 1; text-align: center; }
 .empty { color: #999; }
</style></head>
<body><h1>pedstream <small>live: __TITLE__</small></h1>
<div id="grid"><p class="empty" id="waiting">waiting for cameras...</p></div>
<script>
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function clock(ts) { return new Date(ts * 1000).toLocaleTimeString([], {hour12: false}); }
function histogram(latency) {
  if (!latency.count) return '<div class="stats">no latency yet</div>';
  const top = Math.max(1, ...latency.buckets.map(b => b.count));
  const bars = latency.buckets.map(b => '<div title="' + esc(b.le) + ' ms: ' + b.count + '" style="height:' +
    Math.round(100 * b.count / top) + '%"></div>').join('');
  const labels = latency.buckets.map(b => '<span>' + esc(b.le) + '</span>').join('');
  const pcts = latency.p50_ms != null ? 'latency p50 ' + Math.round(latency.p50_ms) + ' ms &middot; p95 ' +
    Math.round(latency.p95_ms) + ' ms &middot; max ' + Math.round(latency.max_ms) + ' ms' : 'no latency yet';
  return '<div class="stats">' + pcts + '</div><div class="hist">' + bars + '</div><div class="hist-labels">' + labels + '</div>';
}
async function refresh() {
  let cameras = [];
  try { cameras = await (await fetch('/api/cameras')).json(); } catch (e) { return; }
  const grid = document.getElementById('grid');
  if (cameras.length) { const w = document.getElementById('waiting'); if (w) w.remove(); }
  for (const c of cameras) {
    let card = document.getElementById('cam-' + c.camera);
    if (!card) {
      card = document.createElement('div'); card.className = 'cam'; card.id = 'cam-' + c.camera;
      card.innerHTML = '<h2></h2><div class="picture"></div><div class="stats"></div><div class="latency"></div><div class="alerts"></div>';
      grid.appendChild(card);
    }
    const state = c.state + (c.state_detail ? ': ' + c.state_detail : '');
    card.querySelector('h2').innerHTML = esc(c.camera) + '<span class="state state-' + esc(c.state) + '">' + esc(state) + '</span>';
    const picture = card.querySelector('.picture');
    if (c.has_image) {
      let img = picture.querySelector('img');
      if (!img) { picture.innerHTML = '<img class="frame" alt="">'; img = picture.querySelector('img'); }
      img.src = '/camera/' + encodeURIComponent(c.camera) + '.jpg?t=' + Date.now();
      img.alt = 'latest frame of ' + c.camera;
    } else {
      picture.innerHTML = '<div class="noimage">no frame to show (' + esc(state) + ')</div>';
    }
    card.querySelector('.stats').innerHTML =
      'people <b>' + (c.people ?? '-') + '</b> &middot; frames ' + c.frames + ' &middot; detections ' + c.detections +
      (c.shed ? ' &middot; shed ' + c.shed : '') + (c.bad_frames ? ' &middot; unreadable ' + c.bad_frames : '') +
      ' &middot; alerts <b class="alert-count">' + c.alerts + '</b>' +
      '<br>model <span class="version">' + esc(c.model_version ?? '-') + '</span>' + (c.agent ? ' on ' + esc(c.agent) : '');
    card.querySelector('.latency').innerHTML = histogram(c.latency);
    card.querySelector('.alerts').innerHTML = c.recent_alerts.slice(0, 3).map(a => '<div class="alert">' +
      (a.snapshot ? '<a href="/alert/' + encodeURIComponent(c.camera) + '/' + encodeURIComponent(a.id) + '.jpg" target="_blank">' +
        '<img class="snapshot" alt="snapshot of ' + esc(a.rule) + '" src="/alert/' + encodeURIComponent(c.camera) + '/' +
        encodeURIComponent(a.id) + '.jpg"></a>' : '') +
      '<span>&#9888; <time datetime="' + new Date(a.ts * 1000).toISOString() + '">' + clock(a.ts) + '</time> ' +
      esc(a.rule) + ': ' + esc(a.message) + '</span></div>').join('');
  }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


class Dashboard:
    """The three subscribers and the HTTP server."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        host: str = "127.0.0.1",
        port: int = 8765,
        from_start: bool = False,
        stale_after_s: float = 10.0,
    ) -> None:
        self.view = SiteView(stale_after_s)
        self.metrics = role_registry(DEAD_LETTERS, SiteCollector(self.view))
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
            # every report from the start: a camera that failed before the dashboard started still shows, failed
            (
                RecordSubscriber(bootstrap, topics, topics.camera_status, CameraStatus, f"{group}-status", auto_offset_reset="earliest"),
                self.view.on_status,
            ),
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
                elif path == "/metrics":
                    self._send(200, generate_latest(dashboard.metrics), CONTENT_TYPE_LATEST)
                elif path.startswith("/camera/") and path.endswith(".jpg"):
                    image = dashboard.view.image(unquote(path[len("/camera/") : -len(".jpg")]))
                    if image is None:
                        self._send(404, b"no frame to show for this camera", "text/plain")
                    else:
                        self._send(200, image, "image/jpeg")
                elif path.startswith("/alert/") and path.endswith(".jpg") and path.count("/") == 3:
                    camera, alert_id = (unquote(part) for part in path[len("/alert/") : -len(".jpg")].split("/"))
                    snapshot = dashboard.view.snapshot(camera, alert_id)
                    if snapshot is None:
                        self._send(404, b"no snapshot of this alert", "text/plain")
                    else:
                        self._send(200, snapshot, "image/jpeg")
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
