"""The edge detector agent (faust-streaming): frames in; detections, alerts and hard examples out.

Agents with the same group split the frames topic's partitions (so the cameras); a killed agent's
partitions move to the others. Processing is at-least-once: each frame's Kafka message is
acknowledged only after its results are published, in order, so a crash re-delivers what was in
flight. A frame delivered again to the agent that answered it is not detected twice: its Detections
record, kept by (camera id, seq, capture time), is published again, because the first copy may be
gone with a broker that lost acknowledged writes (consumers keep one record per (camera, seq)).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import numpy as np

from detectors import metrics
from detectors.agreement import AgreementMonitor, AgreementPolicy
from detectors.alerts import AlertEvaluator
from detectors.detector import Detector, read_model
from detectors.faust_transport import broker_url
from detectors.mining import HardExampleMiner, MiningPolicy
from detectors.model_updates import ModelUpdater
from detectors.pipeline import DetectionPipeline, WorkItem
from detectors.results import PUBLISH_THRESHOLD, BoxArray
from detectors.serving import ServedModels
from detectors.tiling import merge_in_frame
from detectors.tracker import IouTracker
from streams.bus import dead_letter_headers
from streams.cameras.config import CameraConfig, DetectSettings
from streams.errors import RecordError
from streams.history import skip_history
from streams.kafka_settings import MAX_MESSAGE_BYTES
from streams.metrics import DEAD_LETTERS, serve_metrics
from streams.model_channel import ModelKeys, ModelReader, ModelWatcher, connect_redis
from streams.outage import OutageLog, quiet_client_logs
from streams.records import Box, Detections, Frame, HardExample, Record, TileDetections, TileTask
from streams.signing import Verifier
from streams.topics import Topics
from streams.wire import WireMessage, decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """What one detector agent process needs besides its model."""

    bootstrap: str
    topics: Topics
    group: str = "pedstream-detectors"
    agent_id: str = field(default_factory=lambda: f"detector-{os.getpid()}")
    max_batch: int = 4
    max_wait_ms: float = 0.0  # greedy micro-batching: only frames already queued join a batch
    publish_threshold: float = PUBLISH_THRESHOLD  # boxes below this are not published
    track_threshold: float = 0.5  # boxes at or above this feed the tracker and the alert rules
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("PEDSTREAM_HOME") or Path.home() / ".pedstream") / "faust")
    dedupe_window: int = 4096
    # after the group is assigned partitions again (what follows a broker restart too), publish the
    # Detections of the last this-many seconds again: a broker may have lost writes it acknowledged
    # (the embedded tansu on S3 does; Kafka with acks=all and min in-sync replicas 2 does not). 0: off
    republish_window_s: float = 10.0
    # Hot swap: with both set, the agent follows the model registry in Redis (streams.model_channel)
    redis_url: str | None = None
    public_key: Path | None = None  # Ed25519 public key that every served model must be signed with
    serve_backend: str = "ort"  # ort, or tvm/auto: new versions serve on ORT at once, TVM when compiled
    metrics_port: int | None = None  # serve Prometheus metrics on this port (None: off)
    metrics_host: str = "127.0.0.1"
    catch_up_s: float | None = 60.0  # at start, a group whose position is older than this skips to newer frames
    # automatic rollback (detectors.agreement): with a teacher model, a camera whose agreement with it
    # falls after a swap goes back to what it served before (needs the registry: redis_url, public_key)
    teacher_model: Path | None = None
    agreement: AgreementPolicy = field(default_factory=AgreementPolicy)


class CameraState:
    """Per-camera tracker, alert rules, hard-example budget and deadline."""

    def __init__(self, camera_id: str, settings: DetectSettings, track_threshold: float) -> None:
        self.tracker = IouTracker()
        self.alerts = AlertEvaluator(camera_id, settings.alerts)
        self.miner = HardExampleMiner(MiningPolicy(threshold=track_threshold, per_minute=settings.hard_examples_per_minute))
        self.settings = settings
        self.frames = 0  # frames detected and published


@dataclass
class Pending:
    """What the publisher needs to finish one item: the event to acknowledge and its record.

    ``kind``: ``frame`` (detect here), ``fan_out`` (a frame whose tiles go to other agents) or
    ``tile`` (a tile fanned out by some agent).
    """

    event: Any
    record: Frame | TileTask | None
    received_ts: float
    kind: str = "frame"


@dataclass(frozen=True)
class FrameRef:
    """The frame fields a Detections record repeats, from a Frame or from merged tiles."""

    camera_id: str
    seq: int
    capture_ts: float
    width: int
    height: int
    source_frame_index: int
    jpeg: bytes | None  # None for merged tiles: no hard examples from them


MERGE_TIMEOUT_S = 10.0
DELIVERIES: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("deliveries", default=None)
"""What the frame being handled has sent so far (its broker acknowledgements to wait for), in the
results task's own context: the tile-merging task's sends never join a frame's list."""


