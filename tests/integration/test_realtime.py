"""Bounded latency on the real broker: a detector agent sheds frames older than their camera's
deadline (counted, published as skipped records, never inferred), a new group skips old history by
record timestamps, and every detection carries where its time went."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import cv2
import pytest
from kafka import KafkaProducer

from deploy.agent_process import AgentProcess
from deploy.stack import free_loopback_port
from streams.bus import RecordWatch, ensure_topics
from streams.kafka_settings import producer_settings
from streams.mot import MotSequence
from streams.records import Detections, Frame
from streams.topics import Topics
from streams.wire import encode

pytestmark = pytest.mark.integration


def _frames(sequence: MotSequence, count: int) -> list[tuple[int, bytes]]:
    return [(n, cv2.imencode(".jpg", image)[1].tobytes()) for n, image in sequence.frames(1, count)]


def _send(producer: KafkaProducer, topics: Topics, frame: Frame, timestamp_ms: int | None = None) -> None:
    msg = encode(frame)
    producer.send(topics.frames.name, key=msg.key, value=msg.value, headers=msg.headers, timestamp_ms=timestamp_ms)


def _wait(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _metric(port: int, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line.startswith(name)}


def test_stale_frames_are_shed_and_fresh_ones_carry_their_latency_anatomy(
    broker: str, shared_models: Path, shared_data: Path, tmp_path: Path
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    pets = MotSequence.load(shared_data / "PETS09-S2L1")
    images = _frames(pets, 12)
    port = free_loopback_port()
    agent = AgentProcess(shared_models / "ssdlite_pedestrian.onnx", broker, topics, tmp_path, "rt-a", metrics_port=port).start()
    watch = RecordWatch(broker, topics, topics.detections, Detections)
    producer = KafkaProducer(**producer_settings(broker))
    try:
        probe = Frame(camera_id="probe", seq=0, capture_ts=time.time(), width=768, height=576, jpeg=images[0][1], source_frame_index=0)
        _send(producer, topics, probe)
        producer.flush()
        assert _wait(lambda: any(d.camera_id == "probe" for d in watch.snapshot()), 90), agent.log()[-2000:]
        # six frames captured 5 s ago from a 10 fps camera (deadline 2 x 100 ms): stale on arrival
        old = time.time() - 5.0
        for seq, (n, jpeg) in enumerate(images[:6]):
            frame = Frame(camera_id="cam", seq=seq, capture_ts=old + seq * 0.1, width=768, height=576, jpeg=jpeg,
                          source_frame_index=n - 1, period_ms=100.0)  # fmt: skip
            _send(producer, topics, frame)
        producer.flush()
        # then six fresh ones, sent every 100 ms but stamped with a 1 s period (deadline 2 s), so that a
        # machine busy with other work does not shed them: this test is about the stale ones
        for seq, (n, jpeg) in enumerate(images[6:], start=6):
            frame = Frame(camera_id="cam", seq=seq, capture_ts=time.time(), width=768, height=576, jpeg=jpeg,
                          source_frame_index=n - 1, period_ms=1000.0)  # fmt: skip
            _send(producer, topics, frame)
            producer.flush()
            time.sleep(0.1)
        assert _wait(lambda: len({d.seq for d in watch.snapshot() if d.camera_id == "cam"}) >= 12, 60)
        shed_metric = _metric(port, "pedstream_frames_shed_total")
    finally:
        producer.close()
        watch.close()
        agent.stop()
    cam = {d.seq: d for d in watch.snapshot() if d.camera_id == "cam"}
    for seq in range(6):
        assert cam[seq].skipped is not None and cam[seq].skipped.startswith("stale on arrival"), cam[seq]
        assert cam[seq].boxes == [] and cam[seq].latency_ms["frame_to_detection"] >= 4000
    fresh = [cam[seq] for seq in range(6, 12)]
    assert all(d.skipped is None for d in fresh)
    assert sum(len(d.boxes) for d in fresh) > 0
    for d in fresh:
        assert {"camera", "broker", "queue", "decode", "preprocess", "infer", "postprocess", "publish", "total"} <= set(d.latency_ms)
        assert d.latency_ms["frame_to_detection"] >= d.latency_ms["infer"]
    assert shed_metric['pedstream_frames_shed_total{camera="cam",where="arrival"}'] == 6


def test_a_new_group_skips_history_older_than_its_catch_up_window(
    broker: str, shared_models: Path, shared_data: Path, tmp_path: Path
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    pets = MotSequence.load(shared_data / "PETS09-S2L1")
    images = _frames(pets, 4)
    producer = KafkaProducer(**producer_settings(broker))
    two_hours_ago = time.time() - 7200
    for seq in range(150):  # two hours old, as a stopped group would find them
        n, jpeg = images[seq % len(images)]
        frame = Frame(camera_id="cam", seq=seq, capture_ts=two_hours_ago + seq * 0.2, width=768, height=576, jpeg=jpeg,
                      source_frame_index=n - 1, period_ms=200.0)  # fmt: skip
        _send(producer, topics, frame, timestamp_ms=int((two_hours_ago + seq * 0.2) * 1000))
    producer.flush()
    watch = RecordWatch(broker, topics, topics.detections, Detections)
    agent = AgentProcess(shared_models / "ssdlite_pedestrian.onnx", broker, topics, tmp_path, "rt-b").start()
    try:
        probe = Frame(camera_id="probe", seq=0, capture_ts=time.time(), width=768, height=576, jpeg=images[0][1], source_frame_index=0)
        _send(producer, topics, probe)
        producer.flush()
        assert _wait(lambda: any(d.camera_id == "probe" for d in watch.snapshot()), 90), agent.log()[-2000:]
        for seq in range(150, 160):
            n, jpeg = images[seq % len(images)]
            frame = Frame(camera_id="cam", seq=seq, capture_ts=time.time(), width=768, height=576, jpeg=jpeg,
                          source_frame_index=n - 1, period_ms=200.0)  # fmt: skip
            _send(producer, topics, frame)
            producer.flush()
            time.sleep(0.2)
        assert _wait(lambda: {d.seq for d in watch.snapshot()} >= set(range(150, 160)), 90), agent.log()[-3000:]
        time.sleep(1)
    finally:
        producer.close()
        watch.close()
        agent.stop()
    cam = [d for d in watch.snapshot() if d.camera_id == "cam"]
    old = {d.seq for d in cam} & set(range(150))
    assert not old, f"{len(old)} two-hour-old frames were read"
    assert all(d.skipped is None for d in cam)
    assert "skipped 150 frames older than 60 s" in agent.log()


def _bench(*args: str, data: Path, timeout: float = 300) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "PEDSTREAM_DATA": str(data)}
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "bench", *args, "--json"], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_bench_pipeline_reports_the_served_backend_steps_and_honest_efficiency(broker: str, topics: Topics, shared_data: Path) -> None:
    out = _bench("pipeline", "--model", "student", "--cameras", "2", "--fps", "5", "--seconds", "6", "--threads", "1",
                 "--backend", "ort", "--bootstrap", broker, "--topic-prefix", topics.prefix, data=shared_data)  # fmt: skip
    assert out["backend"] == "ort" and out["model"].startswith("student")
    assert out["offered_fps"] == 10 and out["load_generator"] == "cameras"
    assert 0 < out["achieved_fps"] <= out["published_fps"] + 0.5
    assert out["frames_detected"] + out["frames_shed"] + out["frames_unanswered"] == out["frames_published"] > 0
    assert out["efficiency"] == round(out["achieved_fps"] / min(out["offered_fps"], out["bare_fps"]), 3)
    assert out["latency_ms"]["p99"] >= out["latency_ms"]["p50"] > 0
    assert {"camera", "broker", "queue", "decode", "infer", "publish", "delivery"} <= set(out["steps_ms"])
    assert set(out["cpu_cores_used"]) == {"agent", "cameras_and_bench", "broker"}


def test_bench_capacity_searches_camera_counts(broker: str, topics: Topics, shared_data: Path) -> None:
    out = _bench("capacity", "--model", "student", "--max-cameras", "4", "--seconds", "5", "--threads", "1", "--backend", "ort",
                 "--load-generator", "replay", "--bootstrap", broker, "--topic-prefix", topics.prefix, data=shared_data)  # fmt: skip
    # the search starts at 4; whether 4 fit depends on how busy the machine was (a benchmark, not a
    # timed test): if it did that is the answer, else it bisects below 4 and reports the largest count that fit
    trials = {t["cameras"]: t for t in out["trials"]}
    assert 4 in trials

    def fits(n: int) -> bool:
        t = trials[n]
        return bool(t["frames_shed"] == 0 and t["frames_unanswered"] == 0 and t["latency_ms"]["p99"] <= 150)

    if fits(4):
        assert list(trials) == [4] and out["capacity_cameras"] == 4
    else:
        assert set(trials) <= {1, 2, 3, 4} and out["first_over"] is not None
        assert out["capacity_cameras"] == max([n for n in trials if fits(n)], default=0)
