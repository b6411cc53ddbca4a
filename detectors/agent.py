"""The edge detector agent (faust-streaming): frames in; detections, alerts and hard examples out.

Agents with the same group split the frames topic's partitions (so the cameras); a killed agent's
partitions move to the others. Processing is at-least-once: each frame's Kafka message is
acknowledged only after its results are published, in order, so a crash re-delivers what was in
flight; duplicates are dropped by (camera id, seq, capture time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from detectors.alerts import AlertEvaluator
from detectors.detector import Detector
from detectors.faust_transport import broker_url
from detectors.mining import HardExampleMiner, MiningPolicy
from detectors.pipeline import DetectionPipeline, WorkItem
from detectors.results import BoxArray
from detectors.tracker import IouTracker
from streams.bus import DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC, DLQ_TS
from streams.cameras.config import CameraConfig, DetectSettings
from streams.errors import RecordError
from streams.kafka_settings import MAX_MESSAGE_BYTES
from streams.records import Detections, Frame, HardExample, Record
from streams.topics import Topics
from streams.wire import decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """What one detector agent process needs besides its model."""

    bootstrap: str
    topics: Topics
    group: str = "pedstream-detectors"
    agent_id: str = field(default_factory=lambda: f"detector-{os.getpid()}")
    max_batch: int = 4
    max_wait_ms: float = 10.0
    publish_threshold: float = 0.3  # boxes below this are not published
    track_threshold: float = 0.5  # boxes at or above this feed the tracker and the alert rules
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("PEDSTREAM_HOME") or Path.home() / ".pedstream") / "faust")
    dedupe_window: int = 4096


class CameraState:
    """Per-camera tracker, alert rules and hard-example budget."""

    def __init__(self, camera_id: str, settings: DetectSettings, track_threshold: float) -> None:
        self.tracker = IouTracker()
        self.alerts = AlertEvaluator(camera_id, settings.alerts)
        self.miner = HardExampleMiner(MiningPolicy(threshold=track_threshold, per_minute=settings.hard_examples_per_minute))
        self.tiling = settings.tiling


@dataclass
class Pending:
    """What the publisher needs to finish one frame: the event to acknowledge and the frame."""

    event: Any
    frame: Frame | None
    received_ts: float


class DetectorAgent:
    """Owns the faust app, the detection pipeline and the per-camera state of one agent process."""

    def __init__(self, settings: AgentSettings, detector: Detector, cameras: list[CameraConfig] | None = None) -> None:
        self.settings = settings
        self.detector = detector
        self.camera_settings = {c.id: c.detect for c in cameras or []}
        self.cameras: dict[str, CameraState] = {}
        self.seen: OrderedDict[tuple[str, int, float], None] = OrderedDict()
        self.counters = {"frames": 0, "detections": 0, "alerts": 0, "hard_examples": 0, "dead_letters": 0, "duplicates": 0}
        data_dir = settings.data_dir / settings.agent_id
        data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.group,
            broker=broker_url(settings.bootstrap),
            key_serializer="raw",
            value_serializer="raw",
            store="memory://",
            datadir=str(data_dir),
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=6,
            broker_heartbeat_interval=1,
            broker_commit_interval=1.0,
            producer_max_request_size=MAX_MESSAGE_BYTES,
            consumer_max_fetch_size=MAX_MESSAGE_BYTES,
            producer_acks=-1,
        )
        t = settings.topics
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.frames_topic = self.app.topic(t.frames.name, **raw)
        self.out = {spec.name: self.app.topic(spec.name, **raw) for spec in (t.detections, t.alerts, t.hard_examples, t.dead_letter)}
        self.results: asyncio.Queue[WorkItem] | None = None
        self.pipeline: DetectionPipeline | None = None
        self.app.agent(self.frames_topic, name="detect")(self._consume)
        self.app.task(self._publish_results)
        self.app.timer(30.0)(self._report)

    # --- consuming ----------------------------------------------------------------------------

    def _ensure_pipeline(self) -> DetectionPipeline:
        if self.pipeline is None:
            loop = asyncio.get_running_loop()
            self.results = asyncio.Queue()
            results = self.results
            self.pipeline = DetectionPipeline(
                self.detector, lambda item: loop.call_soon_threadsafe(results.put_nowait, item),
                max_batch=self.settings.max_batch, max_wait_ms=self.settings.max_wait_ms,
            )
        return self.pipeline

    async def _consume(self, stream: faust.StreamT) -> None:
        pipeline = self._ensure_pipeline()
        loop = asyncio.get_running_loop()
        async for event in stream.noack().events():
            item = self._admit(event)
            await loop.run_in_executor(None, pipeline.submit, item)

    def _admit(self, event: Any) -> WorkItem:
        """Validate the message; a bad or duplicate one still travels (as an error) so acks stay in order."""
        headers = list(event.message.headers or [])
        try:
            frame = decode(Frame, event.value, headers)
        except RecordError as exc:
            return WorkItem(token=Pending(event, None, time.time()), camera_id="?", jpeg=b"", error=f"invalid frame record: {exc}")
        key = (frame.camera_id, frame.seq, frame.capture_ts)
        pending = Pending(event, frame, time.time())
        if key in self.seen:
            self.counters["duplicates"] += 1
            return WorkItem(token=pending, camera_id=frame.camera_id, jpeg=b"", error="duplicate")
        self.seen[key] = None
        if len(self.seen) > self.settings.dedupe_window:
            self.seen.popitem(last=False)
        state = self._camera(frame.camera_id)
        return WorkItem(token=pending, camera_id=frame.camera_id, jpeg=frame.jpeg, tiling=state.tiling)

    def _camera(self, camera_id: str) -> CameraState:
        if camera_id not in self.cameras:
            settings = self.camera_settings.get(camera_id, DetectSettings())
            self.cameras[camera_id] = CameraState(camera_id, settings, self.settings.track_threshold)
        return self.cameras[camera_id]

    # --- publishing ---------------------------------------------------------------------------

    async def _publish_results(self) -> None:
        while self.results is None:
            await asyncio.sleep(0.05)
        while True:
            item = await self.results.get()
            pending: Pending = item.token
            try:
                if item.error == "duplicate":
                    pass
                elif item.error is not None:
                    await self._dead_letter(pending.event, item.error)
                else:
                    await self._publish_frame(item, pending)
            except Exception:
                log.exception("publishing results failed for camera %s", item.camera_id)
            finally:
                pending.event.ack()

    async def _send(self, topic_name: str, record: Record) -> None:
        msg = encode(record)
        await self.out[topic_name].send(key=msg.key, value=msg.value, headers=msg.headers)

    async def _dead_letter(self, event: Any, reason: str) -> None:
        message = event.message
        headers = list(message.headers or []) + [
            (DLQ_REASON, reason.encode()), (DLQ_TOPIC, message.topic.encode()),
            (DLQ_PARTITION, str(message.partition).encode()), (DLQ_OFFSET, str(message.offset).encode()),
            (DLQ_TS, f"{time.time():.3f}".encode()),
        ]
        await self.out[self.settings.topics.dead_letter.name].send(key=message.key, value=message.value, headers=headers)
        self.counters["dead_letters"] += 1
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    async def _publish_frame(self, item: WorkItem, pending: Pending) -> None:
        frame = pending.frame
        assert frame is not None and item.boxes is not None
        state = self._camera(frame.camera_id)
        published = item.boxes.above(self.settings.publish_threshold)
        confident_mask = published.scores >= self.settings.track_threshold
        track_ids = state.tracker.update(published[confident_mask], frame.capture_ts)
        boxes = published.to_boxes()
        confident_rows = [i for i, keep in enumerate(confident_mask) if keep]
        for row, track_id in zip(confident_rows, track_ids):
            boxes[row] = boxes[row].model_copy(update={"track_id": track_id})
        now = time.time()
        latency = {k: round(v, 2) for k, v in item.timings_ms.items()}
        latency["frame_to_detection"] = round(max(0.0, now - frame.capture_ts) * 1000.0, 2)
        detections = Detections(
            camera_id=frame.camera_id, seq=frame.seq, capture_ts=frame.capture_ts, width=frame.width, height=frame.height,
            source_frame_index=frame.source_frame_index, model_version=item.model_version, boxes=boxes,
            latency_ms=latency, agent_id=self.settings.agent_id, produced_ts=now,
        )
        await self._send(self.settings.topics.detections.name, detections)
        self.counters["frames"] += 1
        self.counters["detections"] += len(boxes)
        for alert in state.alerts.evaluate(state.tracker.tracks, frame.seq, frame.capture_ts, item.model_version):
            await self._send(self.settings.topics.alerts.name, alert)
            self.counters["alerts"] += 1
        reasons = state.miner.decide(item.boxes, state.tracker.just_lost(), frame.capture_ts)
        if reasons:
            example = HardExample(
                camera_id=frame.camera_id, seq=frame.seq, capture_ts=frame.capture_ts, width=frame.width,
                height=frame.height, jpeg=frame.jpeg, source_frame_index=frame.source_frame_index,
                model_version=item.model_version, detections=item.boxes.above(0.05).to_boxes(),
                reasons=reasons, mined_ts=now,
            )
            await self._send(self.settings.topics.hard_examples.name, example)
            self.counters["hard_examples"] += 1

    async def _report(self) -> None:
        log.info("agent %s (%s, %s): %s", self.settings.agent_id, self.detector.version,
                 self.detector.backend.name, self.counters)

    # --- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGINT/SIGTERM (faust's worker owns the event loop and the signals)."""
        log.info("agent %s serving %s on %s (%s)", self.settings.agent_id, self.detector.version,
                 self.detector.backend.name, self.detector.backend_reason)
        worker = faust.Worker(self.app, loglevel=logging.getLevelName(log.getEffectiveLevel()), quiet=True)
        try:
            worker.execute_from_commandline()
        finally:
            if self.pipeline is not None:
                self.pipeline.stop(timeout=5)


def boxes_of(record: Detections) -> BoxArray:
    """Detections record boxes as a BoxArray (for consumers and tests)."""
    return BoxArray.from_boxes(record.boxes)


def new_agent_id() -> str:
    return f"detector-{uuid.uuid4().hex[:6]}"