def _collect(delivery: Any) -> None:
    deliveries = DELIVERIES.get()
    if deliveries is not None:
        deliveries.append(delivery)


CLOCK_SKEW_TOLERANCE_S = 0.05  # a capture time this far past the broker's receipt is clock skew, not jitter
MAX_FRAME_PIXELS = 8192 * 8192  # a frame declaring more is refused before decoding (dead-lettered): 67 MP, past 8K video


def _latency(timings: dict[str, float], capture_ts: float, now: float, delivered_ts: float = 0.0) -> dict[str, float]:
    """A Detections record's ``latency_ms``: the steps so far, ``publish`` (result to record, when the
    pipeline's delivery time is known) and ``frame_to_detection`` (capture to record), rounded."""
    latency = {k: round(v, 2) for k, v in timings.items()}
    if delivered_ts:
        latency["publish"] = round(max(0.0, now - delivered_ts) * 1000.0, 2)
    latency["frame_to_detection"] = round(max(0.0, now - capture_ts) * 1000.0, 2)
    return latency


def _ignore(_value: object) -> None:
    """Drop a return value (the pipeline's callback returns nothing)."""


SHUTDOWN_GRACE_S = 5.0


class BoundedShutdownWorker(faust.Worker):
    """faust's worker, with a bound on shutdown: SIGTERM or SIGINT starts faust's orderly stop, and a
    stop still running after ``SHUTDOWN_GRACE_S`` (it waits for the broker, e.g. while the broker is
    down) ends the process. Nothing is lost by that: a frame is acknowledged only once its results
    are on the broker, so whatever was in flight is detected again by the agent that takes over."""

    def _schedule_shutdown(self, signal: Any) -> None:
        if not self._signal_stop_time:
            threading.Thread(target=_exit_after, args=(SHUTDOWN_GRACE_S, signal), daemon=True, name="shutdown-deadline").start()
        super()._schedule_shutdown(signal)


def _exit_after(grace_s: float, signal: Any) -> None:
    time.sleep(grace_s)
    log.warning("%s: the orderly stop did not finish within %.0f s; exiting now (unacknowledged frames are redelivered)", signal, grace_s)
    logging.shutdown()
    os._exit(0)


@dataclass(frozen=True)
class Answer:
    """The Detections message published for a frame, and when."""

    message: WireMessage
    published_ts: float


def _frame_key(record: Frame | Detections) -> tuple[str, int, float]:
    """What identifies a frame: (camera, seq, capture time); its Detections carry the same three."""
    return (record.camera_id, record.seq, record.capture_ts)


