"""Prometheus metrics of a detector agent: fps and latency per camera, latency per pipeline stage,
batch sizes, the model and backend serving, hard examples, alerts and model swaps.

All in ``DETECTOR_METRICS``, the detector role's registry (with the dead letters of
``streams.metrics``), served by ``streams.metrics.serve_metrics`` (``pedstream detect --metrics-port``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.metrics import DEAD_LETTERS, RateMeter, role_registry

if TYPE_CHECKING:
    from detectors.serving import ServedModels

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DETECTOR_METRICS = role_registry(DEAD_LETTERS)

FRAMES = Counter("pedstream_detector_frames", "Frames detected and published as Detections", ["camera"], registry=DETECTOR_METRICS)
FRAMES_SHED = Counter(
    "pedstream_frames_shed",
    "Frames not inferred because they were older than their camera's deadline",
    ["camera", "where"],
    registry=DETECTOR_METRICS,
)
PEOPLE = Counter("pedstream_detector_people", "Boxes published", ["camera"], registry=DETECTOR_METRICS)
STAGE_SECONDS = Histogram(
    "pedstream_detector_stage_seconds",
    "Time a frame spent in each pipeline stage",
    ["stage"],
    buckets=STAGE_BUCKETS,
    registry=DETECTOR_METRICS,
)
FRAME_TO_DETECTION = Histogram(
    "pedstream_detector_frame_to_detection_seconds",
    "Capture to Detections published",
    ["camera"],
    buckets=LATENCY_BUCKETS,
    registry=DETECTOR_METRICS,
)
BATCH_SIZE = Histogram(
    "pedstream_detector_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=DETECTOR_METRICS
)
HARD_EXAMPLES = Counter("pedstream_detector_hard_examples", "Hard examples published", ["camera", "reason"], registry=DETECTOR_METRICS)
ALERTS = Counter("pedstream_detector_alerts", "Alerts published", ["camera", "rule"], registry=DETECTOR_METRICS)
CLOCK_SKEW = Gauge(
    "pedstream_detector_clock_skew_seconds",
    "How far the camera's capture clock is ahead of the broker's and this host's (last seen)",
    ["camera"],
    registry=DETECTOR_METRICS,
)
PUBLISH_FAILURES = Counter(
    "pedstream_detector_publish_failures",
    "Frames whose results the broker did not take (left unacknowledged, detected again later)",
    registry=DETECTOR_METRICS,
)
BACKEND_MS = Gauge(
    "pedstream_detector_backend_ms",
    "Median milliseconds per image each backend took on this device when the agent last chose (auto)",
    ["version", "backend"],
    registry=DETECTOR_METRICS,
)
MODEL_SWAPS = Counter("pedstream_detector_model_swaps", "Model versions swapped in (hot swap)", registry=DETECTOR_METRICS)


class ServingCollector(Collector):
    """What the agent serves (``pedstream_detector_model_info{scope, version, backend} 1``, scope
    ``*`` for the general model, else a camera with a model of its own) and fps per camera over the
    last 5 s, read at scrape time."""

    def __init__(self) -> None:
        self.models: ServedModels | None = None
        self.fps = RateMeter(5.0)

    def follow(self, models: ServedModels) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pedstream_detector_model_info",
            "The model version and backend serving each scope (value 1)",
            labels=["scope", "version", "backend"],
        )
        for scope, served in (self.models.status() if self.models else {}).items():
            info.add_metric([scope, str(served["version"]), str(served["backend"])], 1.0)
        yield info
        fps = GaugeMetricFamily("pedstream_detector_fps", "Frames per second detected, per camera, over the last 5 s", labels=["camera"])
        for camera, rate in sorted(self.fps.rates().items()):
            fps.add_metric([camera], rate)
        yield fps


SERVING = ServingCollector()
DETECTOR_METRICS.register(SERVING)


def observe_frame(camera: str, boxes: int, timings_ms: dict[str, float]) -> None:
    """One frame's Detections were published: count it and its per-stage times."""
    FRAMES.labels(camera).inc()
    PEOPLE.labels(camera).inc(boxes)
    SERVING.fps.tick(camera)
    for stage, ms in timings_ms.items():
        if stage == "frame_to_detection":
            FRAME_TO_DETECTION.labels(camera).observe(ms / 1000.0)
        elif stage != "total":
            STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
