"""The staged pipeline: order kept, micro-batches formed, bad frames reported, model swapped between batches."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectors.detector import Detector, read_model
from detectors.pipeline import DetectionPipeline, WorkItem
from streams.cameras.config import Tiling
from streams.mot import MotSequence


@pytest.fixture(scope="module")
def frames(shared_data: Path) -> list[bytes]:
    seq = MotSequence.load(shared_data / "PETS09-S2L1")
    return [cv2.imencode(".jpg", img)[1].tobytes() for _, img in seq.frames(1, 24)]


@pytest.fixture(scope="module")
def ssd(shared_models: Path) -> Detector:
    return Detector.from_bytes(read_model(shared_models / "ssdlite_pedestrian.onnx"), name="ssd", threads=1)


def run(pipeline_detector: Detector, items: list[WorkItem], **kw: object) -> tuple[list[WorkItem], DetectionPipeline]:
    out: list[WorkItem] = []
    done = threading.Event()
    pipe = DetectionPipeline(pipeline_detector, lambda it: (out.append(it), len(out) == len(items) and done.set()), **kw)  # type: ignore[arg-type]
    for item in items:
        pipe.submit(item)
    assert done.wait(60)
    pipe.stop()
    return out, pipe


def test_results_keep_submission_order_and_match_direct_detection(ssd: Detector, frames: list[bytes]) -> None:
    items = [WorkItem(token=i, camera_id=f"c{i % 3}", jpeg=j) for i, j in enumerate(frames)]
    out, pipe = run(ssd, items, max_batch=4, max_wait_ms=50)
    assert [it.token for it in out] == list(range(len(frames)))
    assert max(pipe.batches) > 1  # micro-batches formed across cameras
    direct = ssd.detect([cv2.imdecode(np.frombuffer(frames[5], np.uint8), cv2.IMREAD_COLOR)])[0]
    np.testing.assert_allclose(out[5].boxes.xyxy, direct.xyxy, atol=1e-3)
    assert {"decode", "preprocess", "infer", "postprocess", "total"} <= set(out[5].timings_ms)


def test_corrupt_jpeg_is_reported_and_the_rest_go_on(ssd: Detector, frames: list[bytes]) -> None:
    broken = frames[0][:200] + b"\x00" * 500
    items = [WorkItem(token=0, camera_id="c", jpeg=broken), WorkItem(token=1, camera_id="c", jpeg=frames[1])]
    out, _ = run(ssd, items)
    assert out[0].error and "corrupt JPEG" in out[0].error
    assert out[1].error is None and out[1].boxes is not None and len(out[1].boxes) > 0


def test_a_frame_whose_jpeg_is_not_the_size_its_record_states_is_refused(ssd: Detector, frames: list[bytes]) -> None:
    items = [
        WorkItem(token=0, camera_id="c", jpeg=frames[0], declared_size=(30_000, 20_000)),
        WorkItem(token=1, camera_id="c", jpeg=frames[1], declared_size=(768, 576)),
    ]
    out, _ = run(ssd, items)
    assert out[0].error == "frame size mismatch: the JPEG is 768x576, the record says 30000x20000"
    assert out[1].error is None and out[1].boxes is not None


def test_swap_applies_between_batches(ssd: Detector, shared_models: Path, frames: list[bytes]) -> None:
    other = Detector.from_bytes(read_model(shared_models / "centernet.onnx"), name="centernet", threads=1)
    out: list[WorkItem] = []
    pipe = DetectionPipeline(ssd, out.append, max_batch=1, max_wait_ms=0)
    for i in range(3):
        pipe.submit(WorkItem(token=i, camera_id="c", jpeg=frames[i]))
    deadline = time.monotonic() + 30
    while len(out) < 1 and time.monotonic() < deadline:  # at least one batch served by the first model
        time.sleep(0.01)
    pipe.swap(other)
    for i in range(3, 6):
        pipe.submit(WorkItem(token=i, camera_id="c", jpeg=frames[i]))
    pipe.stop()
    versions = [it.model_version for it in out]
    assert len(out) == 6 and versions[-1] == other.version and versions[0] == ssd.version
    assert versions == sorted(versions, key=lambda v: v == other.version)  # one switch, never back
    assert all(it.error is None for it in out)


def test_tiling_runs_tiles_as_one_batch_and_merges(ssd: Detector, frames: list[bytes]) -> None:
    items = [WorkItem(token=0, camera_id="c", jpeg=frames[0], tiling=Tiling(rows=2, cols=2, overlap=120))]
    out, pipe = run(ssd, items, max_batch=8)
    assert pipe.batches == [4] and out[0].boxes is not None and len(out[0].boxes) > 0
    assert out[0].boxes.xyxy[:, 2].max() <= 768 and out[0].boxes.xyxy[:, 3].max() <= 576


def test_expired_frames_are_shed_before_inference_and_keep_their_place(ssd: Detector, frames: list[bytes]) -> None:
    now = time.time()
    items = [WorkItem(token=i, camera_id="c", jpeg=j, expires_ts=(now - 1.0) if i % 2 else (now + 60.0)) for i, j in enumerate(frames[:8])]
    items.append(WorkItem(token=8, camera_id="c", jpeg=frames[8], shed="stale on arrival: set by the caller"))
    out, pipe = run(ssd, items, max_batch=4)
    assert [it.token for it in out] == list(range(9))  # order kept, shed frames included
    for item in out[:8]:
        if item.token % 2:
            assert item.shed is not None and item.shed.startswith("stale at inference") and item.boxes is None
        else:
            assert item.shed is None and item.boxes is not None
    assert out[8].shed == "stale on arrival: set by the caller" and "decode" not in out[8].timings_ms  # never decoded
    assert sum(pipe.batches) == 4  # only the four fresh frames were inferred
    assert pipe.infer_estimate_s > 0 and pipe.total_estimate_s > 0
    # with nothing queued a new frame expects one batch, whatever the frames before it waited
    assert pipe.expected_latency_s() == pytest.approx(pipe.infer_estimate_s)


def test_greedy_batching_adds_no_wait(ssd: Detector, frames: list[bytes]) -> None:
    waited, _ = run(ssd, [WorkItem(token=0, camera_id="c", jpeg=frames[0])], max_batch=4, max_wait_ms=500)
    greedy, _ = run(ssd, [WorkItem(token=0, camera_id="c", jpeg=frames[0])], max_batch=4, max_wait_ms=0)
    assert waited[0].timings_ms["total"] >= 450.0  # a lone frame held back for companions that never come
    assert greedy[0].timings_ms["total"] < 250.0  # not held back at all
