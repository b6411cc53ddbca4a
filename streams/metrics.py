"""Prometheus metrics: the HTTP endpoint every pedstream process can serve, one registry per role,
the dead-letter counter the consuming roles share, and the camera agents' metrics (read from the
fleet's counters when scraped).

Each role registers its families in its own registry (``role_registry``: the camera's here, the
detector's in ``detectors.metrics``, the trainer's in ``trainer.metrics``, the dashboard's in
``deploy.dashboard``), so a process exports only what it measures. Each process serves its own
``/metrics`` (``--metrics-port``); by default on 127.0.0.1 only (``--metrics-host 0.0.0.0`` where
Prometheus scrapes from another machine, as in docker-compose). Metric names:
``pedstream_<part>_<what>``; counters end in ``_total`` as Prometheus expects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


def role_registry(*shared: Collector) -> CollectorRegistry:
    """A role's own registry: the process, platform and GC collectors, plus ``shared`` ones."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, *shared):
        registry.register(collector)
    return registry


# Counted by every consuming role (detector, trainer, dashboard); each registers it in its registry.
DEAD_LETTERS = Counter(
    "pedstream_dead_letters", "Messages sent to the dead-letter topic, by the topic they came from", ["topic"], registry=None
)
CAMERA_METRICS = role_registry()


def serve_metrics(port: int | None, registry: CollectorRegistry, host: str = "127.0.0.1") -> int | None:
    """Serve ``registry`` as ``/metrics`` on ``host:port`` from a background thread; returns the port (None: off)."""
    if port is None:
        return None
    start_http_server(port, addr=host, registry=registry)
    return port


class RateMeter:
    """Events per second over the last ``window_s`` seconds, per key (e.g. fps per camera)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def tick(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.setdefault(key, deque())
            events.append(now)
            self._trim(events, now)

    def rates(self, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        with self._lock:
            out = {}
            for key, events in self._events.items():
                self._trim(events, now)
                out[key] = len(events) / self.window_s
            return out

    def _trim(self, events: deque[float], now: float) -> None:
        while events and events[0] < now - self.window_s:
            events.popleft()


class CameraCollector(Collector):
    """Camera agents' metrics, read from the fleet's per-camera counters at scrape time."""

    def __init__(self, stats: Callable[[], Iterable[dict[str, object]]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        counters = {
            "published": CounterMetricFamily("pedstream_camera_frames_published", "Frames the broker acknowledged", labels=["camera"]),
            "dropped": CounterMetricFamily(
                "pedstream_camera_frames_dropped", "Frames dropped by the fps cap or behind the source", labels=["camera"]
            ),
            "failed": CounterMetricFamily("pedstream_camera_publish_failures", "Frames the broker did not take", labels=["camera"]),
            "bytes": CounterMetricFamily("pedstream_camera_bytes_published", "JPEG bytes acknowledged", labels=["camera"]),
            "attempts": CounterMetricFamily("pedstream_camera_source_attempts", "Times the source was (re)opened", labels=["camera"]),
        }
        up = GaugeMetricFamily("pedstream_camera_up", "1 while the camera streams, 0 while it retries or has ended", labels=["camera"])
        for snapshot in self.stats():
            camera = str(snapshot["camera_id"])
            for key, family in counters.items():
                family.add_metric([camera], float(snapshot[key]))  # type: ignore[arg-type]
            up.add_metric([camera], 1.0 if snapshot["state"] == "running" else 0.0)
        yield from counters.values()
        yield up


def register_cameras(stats: Callable[[], Iterable[dict[str, object]]]) -> CameraCollector:
    """The camera role's metrics (``CAMERA_METRICS``) read ``stats`` at scrape time."""
    collector = CameraCollector(stats)
    CAMERA_METRICS.register(collector)
    return collector
