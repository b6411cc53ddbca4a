"""``pedstream bench pipeline`` and ``bench capacity``: virtual cameras -> Kafka -> one detector agent
process -> detections, measured end to end through the real path.

``PipelineRig`` starts the agent once and measures as many loads as asked. Each load runs its own
virtual cameras (fresh camera ids) for a fixed window; a frame counts as achieved when its
detections reached the bench's consumer inside the window (the drain after it is reported apart).
Latency is capture -> detection received, with every step the frame's record carries (camera,
broker, queue, decode, preprocess, infer, postprocess, publish) plus delivery (record sent ->
received). ``bare_fps`` is the same model in one process doing decode, preprocessing, inference
and postprocessing on the same frames and threads: what the pipeline would do with no Kafka and
no cameras beside it. ``efficiency`` = achieved / min(offered, bare).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deploy.agent_process import AgentProcess
from deploy.bench.ingest import virtual_fleet
from deploy.stack import free_loopback_port
from detectors.detector import Detector
from streams.bus import FramePublisher, RecordWatch, make_producer
from streams.cameras.agent import CameraFleet
from streams.mot import MotSequence
from streams.records import Detections, Frame
from streams.topics import Topics
from streams.wire import encode

LOAD_GENERATORS = ("cameras", "replay")
STEPS = ("camera", "broker", "queue", "decode", "preprocess", "infer", "postprocess", "publish", "delivery")


def bare_fps(detector: Detector, sequence_dir: Path, seconds: float, batch: int) -> float:
    """Frames per second of decode + preprocess + inference + postprocess in one loop, one process."""
    sequence = MotSequence.load(sequence_dir)
    jpegs = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for _, img in sequence.frames(1, 16)]

    def one_batch(start: int) -> int:
        chunk = [jpegs[(start + i) % len(jpegs)] for i in range(batch)]
        images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in chunk]
        detector.detect([image for image in images if image is not None])
        return len(chunk)

    one_batch(0)  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += one_batch(done)
    return done / (time.perf_counter() - started)


def _burn(stop_at: float) -> None:
    """Keep one core busy until ``stop_at`` (monotonic): the --background-load process."""
    x = 0
    while time.monotonic() < stop_at:
        x = (x * 31 + 7) % 1_000_003


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc), 0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _pid_listening_on(bootstrap: str) -> int | None:
    """The embedded broker's process for ``bootstrap`` (found by its command line), if it runs here."""
    needle = f"tcp://{bootstrap.split(',')[0]}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


class ReplayCameras:
    """The bench's cheap load generator: ``cameras`` cameras publishing pre-encoded JPEG frames of
    ``source`` at ``fps`` each (fresh capture times, the camera period set), from one thread. It
    stands for cameras on other hosts, so the agent gets the cores camera agents would take here."""

    def __init__(
        self, bootstrap: str, topics: Topics, source: str, cameras: int, fps: float, id_prefix: str, ids: list[str] | None = None
    ) -> None:
        capture = cv2.VideoCapture(source)
        self.jpegs: list[tuple[bytes, int, int]] = []
        while len(self.jpegs) < 50:
            ok, image = capture.read()
            if not ok:
                break
            self.jpegs.append((cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(), image.shape[1], image.shape[0]))
        capture.release()
        if not self.jpegs:
            raise RuntimeError(f"cannot read frames from {source}")
        self.ids = ids or [f"{id_prefix}-{i}" for i in range(cameras)]
        self.fps = fps
        self.published = dict.fromkeys(self.ids, 0)
        self.publisher = FramePublisher(make_producer(bootstrap), topics.frames)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="replay-cameras")

    def _run(self) -> None:
        interval = 1.0 / (self.fps * len(self.ids))
        started = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            due = started + tick * interval
            if due > time.monotonic():
                self._stop.wait(due - time.monotonic())
                continue
            camera = self.ids[tick % len(self.ids)]
            seq = self.published[camera]
            jpeg, width, height = self.jpegs[(seq + tick) % len(self.jpegs)]
            frame = Frame(camera_id=camera, seq=seq, capture_ts=time.time(), width=width, height=height, jpeg=jpeg,
                          source_frame_index=seq, period_ms=1000.0 / self.fps)  # fmt: skip
            self.publisher.publish(frame)
            self.published[camera] = seq + 1
            tick += 1

    def start(self) -> None:
        self._thread.start()

    def wait(self, seconds: float, on_tick: Callable[[], None], tick_s: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(tick_s, max(0.0, end - time.monotonic())))
            on_tick()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.publisher.flush(30)
        self.publisher.producer.close(5)

    def published_frames(self) -> set[tuple[str, int]]:
        return {(camera, seq) for camera, count in self.published.items() for seq in range(count)}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    arr = np.array(values)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
        "max": round(float(arr.max()), 1),
    }


@dataclass
class _Arrivals:
    """Detections records as the bench's consumer received them: (camera, seq) -> (record, time)."""

    by_frame: dict[tuple[str, int], tuple[Detections, float]] = field(default_factory=dict)

    def add(self, record: Detections, now: float) -> None:
        self.by_frame.setdefault((record.camera_id, record.seq), (record, now))


