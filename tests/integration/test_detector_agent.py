"""`pedstream detect` as real processes on the real tansu broker: detections, alerts, hard examples,
dead letters (two agents splitting the cameras with one killed: tests/integration/test_faults.py)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from kafka.partitioner.default import murmur2
from prometheus_client.parser import text_string_to_metric_families

from deploy.agent_process import AgentProcess
from deploy.stack import free_loopback_port
from detectors.boxes import box_iou
from detectors.detector import Detector, read_model
from detectors.evaluation import average_precision, evaluate_sequence
from detectors.results import BoxArray
from detectors.tiling import tiled
from streams.bus import RecordSubscriber, ensure_topics, make_producer, read_dead_letters
from streams.cameras.agent import CameraFleet
from streams.cameras.config import Tiling, parse_cameras
from streams.mot import MotSequence
from streams.records import Alert, Detections, Frame, HardExample, TileDetections
from streams.topics import Topics
from streams.wire import encode

pytestmark = pytest.mark.integration

FRAMES = 40
BUDGET_PER_MINUTE = 30.0


def start_agent(
    model: Path,
    broker: str,
    topics: Topics,
    home: Path,
    agent_id: str,
    cameras: Path | None = None,
    metrics_port: int | None = None,
    extra: list[str] | None = None,
) -> AgentProcess:
    return AgentProcess(
        model, broker, topics, home, agent_id, threads=1, batch=4, cameras=cameras, metrics_port=metrics_port, extra=extra or []
    ).start()


def stop(agent: AgentProcess, sig: int = signal.SIGTERM) -> None:
    agent.stop(sig)


def collect(broker: str, topics: Topics, spec, record_type, until, timeout_s: float, quiet_s: float = 3.0) -> list:  # type: ignore[no-untyped-def]
    """Read a topic from the start until ``until(records)``, ``timeout_s``, or ``quiet_s`` without news
    after the first record."""
    sub = RecordSubscriber(broker, topics, spec, record_type, f"check-{time.monotonic_ns()}")
    out: list = []
    deadline = time.monotonic() + timeout_s
    last_news = None
    try:
        while time.monotonic() < deadline and not until(out):
            got = [d.record for d in sub.poll(0.5)]
            out.extend(got)
            if got:
                last_news = time.monotonic()
            elif last_news is not None and time.monotonic() - last_news > quiet_s:
                break
    finally:
        sub.close()
    return out


def publish_frames(broker: str, topics: Topics, camera: dict[str, object]) -> None:
    fleet = CameraFleet(parse_cameras({"defaults": {"fps": 0, "realtime": False, "loop": False}, "cameras": [camera]}), broker, topics)
    fleet.start()
    fleet.wait(60)
    fleet.stop()


@pytest.fixture(scope="module")
def one_agent_run(broker: str, shared_models: Path, vtest: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    """One agent; 40 PETS frames, one corrupt frame, then 5 more frames from a second camera."""
    home = tmp_path_factory.mktemp("agent")
    topics = Topics(f"t{os.getpid()}agent")
    ensure_topics(broker, topics.all())
    zone = [[0, 150], [768, 150], [768, 576], [0, 576]]
    cameras = home / "cameras.yaml"
    cameras.write_text(
        yaml.safe_dump(
            {
                "cameras": [
                    {
                        "id": "pets",
                        "source": vtest,
                        "detect": {
                            "alerts": [{"name": "crowd", "zone": zone, "count_at_least": 2, "cooldown_s": 0.0}],
                            "hard_examples_per_minute": BUDGET_PER_MINUTE,
                        },
                    }
                ]
            }
        )
    )
    model = shared_models / "ssdlite_pedestrian.onnx"
    metrics_port = free_loopback_port()
    agent = start_agent(model, broker, topics, home, "agent-a", cameras, metrics_port, extra=["--json"])
    try:
        publish_frames(broker, topics, {"id": "pets", "source": vtest, "max_frames": FRAMES, "max_width": 768, "jpeg_quality": 90})
        jpeg = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
        corrupt = Frame(
            camera_id="broken", seq=0, capture_ts=time.time(), width=64, height=64, jpeg=jpeg[:100] + b"\x00" * 300, source_frame_index=0
        )
        producer = make_producer(broker)
        msg = encode(corrupt)
        producer.send(topics.frames.name, key=msg.key, value=msg.value, headers=msg.headers)
        producer.flush()
        producer.close()
        publish_frames(broker, topics, {"id": "after", "source": vtest, "max_frames": 5, "start_frame": 100})
        detections = collect(broker, topics, topics.detections, Detections, lambda got: len(got) >= FRAMES + 5, 120)
        run = {
            "topics": topics,
            "model": model,
            "detections": detections,
            "alerts": collect(broker, topics, topics.alerts, Alert, lambda got: False, 20),
            "hard": collect(broker, topics, topics.hard_examples, HardExample, lambda got: False, 20),
            "dead": read_dead_letters(broker, topics, timeout_s=3),
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            run["metrics"] = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.read().decode())
                for s in family.samples
            }
        assert agent.stop() == 0
        summaries = [line for line in agent.log().splitlines() if line.startswith('{"agent": "agent-a"')]
        run["summary"] = json.loads(summaries[-1]) if summaries else agent.log()[-3000:]
        yield run
    finally:
        stop(agent)


def test_detections_agree_with_direct_detection_and_eval(one_agent_run: dict, vtest: str, shared_data: Path) -> None:  # type: ignore[type-arg]
    dets = sorted((d for d in one_agent_run["detections"] if d.camera_id == "pets"), key=lambda d: d.seq)
    assert [d.seq for d in dets] == list(range(FRAMES))
    detector = Detector.from_bytes(read_model(one_agent_run["model"]), name="ssdlite_pedestrian", threads=1)
    assert {d.model_version for d in dets} == {detector.version}
    sequence = MotSequence.load(shared_data / "PETS09-S2L1")
    capture = cv2.VideoCapture(vtest)
    truths, agent_boxes = [], []
    for d in dets:
        ok, image = capture.read()
        assert ok
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        [expected] = detector.detect([cv2.imdecode(jpeg, cv2.IMREAD_COLOR)])  # what the agent saw
        expected = expected.above(0.3)
        got = BoxArray.from_boxes(d.boxes)
        assert len(got) == len(expected)
        np.testing.assert_allclose(got.xyxy, expected.xyxy, atol=0.05)
        agent_boxes.append(got)
        truths.append(sequence.gt(d.source_frame_index + 1))
        assert {"decode", "preprocess", "infer", "postprocess", "total", "frame_to_detection"} <= set(d.latency_ms)
    capture.release()
    eval_result = evaluate_sequence(lambda imgs: [b.above(0.3) for b in detector.detect(imgs)], sequence, 1, FRAMES)
    assert average_precision(agent_boxes, truths).ap50 == pytest.approx(eval_result.ap50, abs=0.03)


def test_zone_alert_fires_on_pets_frames(one_agent_run: dict) -> None:  # type: ignore[type-arg]
    alerts = [a for a in one_agent_run["alerts"] if a.camera_id == "pets"]
    assert alerts, "the crowd rule never fired"
    assert all(a.rule == "crowd" and a.kind == "count" and a.count >= 2 and len(a.track_ids) >= 2 for a in alerts)


def test_hard_examples_arrive_within_budget(one_agent_run: dict) -> None:  # type: ignore[type-arg]
    hard = [h for h in one_agent_run["hard"] if h.camera_id == "pets"]
    span_s = max(d.capture_ts for d in one_agent_run["detections"]) - min(d.capture_ts for d in one_agent_run["detections"])
    assert 1 <= len(hard) <= 1 + BUDGET_PER_MINUTE * span_s / 60 + 1
    for h in hard:
        assert h.reasons and h.jpeg.startswith(b"\xff\xd8") and h.model_version
        assert cv2.imdecode(np.frombuffer(h.jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (576, 768, 3)


def test_corrupt_jpeg_goes_to_dead_letters_and_the_agent_goes_on(one_agent_run: dict) -> None:  # type: ignore[type-arg]
    [letter] = [d for d in one_agent_run["dead"] if d.key == b"broken"]
    assert "corrupt JPEG" in letter.reason and letter.source_topic == one_agent_run["topics"].frames.name
    assert letter.group == "pedstream-detectors"  # the header names the consumer group that refused it
    after = sorted(d.seq for d in one_agent_run["detections"] if d.camera_id == "after")
    assert after == [0, 1, 2, 3, 4]


def _camera_whose_tiles_cover_every_partition(tiles: int, partitions: int) -> str:
    for i in range(10_000):
        cid = f"fan-{i}"
        if len({(murmur2(f"{cid}#{t}".encode()) & 0x7FFFFFFF) % partitions for t in range(tiles)}) == partitions:
            return cid
    raise AssertionError("no such camera id")


def test_tiles_fan_out_to_the_group_and_merge_per_frame(broker: str, shared_models: Path, vtest: str, tmp_path: Path) -> None:
    topics = Topics(f"t{os.getpid()}fan")
    ensure_topics(broker, topics.all())
    tiling = {"rows": 2, "cols": 4, "overlap": 96, "fan_out": True}
    cid = _camera_whose_tiles_cover_every_partition(8, topics.tiles.partitions)
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text(yaml.safe_dump({"cameras": [{"id": cid, "source": vtest, "detect": {"tiling": tiling}}]}))
    model = shared_models / "ssdlite_pedestrian.onnx"
    agents = [start_agent(model, broker, topics, tmp_path, name, cameras) for name in ("agent-a", "agent-b")]
    try:
        time.sleep(8)
        publish_frames(broker, topics, {"id": cid, "source": vtest, "max_frames": 6, "max_width": 768, "jpeg_quality": 90})
        dets = collect(broker, topics, topics.detections, Detections, lambda got: len(got) >= 6, 90)
        tiles = collect(broker, topics, topics.tile_detections, TileDetections, lambda got: len(got) >= 48, 30)
    finally:
        for agent in agents:
            stop(agent)
    assert sorted(d.seq for d in dets) == list(range(6))
    assert len(tiles) == 48 and {t.agent_id for t in tiles} == {"agent-a", "agent-b"}  # both agents ran tiles
    detector = Detector.from_bytes(read_model(model), name="ssd", threads=1)
    local = tiled(detector.detect, Tiling(**tiling))
    capture = cv2.VideoCapture(vtest)
    for d in sorted(dets, key=lambda d: d.seq):
        ok, image = capture.read()
        assert ok
        [expected] = local([cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)])
        expected = expected.above(0.6)
        got = BoxArray.from_boxes(d.boxes).above(0.6)
        assert abs(len(got) - len(expected)) <= 1, (d.seq, len(got), len(expected))
        if len(expected) and len(got):  # the same people, boxes within JPEG re-encoding noise
            assert (box_iou(expected.xyxy, got.xyxy).max(axis=1) > 0.7).mean() >= 0.8
    capture.release()


def test_the_agent_serves_prometheus_metrics_that_match_what_it_published(one_agent_run: dict) -> None:  # type: ignore[type-arg]
    m = one_agent_run["metrics"]

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in m.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))

    assert total("pedstream_detector_frames_total", camera="pets") == FRAMES
    assert total("pedstream_detector_frames_total") == len(one_agent_run["detections"])
    assert total("pedstream_detector_alerts_total", camera="pets", rule="crowd") == len(one_agent_run["alerts"])
    pets_hard = [h for h in one_agent_run["hard"] if h.camera_id == "pets"]  # (the "after" camera may give some too)
    assert total("pedstream_detector_hard_examples_total", camera="pets") >= len(pets_hard) > 0
    assert total("pedstream_dead_letters_total") == len(one_agent_run["dead"]) >= 1
    assert total("pedstream_detector_stage_seconds_count", stage="infer") == len(one_agent_run["detections"])
    assert total("pedstream_detector_batch_size_count") >= 1
    version = one_agent_run["detections"][0].model_version
    assert total("pedstream_detector_model_info", version=version, backend="ort") == 1
    # `detect --json` printed what it did when stopped, and it agrees with what it published
    summary = one_agent_run["summary"]
    assert isinstance(summary, dict), summary
    assert summary["cameras"] == {"pets": FRAMES, "after": 5, "broken": 0}
    assert summary["counters"]["frames"] == len(one_agent_run["detections"])
    assert summary["counters"]["dead_letters"] == len(one_agent_run["dead"]) and summary["models"]["*"]["version"] == version
    # the detector role exports its own families only (no camera or trainer metric reading 0)
    assert not [n for n, _ in m if n.startswith(("pedstream_trainer_", "pedstream_camera_"))]
