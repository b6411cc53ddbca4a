"""The camera ingestion agent: one thread per camera reads, caps, encodes and publishes frames.

A camera never queues frames: when it is over its fps cap, or behind its source, it drops frames.
A camera whose source fails is reported on the camera-status topic and retried with backoff while
the other cameras go on.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from streams.bus import CameraStatusPublisher, FramePublisher, ensure_topics, make_producer
from streams.cameras.config import CameraConfig
from streams.cameras.looks import encode_jpeg, render
from streams.cameras.sources import FrameSource, build_source, missing_file
from streams.errors import SourceError
from streams.outage import OutageLog
from streams.records import CameraState, CameraStatus, Frame
from streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class CameraStats:
    """Counters of one camera, updated by its thread and by the producer's delivery callbacks."""

    camera_id: str
    read: int = 0
    published: int = 0  # acknowledged by the broker
    failed: int = 0  # the broker did not take it
    dropped: int = 0  # over the fps cap or behind the source
    bytes_published: int = 0
    state: CameraState = "starting"
    last_error: str | None = None
    attempts: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delivered(self, size: int, latency_ms: float, error: Exception | None) -> None:
        with self._lock:
            if error is None:
                self.published += 1
                self.bytes_published += size
                self.latencies_ms.append(latency_ms)
            else:
                self.failed += 1
                self.last_error = f"publish failed: {error}"

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "camera_id": self.camera_id,
                "state": self.state,
                "read": self.read,
                "published": self.published,
                "failed": self.failed,
                "dropped": self.dropped,
                "bytes": self.bytes_published,
                "attempts": self.attempts,
                "last_error": self.last_error,
            }


class CameraRunner:
    """Owns one camera: open its source, pace and cap it, publish frames, retry on failure."""

    def __init__(
        self,
        config: CameraConfig,
        frames: FramePublisher,
        status: CameraStatusPublisher,
        stop_event: threading.Event,
        source_factory: Callable[[CameraConfig], FrameSource] | None = None,
        outage: OutageLog | None = None,
    ) -> None:
        self.config = config
        self.outage = outage or OutageLog("the Kafka broker", log)  # one line per outage, shared by a fleet's cameras
        self.frames = frames
        self.status = status
        self.stop_event = stop_event
        self.stats = CameraStats(config.id)
        self.source_factory = source_factory or _source_for
        self._seq = 0
        self._period_ms: float | None = None  # nominal time between published frames (None: as fast as possible)
        self._rng = np.random.default_rng(zlib.crc32(config.id.encode()))
        self.thread = threading.Thread(target=self.run, name=f"camera-{config.id}", daemon=True)

    def run(self) -> None:
        missing = missing_file(self.config.source)
        if missing:  # nothing to retry: a file that is not there does not come back by waiting
            self.stats.last_error = missing
            log.error("camera %s: %s", self.config.id, missing)
            self._report("failed", reason=missing)
            return
        retry = self.config.option("retry")
        attempt = 0
        while not self.stop_event.is_set():
            source = self.source_factory(self.config)
            published_before = self.stats.published
            try:
                self._report("starting", attempt=attempt)
                source.open()
                self._report("running", attempt=attempt)
                self._stream(source)
                if source.end_note:
                    log.warning("camera %s: %s", self.config.id, source.end_note)
                    self.stats.last_error = source.end_note
                self._report("stopped" if self.stop_event.is_set() else "finished", reason=source.end_note)
                return
            except SourceError as exc:
                if self.stats.published > published_before:
                    attempt = 0  # it worked for a while: start the backoff again
                attempt += 1
                delay = min(retry.max_s, retry.initial_s * 2 ** (attempt - 1))
                self.stats.last_error = str(exc)
                self.stats.attempts = attempt
                log.warning("camera %s: %s; retry %d in %.1fs", self.config.id, exc, attempt, delay)
                self._report("retrying", reason=str(exc), attempt=attempt, retry_in_s=delay)
                self.stop_event.wait(delay)
            except Exception as exc:  # keep the other cameras going whatever happens to this one
                log.exception("camera %s: unexpected error", self.config.id)
                attempt += 1
                self._report("retrying", reason=f"unexpected error: {exc!r}", attempt=attempt, retry_in_s=retry.max_s)
                self.stop_event.wait(retry.max_s)
            finally:
                source.close()
        self._report("stopped")

    def _stream(self, source: FrameSource) -> None:
        cfg = self.config
        fps_cap = cfg.option("fps")
        cap_period = 1.0 / fps_cap if fps_cap else 0.0
        pace_period = 1.0 / source.native_fps if (cfg.option("realtime") and not source.live and source.native_fps) else 0.0
        live_period = 1.0 / source.native_fps if (source.live and source.native_fps) else 0.0
        period = max(cap_period, pace_period, live_period)
        self._period_ms = period * 1000.0 if period > 0 else None
        started = time.monotonic()
        frames_read = 0
        next_publish = started
        while not self.stop_event.is_set():
            if pace_period:
                due = started + frames_read * pace_period
                now = time.monotonic()
                if now < due:
                    if self.stop_event.wait(due - now):
                        return
                elif now - due > pace_period:  # behind the source's clock: drop, never queue
                    behind = int((now - due) / pace_period)
                    source.skip(behind)
                    frames_read += behind
                    self.stats.dropped += behind
            item = source.read()
            if item is None:
                return
            frames_read += 1
            self.stats.read += 1
            index, image = item
            now = time.monotonic()
            if cap_period:
                if now + 1e-3 < next_publish:
                    self.stats.dropped += 1
                    continue
                next_publish = max(next_publish + cap_period, now)
            self._publish(index, image)
            if cfg.max_frames is not None and self._seq >= cfg.max_frames:
                return

    def _publish(self, index: int, image: np.ndarray) -> None:
        capture_ts = time.time()
        rendered = render(image, self.config.look, self.config.option("max_width"), self._rng)
        jpeg = encode_jpeg(rendered, self.config.option("jpeg_quality"))
        frame = Frame(
            camera_id=self.config.id,
            seq=self._seq,
            capture_ts=capture_ts,
            width=rendered.shape[1],
            height=rendered.shape[0],
            jpeg=jpeg,
            source_frame_index=index,
            period_ms=self._period_ms,
        )
        self._seq += 1
        sent = time.perf_counter()
        size = len(jpeg)

        def delivered(error: Exception | None) -> None:
            self.stats.delivered(size, (time.perf_counter() - sent) * 1000.0, error)
            if error is None:
                self.outage.recovered()
            else:
                self.outage.failed(f"camera {self.config.id}: {error}")

        try:
            self.frames.publish(frame, delivered)
        except KafkaError as exc:  # the broker is unreachable (no metadata within max_block_ms): counted, not dropped
            delivered(exc)

    def _report(self, state: CameraState, reason: str | None = None, attempt: int = 0, retry_in_s: float | None = None) -> None:
        self.stats.state = state
        status = CameraStatus(
            camera_id=self.config.id,
            state=state,
            reason=reason,
            attempt=attempt,
            retry_in_s=retry_in_s,
            frames_published=self.stats.published,
            source=str(self.config.source),
            ts=time.time(),
        )
        try:
            self.status.publish(status)
        except Exception as exc:  # the status report must never take the camera down
            self.outage.failed(f"camera {self.config.id} status: {exc}")


