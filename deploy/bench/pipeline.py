"""``pedstream bench pipeline``: virtual cameras -> Kafka -> a detector agent -> detections, measured end to end,
plus the pipeline's own throughput against the bare backend on the same cores."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from deploy.agent_process import AgentProcess
from deploy.bench.ingest import virtual_fleet
from deploy.stack import free_loopback_port
from detectors.detector import Detector
from detectors.pipeline import DetectionPipeline, WorkItem
from streams.bus import RecordWatch, make_producer
from streams.cameras.agent import CameraFleet
from streams.mot import MotSequence
from streams.records import Detections, Frame
from streams.topics import Topics
from streams.wire import encode


def efficiency(detector: Detector, sequence_dir: Path, seconds: float, max_batch: int) -> dict[str, float]:
    """Saturated throughput of the full pipeline (decode..postprocess) over the bare backend's, same process."""
    sequence = MotSequence.load(sequence_dir)
    images = [img for _, img in sequence.frames(1, 16)]
    jpegs = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for img in images]
    batch = detector.preprocess(images[:max_batch])[0]
    detector.infer(batch)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        detector.infer(batch)
        done += len(batch)
    bare_fps = done / (time.perf_counter() - started)

    finished = {"n": 0}
    pipe = DetectionPipeline(detector, lambda _item: finished.__setitem__("n", finished["n"] + 1), max_batch=max_batch, max_wait_ms=10)
    started = time.perf_counter()
    submitted = 0
    while time.perf_counter() - started < seconds:
        pipe.submit(WorkItem(token=submitted, camera_id=f"c{submitted % 8}", jpeg=jpegs[submitted % len(jpegs)]))
        submitted += 1
    pipe.stop()
    pipeline_fps = finished["n"] / (time.perf_counter() - started)
    return {"bare_backend_fps": round(bare_fps, 2), "pipeline_fps": round(pipeline_fps, 2), "efficiency": round(pipeline_fps / bare_fps, 3)}


class DetectionsCollector:
    """Watches the detections topic: (camera, seq) -> arrival time minus capture time, in ms."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.latency_ms: dict[tuple[str, int], float] = {}
        self.watch = RecordWatch(bootstrap, topics, topics.detections, Detections, on_record=self._arrived)

    def _arrived(self, d: Detections, now: float) -> None:
        self.latency_ms.setdefault((d.camera_id, d.seq), (now - d.capture_ts) * 1000.0)

    @property
    def records(self) -> list[Detections]:
        return self.watch.records

    def stop(self) -> None:
        self.watch.close()


def _wait_for_agent(bootstrap: str, topics: Topics, collector: DetectionsCollector, timeout_s: float = 90) -> None:
    """Publish probe frames until one comes back detected: the agent has joined and warmed up."""
    jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    producer = make_producer(bootstrap)
    deadline = time.monotonic() + timeout_s
    seq = 0
    try:
        while time.monotonic() < deadline:
            msg = encode(Frame(camera_id="probe", seq=seq, capture_ts=time.time(), width=32, height=32, jpeg=jpeg, source_frame_index=0))
            producer.send(topics.frames.name, key=msg.key, value=msg.value, headers=msg.headers)
            producer.flush()
            seq += 1
            for _ in range(10):
                if any(d.camera_id == "probe" for d in collector.records):
                    return
                time.sleep(0.2)
        raise RuntimeError("the detector agent did not answer within the timeout")
    finally:
        producer.close()


def run(
    bootstrap: str,
    topics: Topics,
    model: Path,
    source: str,
    sequence_dir: Path,
    cameras: int,
    fps: float,
    seconds: float,
    threads: int,
    batch: int,
    home: Path,
    progress: Callable[[str], None] = print,
    backend: str = "auto",
) -> dict[str, object]:
    detector = Detector.from_bytes(model.read_bytes(), name=model.stem, threads=threads)
    progress("measuring pipeline vs bare backend (no Kafka load)")
    eff = efficiency(detector, sequence_dir, min(10.0, seconds / 2), batch)
    progress(f"starting a detector agent ({detector.version}, backend {backend})")
    agent = AgentProcess(
        model, bootstrap, topics, home, "bench-agent", threads=threads, batch=batch, backend=backend, metrics_port=free_loopback_port()
    ).start()
    collector = DetectionsCollector(bootstrap, topics)
    served = {"version": detector.version, "backend": "unknown"}
    try:
        _wait_for_agent(bootstrap, topics, collector)
        served = agent.served_model()
        fleet = CameraFleet(virtual_fleet(source, cameras, fps), bootstrap, topics)
        progress(f"{cameras} cameras x {fps} fps for {seconds:.0f}s")
        fleet.start()
        started = time.time()
        fleet.wait(
            seconds, on_tick=lambda: progress(f"{time.time() - started:4.0f}s: {len(collector.latency_ms)} frames detected"), tick_s=5
        )
        fleet.stop()
        published = {(r.config.id, s) for r in fleet.runners for s in range(r.stats.published)}
        drain_until = time.monotonic() + 15
        while time.monotonic() < drain_until and not published <= set(collector.latency_ms):
            time.sleep(0.2)
    finally:
        collector.stop()
        agent.stop()
    window = [v for k, v in collector.latency_ms.items() if k in published]
    in_window = [d for d in collector.records if (d.camera_id, d.seq) in published]
    stages = sorted({k for d in in_window for k in d.latency_ms})
    stage_p50 = {k: round(float(np.median([d.latency_ms[k] for d in in_window if k in d.latency_ms])), 1) for k in stages}
    lat = np.array(window) if window else np.array([np.nan])
    return {
        "model": served["version"],
        "backend": served["backend"],  # what the agent reported serving (its model_info metric)
        "cameras": cameras,
        "seconds": seconds,
        "offered_fps": round(cameras * fps, 2),
        "published_fps": round(len(published) / seconds, 2),
        "achieved_fps": round(len(window) / seconds, 2),
        "frames_published": len(published),
        "frames_detected": len(window),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)},
        "stage_p50_ms": stage_p50,
        "efficiency": eff["efficiency"],
        "bare_backend_fps": eff["bare_backend_fps"],
        "pipeline_fps": eff["pipeline_fps"],
        "batch": batch,
        "threads": threads,
    }
