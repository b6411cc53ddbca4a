"""Label-free accuracy at the edge, and the automatic rollback it drives.

Every ``every_s`` seconds per camera, one frame the agent detected is also run through a teacher
model (an ONNX detector at the edge: no torch); the served model's published boxes are scored
against the teacher's confident boxes (AP50 over the last ``window`` sampled frames, per camera and
version). After a swap, once the new version has ``min_frames`` samples, a camera whose estimate
fell more than ``max_drop`` below the previous version's is rolled back on its own (``on_drop``:
the agent serves that camera what it served before and reports why, for the trainer to read).
Teacher runs happen on one background thread; a sample that finds it busy is skipped, so the
frames' path never waits on the teacher.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from detectors.evaluation import FrameMatches, match_frame, score_matches
from detectors.results import BoxArray
from streams.mot import GroundTruth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgreementPolicy:
    every_s: float = 5.0
    window: int = 20
    min_frames: int = 8
    max_drop: float = 0.15  # AP50 points / 100 the estimate may fall after a swap before the camera rolls back
    teacher_threshold: float = 0.5  # teacher boxes at or above this count as people


class AgreementMonitor:
    """Per camera and version: a window of frames scored against the teacher."""

    def __init__(
        self,
        teacher: Callable[[np.ndarray], BoxArray],
        on_drop: Callable[[str, str], object],
        policy: AgreementPolicy = AgreementPolicy(),
    ) -> None:
        self.teacher = teacher
        self.on_drop = on_drop
        self.policy = policy
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], deque[FrameMatches]] = {}
        self._versions: dict[str, list[str]] = {}  # camera -> versions in the order it served them
        self._last_sample: dict[str, float] = {}
        self._checked: set[tuple[str, str]] = set()  # (camera, version) already judged after its swap
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agreement")
        self._busy = threading.Event()

    def offer(self, camera: str, version: str, jpeg: bytes, found: BoxArray, now: float | None = None) -> bool:
        """A detected frame; sampled (returns True) when the camera is due and the teacher is free."""
        now = time.monotonic() if now is None else now
        if now - self._last_sample.get(camera, -1e9) < self.policy.every_s or self._busy.is_set():
            return False
        self._last_sample[camera] = now
        self._busy.set()
        self._executor.submit(self._score, camera, version, jpeg, found)
        return True

    def estimate(self, camera: str, version: str) -> tuple[float, int] | None:
        """(AP50 against the teacher, frames) of ``version`` on ``camera``; None before any frame."""
        with self._lock:
            window = list(self._windows.get((camera, version), ()))
        return (score_matches(window).ap50, len(window)) if window else None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def record(self, camera: str, version: str, found: BoxArray, teacher_boxes: BoxArray) -> None:
        """Score one frame (the teacher's confident boxes are the truth) and judge the camera."""
        keep = teacher_boxes.scores >= self.policy.teacher_threshold
        n = int(keep.sum())
        truth = GroundTruth(teacher_boxes.xyxy[keep], np.arange(n), np.ones(n, bool))
        with self._lock:
            window = self._windows.setdefault((camera, version), deque(maxlen=self.policy.window))
            window.append(match_frame(found, truth))
            served = self._versions.setdefault(camera, [])
            if not served or served[-1] != version:
                served.append(version)
        self._judge(camera)

    def _score(self, camera: str, version: str, jpeg: bytes, found: BoxArray) -> None:
        try:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is not None:
                self.record(camera, version, found, self.teacher(image))
        except Exception:  # noqa: BLE001 - the estimate is advisory: a failure must not touch the frames' path
            log.exception("agreement sample for camera %s failed", camera)
        finally:
            self._busy.clear()

    def _judge(self, camera: str) -> None:
        with self._lock:
            served = list(self._versions.get(camera, []))
        if len(served) < 2 or (camera, served[-1]) in self._checked:
            return
        now, before = self.estimate(camera, served[-1]), self.estimate(camera, served[-2])
        if now is None or before is None or now[1] < self.policy.min_frames or before[1] < self.policy.min_frames:
            return
        self._checked.add((camera, served[-1]))
        drop = before[0] - now[0]
        if drop > self.policy.max_drop:
            reason = (
                f"agreement with the teacher fell from {before[0]:.2f} ({served[-2]}, {before[1]} frames) to {now[0]:.2f} "
                f"({served[-1]}, {now[1]} frames): -{drop:.2f} > {self.policy.max_drop:.2f}"
            )
            self.on_drop(camera, reason)
