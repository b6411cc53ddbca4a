"""Prometheus metrics: rates, the camera collector, the detector and trainer metrics, one registry
per role (a process exports only its own families), and the endpoint served on loopback."""

from __future__ import annotations

import urllib.request

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from deploy.stack import free_loopback_port
from detectors import metrics as detector_metrics
from detectors.detector import Detector, read_model, with_version
from detectors.serving import ServedModels
from streams.metrics import CAMERA_METRICS, DEAD_LETTERS, CameraCollector, RateMeter, register_cameras, serve_metrics
from trainer import metrics as trainer_metrics


def value(name: str, **labels: str) -> float:
    registry = trainer_metrics.TRAINER_METRICS if name.startswith("pedstream_trainer") else detector_metrics.DETECTOR_METRICS
    return registry.get_sample_value(name, labels) or 0.0


def families(registry: CollectorRegistry) -> set[str]:
    return {metric.name for metric in registry.collect() if metric.name.startswith("pedstream_")}


def test_rate_meter_counts_events_in_its_window() -> None:
    meter = RateMeter(window_s=2.0)
    for t in (0.0, 0.5, 1.0, 1.5):
        meter.tick("cam", now=t)
    assert meter.rates(now=1.9) == {"cam": 2.0}
    assert meter.rates(now=3.2) == {"cam": 0.5}  # only the event at 1.5 is still inside


def test_camera_collector_reads_the_fleet_counters() -> None:
    stats = [
        {"camera_id": "door", "state": "running", "published": 10, "dropped": 3, "failed": 1, "bytes": 5000, "attempts": 1},
        {"camera_id": "yard", "state": "retrying", "published": 0, "dropped": 0, "failed": 0, "bytes": 0, "attempts": 4},
    ]
    registry = CollectorRegistry()
    registry.register(CameraCollector(lambda: stats))
    assert registry.get_sample_value("pedstream_camera_frames_published_total", {"camera": "door"}) == 10
    assert registry.get_sample_value("pedstream_camera_frames_dropped_total", {"camera": "door"}) == 3
    assert registry.get_sample_value("pedstream_camera_up", {"camera": "door"}) == 1
    assert registry.get_sample_value("pedstream_camera_up", {"camera": "yard"}) == 0
    assert registry.get_sample_value("pedstream_camera_source_attempts_total", {"camera": "yard"}) == 4


def test_detector_metrics_count_frames_stages_and_the_model_serving() -> None:
    before = value("pedstream_detector_frames_total", camera="m-cam")
    infer_before = value("pedstream_detector_stage_seconds_count", stage="infer")
    detector_metrics.observe_frame("m-cam", 3, {"decode": 2.0, "infer": 12.0, "total": 20.0, "frame_to_detection": 80.0})
    detector_metrics.observe_frame("m-cam", 1, {"decode": 2.0, "infer": 11.0, "total": 19.0, "frame_to_detection": 70.0})
    assert value("pedstream_detector_frames_total", camera="m-cam") == before + 2
    assert value("pedstream_detector_people_total", camera="m-cam") >= 4
    assert value("pedstream_detector_stage_seconds_count", stage="infer") == infer_before + 2
    assert value("pedstream_detector_stage_seconds_count", stage="total") == 0  # the sum of stages is not a stage
    assert value("pedstream_detector_frame_to_detection_seconds_count", camera="m-cam") >= 2
    assert value("pedstream_detector_fps", camera="m-cam") > 0
    models = ServedModels(Detector.from_bytes(with_version(read_model("student"), "student-v7"), name="student-v7", threads=1))
    detector_metrics.SERVING.follow(models)
    assert value("pedstream_detector_model_info", scope="*", version="student-v7", backend="ort") == 1


def test_trainer_metrics_follow_gradients_and_the_store() -> None:
    updates = value("pedstream_trainer_updates_total")
    dropped = value("pedstream_trainer_dropped_stale_gradients_total")
    trainer_metrics.observe_gradient(1.5, 8, 0, True)
    trainer_metrics.observe_gradient(None, 8, 9, False)
    assert value("pedstream_trainer_updates_total") == updates + 1
    assert value("pedstream_trainer_dropped_stale_gradients_total") == dropped + 1
    assert value("pedstream_trainer_loss") == 1.5 and value("pedstream_trainer_updates_per_second") > 0
    trainer_metrics.observe_store({"door": {"new": 4, "held_out": 1, "used": 7}})
    assert value("pedstream_trainer_hard_examples", camera="door", state="used") == 7


def test_each_role_exports_only_its_own_families() -> None:
    register_cameras(lambda: [])  # as `pedstream camera --metrics-port` does
    camera, detector, trainer = (families(r) for r in (CAMERA_METRICS, detector_metrics.DETECTOR_METRICS, trainer_metrics.TRAINER_METRICS))
    assert camera and all(name.startswith("pedstream_camera_") for name in camera), camera
    assert {"pedstream_detector_frames", "pedstream_detector_model_info", "pedstream_dead_letters"} <= detector
    assert not any(name.startswith(("pedstream_trainer_", "pedstream_camera_")) for name in detector), detector
    assert {"pedstream_trainer_loss", "pedstream_trainer_updates", "pedstream_dead_letters"} <= trainer
    assert not any(name.startswith(("pedstream_detector_", "pedstream_camera_")) for name in trainer), trainer
    assert not families(REGISTRY)  # nothing left in prometheus_client's global registry, which every process would export
    # the dead letters are one counter, shared by the consuming roles
    before = detector_metrics.DETECTOR_METRICS.get_sample_value("pedstream_dead_letters_total", {"topic": "m-topic"}) or 0.0
    DEAD_LETTERS.labels("m-topic").inc()
    assert trainer_metrics.TRAINER_METRICS.get_sample_value("pedstream_dead_letters_total", {"topic": "m-topic"}) == before + 1


def test_the_endpoint_serves_a_roles_registry_on_loopback() -> None:
    port = free_loopback_port()
    registry = detector_metrics.DETECTOR_METRICS
    assert serve_metrics(port, registry) == port and serve_metrics(None, registry) is None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "pedstream_dead_letters" in text and "pedstream_detector_model_info" in text and "process_cpu_seconds_total" in text
    assert "pedstream_trainer_" not in text and "pedstream_camera_" not in text
    assert generate_latest(registry).decode().count("pedstream_") > 10