def wait_until_detected(
    bootstrap: str, topics: Topics, detected: Callable[[tuple[str, int]], bool], agents: list[AgentProcess], timeout_s: float = 120
) -> None:
    """Publish probe frames (camera ``probe``) until ``detected((camera, seq))`` says one came back:
    the agents have joined their group and warmed up."""
    jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    producer = make_producer(bootstrap)
    deadline = time.monotonic() + timeout_s
    seq = 0
    try:
        while time.monotonic() < deadline:
            frame = Frame(camera_id="probe", seq=seq, capture_ts=time.time(), width=32, height=32, jpeg=jpeg, source_frame_index=0)
            msg = encode(frame)
            producer.send(topics.frames.name, key=msg.key, value=msg.value, headers=msg.headers)
            producer.flush()
            for _ in range(10):
                if detected(("probe", seq)):
                    return
                time.sleep(0.2)
            seq += 1
            for agent in agents:
                if not agent.alive():
                    raise RuntimeError(f"detector agent {agent.agent_id} exited:\n{agent.log()[-2000:]}")
        raise RuntimeError("the detector agents did not answer within the timeout")
    finally:
        producer.close()


class PipelineRig:
    """One detector agent process and a consumer of its detections, ready to measure loads."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        model: Path,
        source: str,
        home: Path,
        threads: int,
        batch: int,
        backend: str = "auto",
        progress: Callable[[str], None] = print,
        load_generator: str = "cameras",
    ) -> None:
        if load_generator not in LOAD_GENERATORS:
            raise ValueError(f"load generator must be one of {LOAD_GENERATORS}, not {load_generator!r}")
        self.bootstrap, self.topics, self.source, self.progress = bootstrap, topics, source, progress
        self.load_generator = load_generator
        self.broker_pid = _pid_listening_on(bootstrap)
        self.arrivals = _Arrivals()
        self.agent = AgentProcess(
            model, bootstrap, topics, home, "bench-agent", threads=threads, batch=batch, backend=backend, metrics_port=free_loopback_port()
        )
        self.watch: RecordWatch[Detections] | None = None
        self.served: dict[str, str] = {}

    def __enter__(self) -> PipelineRig:
        self.progress(f"starting a detector agent ({self.agent.model}, backend {self.agent.backend})")
        self.agent.start()
        self.watch = RecordWatch(self.bootstrap, self.topics, self.topics.detections, Detections, on_record=self.arrivals.add)
        try:
            wait_until_detected(self.bootstrap, self.topics, lambda key: key in self.arrivals.by_frame, [self.agent])
            self.served = self.agent.served_model()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.watch is not None:
            self.watch.close()
        self.agent.stop()

    def measure(self, cameras: int, fps: float, seconds: float, background_load: bool = False, drain_s: float = 10.0) -> dict[str, Any]:
        """Run ``cameras`` virtual cameras at ``fps`` for ``seconds`` and report what reached the consumer."""
        prefix = f"b{uuid.uuid4().hex[:4]}"
        fleet: CameraFleet | ReplayCameras
        if self.load_generator == "replay":
            fleet = ReplayCameras(self.bootstrap, self.topics, self.source, cameras, fps, prefix)
        else:
            fleet = CameraFleet(virtual_fleet(self.source, cameras, fps, id_prefix=prefix), self.bootstrap, self.topics)
        burner = None
        if background_load:
            burner = multiprocessing.get_context("spawn").Process(target=_burn, args=(time.monotonic() + seconds + 2,), daemon=True)
            burner.start()
        cpu_before = self._cpu()
        self.progress(f"{cameras} cameras x {fps} fps for {seconds:.0f}s" + (" with one core kept busy" if background_load else ""))
        fleet.start()
        started = time.time()
        fleet.wait(
            seconds, on_tick=lambda: self.progress(f"{time.time() - started:4.0f}s: {self._count(prefix)} frames answered"), tick_s=5
        )
        window_end = time.time()
        fleet.stop()
        cpu_after = self._cpu()
        published = fleet.published_frames()
        drain_until = time.monotonic() + drain_s
        while time.monotonic() < drain_until and not published <= set(self.arrivals.by_frame):
            time.sleep(0.2)
        if burner is not None:
            burner.terminate()
        elapsed = window_end - started
        answered = {k: v for k, v in self.arrivals.by_frame.items() if k in published}
        detected = {k: v for k, v in answered.items() if v[0].skipped is None}
        shed = len(answered) - len(detected)
        in_window = [k for k, (_, at) in detected.items() if at <= window_end]
        latency = [(at - d.capture_ts) * 1000.0 for d, at in detected.values()]
        steps: dict[str, list[float]] = {s: [] for s in STEPS}
        for d, at in detected.values():
            for step in STEPS[:-1]:
                if step in d.latency_ms:
                    steps[step].append(d.latency_ms[step])
            steps["delivery"].append(max(0.0, at - d.produced_ts) * 1000.0)
        offered = cameras * fps
        return {
            "cameras": cameras,
            "fps_per_camera": fps,
            "seconds": round(elapsed, 1),
            "background_load": background_load,
            "load_generator": self.load_generator,
            "offered_fps": round(offered, 2),
            "published_fps": round(len(published) / elapsed, 2),
            "achieved_fps": round(len(in_window) / elapsed, 2),
            "frames_published": len(published),
            "frames_detected": len(detected),
            "frames_detected_in_window": len(in_window),
            "frames_detected_in_drain": len(detected) - len(in_window),
            "frames_shed": shed,
            "frames_unanswered": len(published) - len(answered),
            "shed_fraction": round(shed / len(published), 4) if published else 0.0,
            "latency_ms": _percentiles(latency),
            "steps_ms": {s: _percentiles(v) for s, v in steps.items() if v},
            "cpu_cores_used": {k: round((cpu_after[k] - cpu_before[k]) / elapsed, 2) for k in cpu_before},
        }

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far of the agent, this process (cameras and the consumer) and the broker."""
        return {
            "agent": _cpu_seconds(self.agent.process.pid if self.agent.process else 0),
            "cameras_and_bench": _cpu_seconds(os.getpid()),
            "broker": _cpu_seconds(self.broker_pid) if self.broker_pid else 0.0,
        }

    def _count(self, prefix: str) -> int:
        return sum(1 for camera, _ in list(self.arrivals.by_frame) if camera.startswith(prefix))


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
    background_load: bool = False,
    load_generator: str = "cameras",
) -> dict[str, object]:
    """``bench pipeline``: one load through the real path, beside the bare loop on the same frames."""
    detector = Detector.from_bytes(model.read_bytes(), name=model.stem, threads=threads)
    progress(f"bare loop: decode + preprocess + inference + postprocess in one process ({threads} threads)")
    bare = bare_fps(detector, sequence_dir, min(8.0, max(3.0, seconds / 4)), batch)
    with PipelineRig(bootstrap, topics, model, source, home, threads, batch, backend, progress, load_generator) as rig:
        result = rig.measure(cameras, fps, seconds, background_load)
        served = rig.served
    return {
        "model": served.get("version", detector.version),
        "backend": served.get("backend", "unknown"),  # what the agent reported serving (its model_info metric)
        **result,
        "bare_fps": round(bare, 2),
        "efficiency": round(float(result["achieved_fps"]) / min(float(result["offered_fps"]), bare), 3),
        "batch": batch,
        "threads": threads,
    }


