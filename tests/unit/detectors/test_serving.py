"""Per-camera serving at the edge: which model each camera gets, the order rules (newer serial; no
older version unless a signed rollback), the automatic rollback on a fall in agreement with the
teacher, and a batch split by model."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectors.agreement import AgreementMonitor, AgreementPolicy
from detectors.detector import Detector, read_model, with_version
from detectors.pipeline import DetectionPipeline, WorkItem
from detectors.results import BoxArray
from detectors.serving import ServedModels
from streams.mot import MotSequence
from streams.records import GENERAL_SCOPE, ModelAnnouncement


@pytest.fixture(scope="module")
def student_bytes() -> bytes:
    return read_model("student")


def detector(model: bytes, version: str) -> Detector:
    return Detector.from_bytes(with_version(model, version), name=version, threads=1)


def order(version: str, serial: int, number: int, scope: list[str] | None = None, kind: str = "release") -> ModelAnnouncement:
    return ModelAnnouncement(
        version=version,
        sha256="0" * 64,
        size_bytes=1,
        registry_key=f"k:{version}",
        model_format="student",
        published_ts=1.0,
        scope=scope or [],
        serial=serial,
        number=number,
        order=kind,  # type: ignore[arg-type]
        signature="c2ln",
    )


def test_cameras_without_a_model_of_their_own_get_the_general_one(student_bytes: bytes) -> None:
    models = ServedModels(detector(student_bytes, "general-1"))
    assert models.for_camera("cam-new").version == "general-1"
    models.install(detector(student_bytes, "cam-a-1"), order("cam-a-1", 2, 2, ["cam-a"]), ["cam-a"])
    assert models.for_camera("cam-a").version == "cam-a-1"
    assert models.for_camera("cam-new").version == "general-1"
    models.install(detector(student_bytes, "general-2"), order("general-2", 3, 3), [])
    assert models.for_camera("cam-new").version == "general-2"
    assert models.for_camera("cam-a").version == "cam-a-1"  # its own model outranks the general one
    assert models.status()[GENERAL_SCOPE]["version"] == "general-2" and models.status()["cam-a"]["serial"] == 2


def test_orders_move_forward_only_unless_a_rollback_names_the_older_version(student_bytes: bytes) -> None:
    models = ServedModels(detector(student_bytes, "start"))
    first = order("v-1", 1, 1)
    assert models.admit(first) is None
    models.install(detector(student_bytes, "v-1"), first, [])
    assert models.admit(first) == ""  # the order in force, read again after a reconnect: nothing to do
    assert "not newer" in (models.admit(order("v-0", 1, 0)) or "")  # a replayed order
    second = order("v-2", 5, 2)
    models.install(detector(student_bytes, "v-2"), second, [])
    older_release = models.admit(order("v-1", 6, 1))
    assert older_release is not None and "older than v-2" in older_release and "rollback" in older_release
    assert models.admit(order("v-1", 6, 1, kind="rollback")) is None
    assert models.admit(order("v-1", 4, 1, kind="rollback")) is not None  # a rollback order needs a newer serial too
    # a camera with no model of its own takes any signed order for it; then the same rules apply to it
    assert models.admit(order("cam-b-1", 7, 3, ["cam-b"])) is None
    models.install(detector(student_bytes, "cam-b-1"), order("cam-b-1", 7, 3, ["cam-b"]), ["cam-b"])
    assert models.admit(order("v-2", 8, 2, ["cam-b"])) is not None


def test_an_agent_reverts_one_camera_to_what_it_served_before(student_bytes: bytes) -> None:
    models = ServedModels(detector(student_bytes, "general-1"))
    models.install(detector(student_bytes, "cam-a-1"), order("cam-a-1", 2, 2, ["cam-a"]), ["cam-a"])
    models.install(detector(student_bytes, "cam-a-2"), order("cam-a-2", 3, 3, ["cam-a"]), ["cam-a"])
    reverted = models.revert("cam-a")
    assert reverted is not None and reverted.version == "cam-a-1" and models.for_camera("cam-a").version == "cam-a-1"
    assert models.revert("cam-a") is None  # one step back only: the previous one is used up
    models.install(detector(student_bytes, "cam-c-1"), order("cam-c-1", 4, 4, ["cam-c"]), ["cam-c"])
    back = models.revert("cam-c")
    assert back is not None and back.version == "general-1" and "cam-c" not in models.status()  # follows the general model again


def test_one_batch_runs_each_camera_on_its_own_model(student_bytes: bytes, shared_data: Path) -> None:
    models = ServedModels(detector(student_bytes, "general-1"))
    models.install(detector(student_bytes, "cam-a-1"), order("cam-a-1", 2, 2, ["cam-a"]), ["cam-a"])
    [(_, image)] = list(MotSequence.load(shared_data / "PETS09-S2L1").frames(1, 1))
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    out: list[WorkItem] = []
    done = threading.Event()
    cameras = ["cam-a", "cam-b", "cam-a", "cam-b"]
    pipe = DetectionPipeline(models, lambda it: (out.append(it), len(out) == len(cameras) and done.set()), max_batch=4, max_wait_ms=200)  # type: ignore[func-returns-value]
    for i, camera in enumerate(cameras):
        pipe.submit(WorkItem(token=i, camera_id=camera, jpeg=jpeg))
    assert done.wait(60)
    pipe.stop()
    assert [it.error for it in out] == [None] * 4
    assert [it.model_version for it in out] == ["cam-a-1", "general-1", "cam-a-1", "general-1"]
    assert all(it.boxes is not None for it in out)


def test_a_camera_whose_agreement_with_the_teacher_falls_after_a_swap_rolls_back(student_bytes: bytes) -> None:
    models = ServedModels(detector(student_bytes, "general-1"))
    models.install(detector(student_bytes, "general-2"), order("general-2", 2, 2), [])
    dropped: list[tuple[str, str]] = []
    monitor = AgreementMonitor(
        lambda image: BoxArray.empty(), lambda camera, why: dropped.append((camera, why)), AgreementPolicy(min_frames=4)
    )
    people = BoxArray.of(np.array([[10, 10, 40, 90], [100, 20, 130, 100]], float), np.array([0.9, 0.9]))
    for _ in range(4):  # general-1 found both people the teacher sees; general-2 finds one of them on door, both on yard
        monitor.record("door", "general-1", people, people)
        monitor.record("yard", "general-1", people, people)
    for _ in range(3):
        monitor.record("door", "general-2", people[np.array([True, False])], people)
        monitor.record("yard", "general-2", people, people)
    assert dropped == []  # three frames: not enough to judge
    monitor.record("door", "general-2", people[np.array([True, False])], people)
    monitor.record("yard", "general-2", people, people)
    assert [camera for camera, _ in dropped] == ["door"] and "fell from 1.00 (general-1, 4 frames) to 0.50" in dropped[0][1]
    monitor.close()
    # the agent's own rollback: door goes back to the general model before the swap, yard keeps the new one
    back = models.revert("door")
    assert back is not None and back.version == "general-1"
    assert models.for_camera("door").version == "general-1" and models.for_camera("yard").version == "general-2"
