"""A frames-topic subscriber that keeps live per-camera figures: fps, gaps in sequence numbers, lag, size."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from streams.bus import RecordSubscriber
from streams.records import Frame
from streams.topics import Topics

WINDOW_S = 5.0


@dataclass
class CameraFlow:
    """What one camera's frames look like from the consumer side."""

    camera_id: str
    frames: int = 0
    bytes: int = 0
    last_seq: int = -1
    missing: int = 0  # sequence numbers skipped (lost or not yet arrived)
    out_of_order: int = 0
    width: int = 0
    height: int = 0
    lag_ms: float = 0.0  # arrival time minus capture time of the newest frame
    arrivals: deque[float] = field(default_factory=deque, repr=False)

    def add(self, frame: Frame, now: float) -> None:
        self.frames += 1
        self.bytes += len(frame.jpeg)
        if self.last_seq >= 0:
            if frame.seq > self.last_seq + 1:
                self.missing += frame.seq - self.last_seq - 1
            elif frame.seq <= self.last_seq:
                self.out_of_order += 1
        self.last_seq = max(self.last_seq, frame.seq)
        self.width, self.height = frame.width, frame.height
        self.lag_ms = max(0.0, (now - frame.capture_ts) * 1000.0)
        self.arrivals.append(now)

    def fps(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / WINDOW_S

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "fps": round(self.fps(now), 2),
            "frames": self.frames,
            "last_seq": self.last_seq,
            "missing": self.missing,
            "out_of_order": self.out_of_order,
            "size": f"{self.width}x{self.height}",
            "lag_ms": round(self.lag_ms, 1),
            "kb_per_frame": round(self.bytes / max(1, self.frames) / 1024, 1),
        }


class FlowMonitor:
    """Consumes the frames topic in its own group and keeps a CameraFlow per camera.

    Only frames captured after the monitor started count unless ``from_beginning`` is set (the
    embedded broker's "latest offset" is unreliable, so the monitor reads from the start and skips).
    """

    def __init__(self, bootstrap: str, topics: Topics, group_id: str, from_beginning: bool = False, camera: str | None = None) -> None:
        self.subscriber = RecordSubscriber(bootstrap, topics, topics.frames, Frame, group_id)
        self.since = 0.0 if from_beginning else time.time() - 1.0
        self.camera = camera
        self.flows: dict[str, CameraFlow] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flow-monitor", daemon=True)

    def start(self) -> FlowMonitor:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            delivered = self.subscriber.poll(0.5)
            now = time.time()
            with self._lock:
                for item in delivered:
                    frame = item.record
                    if frame.capture_ts < self.since or (self.camera and frame.camera_id != self.camera):
                        continue
                    self.flows.setdefault(frame.camera_id, CameraFlow(frame.camera_id)).add(frame, now)
            if delivered:
                self.subscriber.commit()

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = time.time()
        with self._lock:
            return {cid: flow.as_dict(now) for cid, flow in sorted(self.flows.items())}

    @property
    def dead_lettered(self) -> int:
        return self.subscriber.dead_lettered

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        self.subscriber.close()


def render_table(snapshot: dict[str, dict[str, object]]) -> str:
    """A fixed-width table of a monitor snapshot, one camera a row."""
    header = f"{'camera':<16}{'fps':>7}{'frames':>8}{'last seq':>10}{'missing':>9}{'size':>11}{'lag ms':>9}{'KB':>7}"
    rows = [header, "-" * len(header)]
    for cid, f in snapshot.items():
        rows.append(
            f"{cid:<16}{f['fps']:>7}{f['frames']:>8}{f['last_seq']:>10}{f['missing']:>9}{f['size']:>11}{f['lag_ms']:>9}{f['kb_per_frame']:>7}"
        )
    if not snapshot:
        rows.append("(no frames yet)")
    return "\n".join(rows)