def capacity(
    bootstrap: str,
    topics: Topics,
    model: Path,
    source: str,
    home: Path,
    threads: int,
    batch: int,
    fps: float = 5.0,
    seconds: float = 20.0,
    p99_ms: float = 150.0,
    max_cameras: int = 64,
    backend: str = "auto",
    progress: Callable[[str], None] = print,
    load_generator: str = "cameras",
) -> dict[str, object]:
    """``bench capacity``: the most cameras at ``fps`` one agent keeps at p99 <= ``p99_ms`` with
    nothing shed and every frame answered: doubling from 4, then bisecting between the last good
    and the first bad count."""
    tried: dict[int, dict[str, Any]] = {}

    def ok(result: dict[str, Any]) -> bool:
        p99 = result["latency_ms"]["p99"]
        return result["frames_shed"] == 0 and result["frames_unanswered"] == 0 and p99 is not None and p99 <= p99_ms

    with PipelineRig(bootstrap, topics, model, source, home, threads, batch, backend, progress, load_generator) as rig:

        def trial(n: int) -> bool:
            tried[n] = rig.measure(n, fps, seconds)
            verdict = ok(tried[n])
            progress(
                f"{n} cameras: p99 {tried[n]['latency_ms']['p99']} ms, shed {tried[n]['frames_shed']} -> {'ok' if verdict else 'over'}"
            )
            return verdict

        good, bad = 0, None
        n = 4
        while n <= max_cameras:
            if not trial(n):
                bad = n
                break
            good, n = n, n * 2
        if bad is None and good < max_cameras:
            bad = max_cameras + 1
        while bad is not None and bad - good > max(1, good // 8):
            mid = (good + bad) // 2
            if trial(mid):
                good = mid
            else:
                bad = mid
        served = rig.served
    return {
        "model": served.get("version"),
        "backend": served.get("backend"),
        "fps_per_camera": fps,
        "p99_target_ms": p99_ms,
        "capacity_cameras": good,
        "first_over": bad if bad is not None and bad <= max_cameras else None,
        "trials": [
            {
                "cameras": n,
                "achieved_fps": r["achieved_fps"],
                "latency_ms": r["latency_ms"],
                "frames_shed": r["frames_shed"],
                "frames_unanswered": r["frames_unanswered"],
                "cpu_cores_used": r["cpu_cores_used"],
            }
            for n, r in sorted(tried.items())
        ],
        "seconds_per_trial": seconds,
        "load_generator": load_generator,
        "threads": threads,
        "batch": batch,
    }