class DetectorAgent:
    """Owns the faust app, the detection pipeline and the per-camera state of one agent process."""

    def __init__(self, settings: AgentSettings, detector: Detector, cameras: list[CameraConfig] | None = None) -> None:
        self.settings = settings
        self.models = ServedModels(detector)
        self.camera_settings = {c.id: c.detect for c in cameras or []}
        self.cameras: dict[str, CameraState] = {}
        # frames admitted, by (camera, seq, capture time) -> the Detections published for it (None
        # while in flight); a delivery that failed forgets its frame so a redelivery detects it
        self.seen: OrderedDict[tuple[str, int, float], Answer | None] = OrderedDict()
        self.assignments = 0  # partition assignments of this agent's group member so far
        self._background: set[asyncio.Future[int]] = set()
        self.counters = {
            "frames": 0,
            "detections": 0,
            "alerts": 0,
            "hard_examples": 0,
            "dead_letters": 0,
            "duplicates": 0,
            "republished": 0,
            "publish_failures": 0,
        }
        self._acks: set[asyncio.Future[None]] = set()  # frames waiting for their deliveries before their ack
        self.outage = OutageLog("the Kafka broker")
        self.skewed: set[str] = set()  # cameras whose clock was found ahead (logged once each)
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
            # no tables, so no standbys: faust then joins with aiokafka's standard "roundrobin" protocol,
            # which streams.history's short-lived member shares (a group refuses mixed protocols)
            table_standby_replicas=0,
        )
        t = settings.topics
        self.frames_topic = self._raw_topic(t.frames.name)
        outputs = (t.detections, t.alerts, t.hard_examples, t.dead_letter, t.tiles, t.tile_detections)
        self.out = {spec.name: self._raw_topic(spec.name) for spec in outputs}
        self.merging: dict[tuple[str, int, float], list[TileDetections]] = {}
        self.results: asyncio.Queue[WorkItem] | None = None
        self.pipeline: DetectionPipeline | None = None
        self.app.agent(self.frames_topic, name="detect")(self._consume)
        self.app.agent(self._raw_topic(t.tiles.name), name="detect-tiles")(self._consume_tiles)
        self.app.agent(self._raw_topic(t.tile_detections.name), name="merge-tiles")(self._merge_tiles)
        self.app.task(self._publish_results)
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]  # mode types handlers narrower than it calls them
        self.app.timer(30.0)(self._report)
        self.updater: ModelUpdater | None = None
        self.watcher: ModelWatcher | None = None
        if settings.redis_url and settings.public_key:
            keys = ModelKeys.for_topics(settings.topics.prefix)
            reader = ModelReader(connect_redis(settings.redis_url), keys, Verifier.load(settings.public_key))
            self.updater = ModelUpdater(reader, self.models, settings.agent_id, settings.serve_backend)
            self.watcher = ModelWatcher(settings.redis_url, keys, self.updater.on_announcement)
        self.agreement: AgreementMonitor | None = None
        if settings.teacher_model is not None and self.updater is not None:
            teacher = Detector.from_bytes(read_model(settings.teacher_model), name="edge-teacher", threads=1)
            self.agreement = AgreementMonitor(lambda image: teacher.detect([image])[0], self.updater.revert, settings.agreement)

    def _raw_topic(self, name: str) -> faust.TopicT:
        """A topic of raw bytes: pedstream's wire format (streams.wire) is decoded by the agent itself."""
        return self.app.topic(name, key_serializer="raw", value_serializer="raw")

    @property
    def detector(self) -> Detector:
        """The general model (cameras with a model of their own: ``models.for_camera``)."""
        return self.models.general

    # --- consuming ----------------------------------------------------------------------------

    def _ensure_pipeline(self) -> DetectionPipeline:
        if self.pipeline is None:
            loop = asyncio.get_running_loop()
            self.results = asyncio.Queue()
            results = self.results
            self.pipeline = DetectionPipeline(
                self.models,
                lambda item: _ignore(loop.call_soon_threadsafe(results.put_nowait, item)),
                max_batch=self.settings.max_batch,
                max_wait_ms=self.settings.max_wait_ms,
            )
        return self.pipeline

    async def _consume(self, stream: faust.StreamT[Any]) -> None:
        pipeline = self._ensure_pipeline()
        loop = asyncio.get_running_loop()
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            item = self._admit(event)
            await loop.run_in_executor(None, pipeline.submit, item)

    def _admit(self, event: Any) -> WorkItem:
        """Validate the message; a bad or duplicate one still travels (as an error) so acks stay in order."""
        headers = list(event.message.headers or [])
        try:
            frame = decode(Frame, event.value, headers)
        except RecordError as exc:
            return WorkItem(token=Pending(event, None, time.time()), camera_id="?", jpeg=b"", error=f"invalid frame record: {exc}")
        if frame.width * frame.height > MAX_FRAME_PIXELS:
            return WorkItem(
                token=Pending(event, None, time.time()),
                camera_id=frame.camera_id,
                jpeg=b"",
                error=f"oversized frame: {frame.width}x{frame.height} is over the {MAX_FRAME_PIXELS / 1e6:.0f} MP limit",
            )
        state = self._camera(frame.camera_id)
        tiling = state.settings.tiling
        fan_out = tiling is not None and tiling.fan_out
        key = _frame_key(frame)
        now = time.time()
        pending = Pending(event, frame, now, "fan_out" if fan_out else "frame")
        if key in self.seen:
            self.counters["duplicates"] += 1
            return WorkItem(token=pending, camera_id=frame.camera_id, jpeg=b"", error="duplicate")
        self.seen[key] = None
        if len(self.seen) > self.settings.dedupe_window:
            self.seen.popitem(last=False)
        deadline = None if fan_out else state.settings.deadline_s(frame.period_ms)  # fanned-out tiles are not shed
        expires = frame.capture_ts + deadline if deadline is not None else None
        item = WorkItem(
            token=pending,
            camera_id=frame.camera_id,
            jpeg=frame.jpeg,
            tiling=tiling,
            expires_ts=expires,
            declared_size=(frame.width, frame.height),
        )
        # shed now what would finish after its deadline anyway: decoding it would only delay the frames behind it
        expected_s = self.pipeline.expected_latency_s() if self.pipeline is not None else 0.0
        if deadline is not None and now - frame.capture_ts + expected_s > deadline:
            item.jpeg = b""
            item.shed = (
                f"stale on arrival: {(now - frame.capture_ts) * 1000.0:.0f} ms old + {expected_s * 1000.0:.0f} ms to detect, "
                f"deadline {deadline * 1000.0:.0f} ms"
            )
        return item

    async def _consume_tiles(self, stream: faust.StreamT[Any]) -> None:
        """Tiles fanned out by any agent of the group: detect like frames, answer with TileDetections."""
        pipeline = self._ensure_pipeline()
        loop = asyncio.get_running_loop()
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            try:
                task = decode(TileTask, event.value, list(event.message.headers or []))
            except RecordError as exc:
                item = WorkItem(
                    token=Pending(event, None, time.time(), "tile"), camera_id="?", jpeg=b"", error=f"invalid tile record: {exc}"
                )
            else:
                item = WorkItem(token=Pending(event, task, time.time(), "tile"), camera_id=task.camera_id, jpeg=task.jpeg)
            await loop.run_in_executor(None, pipeline.submit, item)

    async def _merge_tiles(self, stream: faust.StreamT[Any]) -> None:
        """Tile results of this agent's cameras (keyed by camera): merged across seams once all arrived.

        Tile results are acknowledged on arrival; a frame whose tiles were in flight when this agent
        died is not merged by the next owner (at-most-once for fanned-out frames).
        """
        async for event in stream.events():
            try:
                part = decode(TileDetections, event.value, list(event.message.headers or []))
            except RecordError as exc:
                await self._dead_letter(event, f"invalid tile detections: {exc}")
                continue
            key = (part.camera_id, part.seq, part.capture_ts)
            parts = self.merging.setdefault(key, [])
            if any(p.tile_index == part.tile_index for p in parts):
                continue  # a re-delivered tile
            parts.append(part)
            now = time.time()
            for stale in [k for k, v in self.merging.items() if now - v[0].produced_ts > MERGE_TIMEOUT_S]:
                log.warning(
                    "tiles of %s frame %d incomplete after %.0fs: merging %d/%d",
                    stale[0],
                    stale[1],
                    MERGE_TIMEOUT_S,
                    len(self.merging[stale]),
                    self.merging[stale][0].tile_count,
                )
                await self._publish_merged(self.merging.pop(stale))
            if len(parts) == part.tile_count:
                await self._publish_merged(self.merging.pop(key))

    async def _publish_merged(self, parts: list[TileDetections]) -> None:
        first = parts[0]
        boxes = merge_in_frame([BoxArray.from_boxes(p.boxes) for p in parts])
        ref = FrameRef(first.camera_id, first.seq, first.capture_ts, first.frame_width, first.frame_height, first.source_frame_index, None)
        timings = {
            "tiles": float(len(parts)),
            "infer": max(p.latency_ms.get("infer", 0.0) for p in parts),
            "total": max(p.latency_ms.get("total", 0.0) for p in parts),
        }
        await self._publish_detections(ref, boxes, first.model_version, timings)

    def _anatomy(self, item: WorkItem, pending: Pending) -> dict[str, float]:
        """Where the frame's time went before the pipeline: camera (capture to the broker's record
        timestamp, set when the camera published it) and broker (that to the agent reading it)."""
        frame = pending.record
        assert isinstance(frame, Frame)
        published = getattr(pending.event.message, "timestamp", None) or pending.received_ts
        steps = {
            **item.timings_ms,
            "camera": max(0.0, published - frame.capture_ts) * 1000.0,
            "broker": max(0.0, pending.received_ts - published) * 1000.0,
        }
        ahead_s = frame.capture_ts - min(published, pending.received_ts)  # > 0: a capture "after" it reached the broker
        if ahead_s > CLOCK_SKEW_TOLERANCE_S:
            steps["clock_skew"] = ahead_s * 1000.0  # reported, not hidden: the camera step above is then unknown (0)
            metrics.CLOCK_SKEW.labels(frame.camera_id).set(ahead_s)
            if frame.camera_id not in self.skewed:
                self.skewed.add(frame.camera_id)
                log.warning(
                    "camera %s: its clock is %.0f ms ahead of this host's and the broker's; latencies measured from its "
                    "capture times are too small by that much (synchronise the clocks, e.g. with NTP)",
                    frame.camera_id, ahead_s * 1000.0,
                )  # fmt: skip
        return steps

    async def _publish_shed(self, item: WorkItem, pending: Pending) -> None:
        """A frame that went stale: counted, and published as a skipped Detections record (no boxes)."""
        frame = pending.record
        assert isinstance(frame, Frame) and item.shed is not None
        now = time.time()
        latency = _latency(self._anatomy(item, pending), frame.capture_ts, now)
        record = self._detections(frame, item.model_version or self.detector.version, [], latency, now, skipped=item.shed)
        await self._send_detections(record)
        self.counters["shed"] = self.counters.get("shed", 0) + 1
        metrics.FRAMES_SHED.labels(frame.camera_id, "arrival" if item.shed.startswith("stale on arrival") else "inference").inc()

    def _detections(
        self,
        frame: FrameRef | Frame,
        model_version: str,
        boxes: list[Box],
        latency: dict[str, float],
        now: float,
        skipped: str | None = None,
    ) -> Detections:
        """The Detections record of one frame (``skipped``: shed, not inferred)."""
        return Detections(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ts=frame.capture_ts,
            width=frame.width,
            height=frame.height,
            source_frame_index=frame.source_frame_index,
            model_version=model_version,
            boxes=boxes,
            latency_ms=latency,
            agent_id=self.settings.agent_id,
            produced_ts=now,
            skipped=skipped,
        )

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
            collecting = DELIVERIES.set([])
            try:
                if item.error == "duplicate":
                    await self._republish(pending)
                elif item.error is not None:
                    await self._dead_letter(pending.event, item.error)
                elif item.shed is not None:
                    await self._publish_shed(item, pending)
                elif pending.kind == "fan_out":
                    await self._fan_out(item, pending)
                elif pending.kind == "tile":
                    await self._publish_tile(item, pending)
                else:
                    frame = pending.record
                    assert isinstance(frame, Frame) and item.boxes is not None
                    ref = FrameRef(
                        frame.camera_id, frame.seq, frame.capture_ts, frame.width, frame.height, frame.source_frame_index, frame.jpeg
                    )
                    await self._publish_detections(
                        ref, item.boxes, item.model_version, self._anatomy(item, pending), item.brightness, item.delivered_ts
                    )
            except Exception as exc:  # a bug, not an outage: the frame goes to the dead letters with why, never silently
                log.exception("handling the results of camera %s failed", item.camera_id)
                DELIVERIES.set([])  # whatever was sent for it, the dead-letter entry is what accounts for it
                await self._dead_letter(pending.event, f"the agent failed on this frame: {type(exc).__name__}: {exc}")
            finally:
                deliveries = DELIVERIES.get() or []
                DELIVERIES.reset(collecting)
                self._acks.add(asyncio.ensure_future(self._ack_when_delivered(pending, deliveries, item.camera_id)))

    async def _ack_when_delivered(self, pending: Pending, deliveries: list[asyncio.Future[Any]], camera_id: str) -> None:
        """Acknowledge the frame once everything published for it is on the broker (acks=all). A
        frame whose records were not delivered stays unacknowledged, so its offset is never
        committed and the frame is detected again after a restart or rebalance (at-least-once)."""
        try:
            await asyncio.gather(*deliveries)
        except Exception as exc:  # noqa: BLE001 - any delivery error means: do not acknowledge
            if isinstance(pending.record, Frame):  # a redelivery must detect it again, not count it a duplicate
                self.seen.pop(_frame_key(pending.record), None)
            self.counters["publish_failures"] += 1
            metrics.PUBLISH_FAILURES.inc()
            self.outage.failed(f"publishing results of camera {camera_id}: {type(exc).__name__}: {exc}")
            return
        finally:
            self._acks.discard(asyncio.current_task())
        self.outage.recovered()
        pending.event.ack()

    async def _send(self, topic_name: str, record: Record) -> None:
        await self._send_message(topic_name, encode(record))

    async def _send_message(self, topic_name: str, msg: WireMessage) -> None:
        _collect(await self.out[topic_name].send(key=msg.key, value=msg.value, headers=msg.headers))

    async def _send_detections(self, record: Detections) -> None:
        """Publish a frame's Detections and keep the message for a redelivery of that frame."""
        msg = encode(record)
        key = _frame_key(record)
        if key in self.seen:
            self.seen[key] = Answer(msg, time.time())
        await self._send_message(self.settings.topics.detections.name, msg)

    async def _republish(self, pending: Pending) -> None:
        """A frame delivered again after it was answered: publish its Detections record again.

        The broker acknowledged the first copy, but a broker that dies can lose writes it had
        acknowledged (the embedded tansu on S3 does), offset commits with them: the group then
        resumes before the frame, and this copy is the only answer left. Consumers keep one
        Detections per (camera, seq), so a needless copy costs a message, a lost one a frame.
        A duplicate of a frame still in flight is dropped (its answer is on the way).
        """
        frame = pending.record
        answer = self.seen.get(_frame_key(frame)) if isinstance(frame, Frame) else None
        if answer is None:
            return
        await self._send_message(self.settings.topics.detections.name, answer.message)
        self.counters["republished"] += 1

    async def _on_assigned(self, _sender: Any, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        """Partitions assigned: at start, and again after every rebalance. A broker that restarts
        makes its group rebalance, and it may have lost the writes it acknowledged last, while the
        group's committed offsets (kept or lost with them) need not bring those frames back: so
        the answers of the last ``republish_window_s`` are published again."""
        self.assignments += 1
        if self.assignments > 1 and self.settings.republish_window_s > 0:
            task = asyncio.ensure_future(self.republish_recent())  # not inside the rebalance: after it
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def republish_recent(self) -> int:
        """Publish again the Detections this agent published in the last ``republish_window_s``."""
        horizon = time.time() - self.settings.republish_window_s
        recent = [answer for answer in list(self.seen.values()) if answer is not None and answer.published_ts >= horizon]
        for answer in recent:
            await self._send_message(self.settings.topics.detections.name, answer.message)
        self.counters["republished"] += len(recent)
        if recent:
            log.info(
                "group rebalanced: published the last %d answers (%.0f s) again, in case the broker lost them",
                len(recent), self.settings.republish_window_s,
            )  # fmt: skip
        return len(recent)

    async def _dead_letter(self, event: Any, reason: str) -> None:
        message = event.message
        headers = dead_letter_headers(message.headers, reason, message.topic, message.partition, message.offset, self.settings.group)
        _collect(await self.out[self.settings.topics.dead_letter.name].send(key=message.key, value=message.value, headers=headers))
        self.counters["dead_letters"] += 1
        DEAD_LETTERS.labels(message.topic).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    async def _fan_out(self, item: WorkItem, pending: Pending) -> None:
        frame = pending.record
        assert isinstance(frame, Frame) and item.tiles is not None
        for index, (tile, jpeg) in enumerate(zip(item.tiles, item.tile_jpegs, strict=False)):
            task = TileTask(
                camera_id=frame.camera_id,
                seq=frame.seq,
                capture_ts=frame.capture_ts,
                width=tile.x1 - tile.x0,
                height=tile.y1 - tile.y0,
                jpeg=jpeg,
                source_frame_index=frame.source_frame_index,
                frame_width=frame.width,
                frame_height=frame.height,
                tile_index=index,
                tile_count=len(item.tiles),
                x0=tile.x0,
                y0=tile.y0,
                requested_by=self.settings.agent_id,
            )
            await self._send(self.settings.topics.tiles.name, task)
        self.counters["tiles_sent"] = self.counters.get("tiles_sent", 0) + len(item.tiles)

    async def _publish_tile(self, item: WorkItem, pending: Pending) -> None:
        task = pending.record
        assert isinstance(task, TileTask) and item.boxes is not None
        found = item.boxes.above(self.settings.publish_threshold)
        shifted = BoxArray(found.xyxy + np.array([task.x0, task.y0, task.x0, task.y0], np.float32), found.scores, found.class_ids)
        result = TileDetections(
            camera_id=task.camera_id,
            seq=task.seq,
            capture_ts=task.capture_ts,
            frame_width=task.frame_width,
            frame_height=task.frame_height,
            source_frame_index=task.source_frame_index,
            tile_index=task.tile_index,
            tile_count=task.tile_count,
            model_version=item.model_version,
            boxes=shifted.to_boxes(),
            latency_ms={k: round(v, 2) for k, v in item.timings_ms.items()},
            agent_id=self.settings.agent_id,
            produced_ts=time.time(),
        )
        await self._send(self.settings.topics.tile_detections.name, result)
        self.counters["tiles_done"] = self.counters.get("tiles_done", 0) + 1

    async def _publish_detections(
        self,
        frame: FrameRef,
        found: BoxArray,
        model_version: str,
        timings: dict[str, float],
        brightness: float | None = None,
        delivered_ts: float = 0.0,
    ) -> None:
        """Track, publish Detections, evaluate alert rules and mine hard examples for one frame."""
        state = self._camera(frame.camera_id)
        published = found.above(self.settings.publish_threshold)
        confident_mask = published.scores >= self.settings.track_threshold
        track_ids = state.tracker.update(published[confident_mask], frame.capture_ts)
        boxes = published.to_boxes()
        confident_rows = [i for i, keep in enumerate(confident_mask) if keep]
        for row, track_id in zip(confident_rows, track_ids, strict=False):
            boxes[row] = boxes[row].model_copy(update={"track_id": track_id})
        now = time.time()
        latency = _latency(timings, frame.capture_ts, now, delivered_ts)
        detections = self._detections(frame, model_version, boxes, latency, now)
        await self._send_detections(detections)
        self.counters["frames"] += 1
        state.frames += 1
        self.counters["detections"] += len(boxes)
        metrics.observe_frame(frame.camera_id, len(boxes), latency)
        for alert in state.alerts.evaluate(state.tracker.tracks, frame.seq, frame.capture_ts, model_version):
            await self._send(self.settings.topics.alerts.name, alert)
            self.counters["alerts"] += 1
            metrics.ALERTS.labels(frame.camera_id, alert.rule).inc()
        if self.agreement is not None and frame.jpeg is not None:
            self.agreement.offer(frame.camera_id, model_version, frame.jpeg, found)
        onboarding = not self.models.has_own(frame.camera_id)
        reasons = state.miner.decide(found, state.tracker.just_lost(), frame.capture_ts, brightness, onboarding)
        if reasons and frame.jpeg is not None:
            example = HardExample(
                camera_id=frame.camera_id,
                seq=frame.seq,
                capture_ts=frame.capture_ts,
                width=frame.width,
                height=frame.height,
                jpeg=frame.jpeg,
                source_frame_index=frame.source_frame_index,
                model_version=model_version,
                detections=found.above(0.05).to_boxes(),
                reasons=reasons,
                mined_ts=now,
            )
            await self._send(self.settings.topics.hard_examples.name, example)
            self.counters["hard_examples"] += 1
            for reason in reasons:
                metrics.HARD_EXAMPLES.labels(frame.camera_id, reason).inc()

    def _skip_history(self, max_age_s: float) -> None:
        """Before joining: move the group past frames older than ``max_age_s`` (streams.history)."""
        moved = skip_history(self.settings.bootstrap, self.settings.topics.frames.name, self.settings.group, max_age_s)
        for skipped in moved:
            log.info(
                "frames partition %d: skipped %d frames older than %.0f s (offsets %d -> %d)",
                skipped.partition, skipped.records, max_age_s, skipped.from_offset, skipped.to_offset,
            )  # fmt: skip
            metrics.FRAMES_SHED.labels("*", "history").inc(skipped.records)

    async def _report(self) -> None:
        log.info("agent %s (%s, %s): %s", self.settings.agent_id, self.detector.version, self.detector.backend.name, self.counters)

    def summary(self) -> dict[str, Any]:
        """What this agent did (``pedstream detect --json`` prints it when the agent stops): its counters,
        frames per camera and the model each scope served at the end."""
        return {
            "agent": self.settings.agent_id,
            "counters": dict(self.counters),
            "cameras": {camera: state.frames for camera, state in sorted(self.cameras.items())},
            "models": self.models.status(),
        }

    # --- running ------------------------------------------------------------------------------

    def run(self, on_stop: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Run until SIGINT/SIGTERM (faust's worker owns the event loop and the signals, and ends the
        process when it stops: ``on_stop`` is given the agent's ``summary()`` first)."""
        log.info(
            "agent %s serving %s on %s (%s)",
            self.settings.agent_id,
            self.detector.version,
            self.detector.backend.name,
            self.detector.backend_reason,
        )
        quiet_client_logs()  # aiokafka logs every failed attempt while the broker is down: one line per kind per minute
        worker = BoundedShutdownWorker(self.app, loglevel=logging.getLevelName(log.getEffectiveLevel()), quiet=True)
        metrics.SERVING.follow(self.models)
        if serve_metrics(self.settings.metrics_port, metrics.DETECTOR_METRICS, self.settings.metrics_host):
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)
        if self.watcher is not None:
            self.watcher.start()
        if self.settings.catch_up_s:
            self._skip_history(self.settings.catch_up_s)
        try:
            worker.execute_from_commandline()
        finally:
            if self.watcher is not None and self.updater is not None:
                self.watcher.stop()
                self.updater.close()
            if self.agreement is not None:
                self.agreement.close()
            if self.pipeline is not None:
                self.pipeline.stop(timeout=5)
            if on_stop is not None:
                on_stop(self.summary())
