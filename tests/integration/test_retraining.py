"""The trainer service on the real broker, Redis and a loopback Ray cluster: hard examples are
consumed into the store, a retraining cycle is requested through Redis, the candidate is trained
from the model the camera serves, gated on its held-out time blocks and stored with lineage and
the gate's report (approved and served on that camera only, or rejected and unsigned)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch

from detectors.detector import onnx_metadata
from detectors.quantize import quantize_int8
from streams.bus import HardExamplePublisher, ensure_topics, make_producer
from streams.model_channel import ModelKeys, connect_redis
from streams.mot import MotSequence
from streams.records import HardExample
from streams.signing import PRIVATE_NAME, Signer, init_keys
from streams.topics import Topics
from trainer.cluster import LocalRayCluster, RayPorts
from trainer.data import LabelCache
from trainer.gate import GatePolicy
from trainer.job import JobSettings
from trainer.labels import TeacherLabeler
from trainer.ps import model_weights
from trainer.registry import Lineage, Registry
from trainer.retrain import Retrainer, RetrainPolicy
from trainer.service import RetrainKeys, TrainerService, request_retrain, wait_for_result
from trainer.store import HardExampleStore
from trainer.student import Student, StudentConfig, export_onnx

pytestmark = pytest.mark.integration
SMALL = StudentConfig(input_width=256, input_height=192)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    with LocalRayCluster(RayPorts(27800), num_cpus=3) as cluster:
        yield cluster


def hard_examples(sequence: MotSequence, camera: str, frames: range) -> list[HardExample]:
    out = []
    for n, image in sequence.frames(frames.start, frames.stop - 1, frames.step):
        jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        out.append(
            HardExample(
                camera_id=camera,
                seq=n,
                capture_ts=1_000_000.0 + n,
                width=image.shape[1],
                height=image.shape[0],
                jpeg=jpeg,
                source_frame_index=n,
                model_version="s-0",
                detections=[],
                reasons=["random"],
                mined_ts=time.time(),
            )
        )
    return out


def test_service_stores_hard_examples_ships_a_passing_candidate_and_keeps_a_failing_one_out(
    ray_cluster: LocalRayCluster,
    broker: str,
    redis_url: str,
    shared_data: Path,
    shared_models: Path,
    tmp_path: Path,
) -> None:
    """Two requested cycles through the service: the first under a gate any candidate passes (it must
    be published and made current), the second under a gate no candidate can pass (+1.0 AP50): it must
    be stored as rejected with the gate's reason while the first stays current."""
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    init_keys(tmp_path / "keys")
    client = connect_redis(redis_url)
    registry = Registry(client, ModelKeys.for_topics(topics.prefix), Signer.load(tmp_path / "keys" / PRIVATE_NAME))
    torch.manual_seed(0)
    student = Student(SMALL)
    # an int8 start, as the bundled student is: the candidates must come out int8 too
    calibration = [image for _, image in MotSequence.load(shared_data / "PETS09-S2L1").frames(1, 60, 20)]
    start = quantize_int8(export_onnx(student, "s-0"), calibration)
    registry.publish(start, Lineage(notes="untrained start"), weights=model_weights(student))

    store = HardExampleStore(tmp_path / "store")
    job = JobSettings(updates=12, workers=2, batch_size=4, eval_every=0, warmup=2)
    lenient = RetrainPolicy(min_new_examples=1000, gate=GatePolicy(min_frames=5, margin=-1.0, resamples=200), job=job)
    retrainer = Retrainer(store, registry, TeacherLabeler(shared_models), LabelCache(tmp_path / "labels"), lenient, SMALL)
    service = TrainerService(broker, topics, client, store, retrainer, auto=False, check_every_s=1.0)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    keys = RetrainKeys(registry.keys)
    pets = MotSequence.load(shared_data / "PETS09-S2L1")
    publisher = HardExamplePublisher(make_producer(broker), topics.hard_examples)

    def deliver(records: list[HardExample], expected_total: int) -> None:
        for record in records:
            publisher.publish(record)
        publisher.flush(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and store.counts().get("pets", {}).get("total", 0) < expected_total:
            time.sleep(0.5)

    try:
        first_batch = hard_examples(pets, "pets", range(1, 121, 3))
        deliver(first_batch + first_batch[:5], len(first_batch))  # five duplicates
        counts = store.counts()["pets"]
        assert counts["total"] == len(first_batch) and counts["held_out"] > 0
        shipped = wait_for_result(client, keys, request_retrain(client, keys, ["pets"], 5), 300)
        assert shipped is not None and "error" not in shipped, shipped
        current_after_first = registry.current_version()
        serving_after_first = registry.serving("pets")
        shipped_entry = registry.entry(shipped["version"])
        shipped_precision = onnx_metadata(registry.onnx(shipped["version"])).get("precision")

        second_batch = hard_examples(pets, "pets", range(200, 320, 3))
        deliver(second_batch, len(first_batch) + len(second_batch))
        retrainer.policy = RetrainPolicy(min_new_examples=1000, gate=GatePolicy(min_frames=500), job=job)  # more gate frames than exist
        waiting = wait_for_result(client, keys, request_retrain(client, keys, ["pets"], 5), 60)
        unknown = wait_for_result(client, keys, request_retrain(client, keys, ["nosuch"], None), 60)
        retrainer.policy = RetrainPolicy(  # a gate nothing passes
            min_new_examples=1000, gate=GatePolicy(min_frames=5, margin=1.0, resamples=200), job=job
        )
        rejected = wait_for_result(client, keys, request_retrain(client, keys, ["pets"], 5), 300)
        assert rejected is not None and "error" not in rejected, rejected
        rejected_entry = registry.entry(rejected["version"])
        current_after_second = registry.current_version()
        serving_after_second = registry.serving("pets")
    finally:
        service.stop()
        thread.join(60)
        client.delete(*client.keys(f"{registry.keys.prefix}:*"))
    # the first cycle trained on every new example, gated on the camera's held-out time blocks and
    # shipped to that camera only: the general model is still the start one
    assert shipped["shipped"] is True and shipped["cameras"] == ["pets"] and shipped["new_examples"] == counts["new"]
    assert set(shipped["per_camera"]["pets"]) == {"current", "candidate", "frames"} and shipped["train"]["updates"] == 12
    assert shipped["per_camera"]["pets"]["frames"] == counts["held_out"] == 14  # frames 1-19 and 100-118: whole blocks
    assert serving_after_first == shipped["version"] and current_after_first == "s-0" and shipped_entry["state"] == "approved"
    assert shipped_entry["announcement"]["scope"] == ["pets"] and shipped_entry["announcement"]["signature"]
    assert shipped_entry["gate"]["cameras"][0]["labels"].startswith("teacher") and shipped_entry["gate"]["cameras"][0]["frames"] == 14
    assert shipped_entry["lineage"]["parent"] == "s-0" and shipped_entry["lineage"]["data"]["new"] == counts["new"]
    assert shipped_precision == "int8"  # as its parent, calibrated on the camera's examples
    # too few gate frames: nothing trained, nothing stored; an unknown camera is named
    assert waiting is not None and waiting["outcome"] == "waiting" and "pets has 27 gate frames" in waiting["reason"]
    assert unknown is not None and "no hard examples from camera nosuch" in unknown["error"]
    # the third was trained from the model the camera serves, failed the gate, and is stored unsigned, never served
    assert rejected["shipped"] is False and "the lower end is not above +1.000" in rejected["reason"]
    assert rejected_entry["state"] == "rejected" and rejected_entry["reason"] == rejected["reason"]
    assert rejected_entry["announcement"]["signature"] is None
    assert rejected_entry["lineage"]["parent"] == shipped["version"]
    assert serving_after_second == shipped["version"] and current_after_second == "s-0"
    assert store.counts()["pets"]["new"] == 0


def test_triggers_fire_on_many_new_examples_or_low_agreement(
    tmp_path: Path, shared_data: Path, shared_models: Path, redis_url: str
) -> None:
    store = HardExampleStore(tmp_path / "store")
    pets = MotSequence.load(shared_data / "PETS09-S2L1")
    for record in hard_examples(pets, "pets", range(1, 61, 3)):
        store.add(record)
    teacher = TeacherLabeler(shared_models)
    registry = Registry(connect_redis(redis_url), ModelKeys(f"t{uuid.uuid4().hex[:8]}:models"))
    gate = GatePolicy(min_frames=5)  # frames 1-19 are gate frames (7 of these 20)
    waiting = Retrainer(store, registry, teacher, LabelCache(tmp_path / "labels"), RetrainPolicy(min_new_examples=5))
    assert waiting.due() == {}  # 7 gate frames, fewer than the default 30: a candidate could not be judged yet
    many = Retrainer(store, registry, teacher, LabelCache(tmp_path / "labels"), RetrainPolicy(min_new_examples=5, gate=gate))
    assert "new hard examples" in many.due()["pets"]
    # the mined detections are empty, so the edge model's agreement with the teacher is 0
    low = Retrainer(
        store, registry, teacher, LabelCache(tmp_path / "labels"), RetrainPolicy(min_new_examples=1000, min_agreement=0.5, gate=gate)
    )
    assert low.estimated_accuracy("pets") == 0.0 and "estimated accuracy 0.00" in low.due()["pets"]
    strict = Retrainer(
        store, registry, teacher, LabelCache(tmp_path / "labels"), RetrainPolicy(min_new_examples=1000, min_agreement=0.0, gate=gate)
    )
    assert strict.due() == {}