def _source_for(config: CameraConfig) -> FrameSource:
    return build_source(
        config.source,
        loop=bool(config.option("loop")),
        start_s=config.start_s,
        start_frame=config.start_frame,
        fps_override=config.option("source_fps"),
    )


class CameraFleet:
    """Many cameras in one process, sharing one Kafka producer."""

    def __init__(self, cameras: list[CameraConfig], bootstrap: str, topics: Topics, producer: KafkaProducer | None = None) -> None:
        self.cameras = cameras
        self.bootstrap = bootstrap
        self.topics = topics
        self.stop_event = threading.Event()
        self._own_producer = producer is None
        self.producer = producer or make_producer(bootstrap)
        frames = FramePublisher(self.producer, topics.frames)
        status = CameraStatusPublisher(self.producer, topics.camera_status)
        self.outage = OutageLog("the Kafka broker", log)
        self.runners = [CameraRunner(cam, frames, status, self.stop_event, outage=self.outage) for cam in cameras]

    def start(self) -> None:
        ensure_topics(self.bootstrap, [self.topics.frames, self.topics.camera_status])
        for runner in self.runners:
            runner.thread.start()

    def wait(self, seconds: float | None = None, on_tick: Callable[[], None] | None = None, tick_s: float = 1.0) -> None:
        """Block until every camera has finished, ``seconds`` have passed, or ``stop()`` is called."""
        deadline = None if seconds is None else time.monotonic() + seconds
        next_tick = time.monotonic() + tick_s
        while not self.stop_event.is_set() and any(r.thread.is_alive() for r in self.runners):
            # wake often enough to return as soon as the cameras finish; tick every tick_s
            remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if remaining <= 0:
                break
            self.stop_event.wait(remaining)
            if on_tick is not None and time.monotonic() >= next_tick:
                on_tick()
                next_tick += tick_s

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        for runner in self.runners:
            runner.thread.join(timeout=timeout_s)
        self.producer.flush(timeout=timeout_s)
        if self._own_producer:
            self.producer.close(timeout=timeout_s)

    def stats(self) -> list[dict[str, object]]:
        return [r.stats.snapshot() for r in self.runners]

    def published_frames(self) -> set[tuple[str, int]]:
        """(camera id, seq) of every frame the fleet has published (seq counts from 0 per camera)."""
        return {(r.config.id, seq) for r in self.runners for seq in range(r.stats.published)}
