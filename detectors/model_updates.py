"""Hot swap at the edge: turn a model announcement into a verified, loaded, canary-tested detector,
in the background, and hand it to the agent to swap between batches.

Order of checks: sha256 and Ed25519 signature (``streams.signing``), loading (ONNX Runtime at once),
a canary run on a blank frame (outputs must decode). A model failing any check is refused and
reported; the old one keeps serving. With ``backend`` tvm or auto the agent first serves the new
version on ONNX Runtime, then swaps to TVM when its compile is ready and it is faster.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from detectors.backends.selection import choose_backend
from detectors.detector import Detector
from streams.model_channel import ModelReader
from streams.records import ModelAnnouncement

log = logging.getLogger(__name__)

CANARY_SHAPE = (480, 640, 3)


class ModelUpdater:
    """Receives announcements (from ``ModelWatcher``) and swaps verified models in."""

    def __init__(
        self, reader: ModelReader, swap: Callable[[Detector], None], agent_id: str, serving: str, backend: str = "ort", threads: int = 0
    ) -> None:
        self.reader = reader
        self.swap = swap
        self.agent_id = agent_id
        self.serving = serving
        self.backend = backend
        self.threads = threads
        self.refused: dict[str, str] = {}
        self.swaps = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.loaded = threading.Event()  # set after each completed attempt (tests and benchmarks wait on it)

    def on_announcement(self, announcement: ModelAnnouncement) -> None:
        if announcement.version == self.serving:
            self._report()  # already serving it (e.g. started with it): say so
            return
        self._executor.submit(self._load, announcement)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _refuse(self, announcement: ModelAnnouncement, reason: str) -> None:
        log.error("agent %s refused model %s: %s; still serving %s", self.agent_id, announcement.version, reason, self.serving)
        self.refused[announcement.version] = reason
        self._report(refused={"version": announcement.version, "reason": reason})

    def _report(self, **extra: object) -> None:
        try:
            self.reader.report(self.agent_id, {"serving": self.serving, "swaps": self.swaps, **extra})
        except Exception as exc:  # noqa: BLE001 - reporting is best effort (Redis may be away)
            log.warning("could not report model status: %s", exc)

    def _load(self, announcement: ModelAnnouncement) -> None:
        try:
            if announcement.version == self.serving:
                return
            try:
                data = self.reader.fetch(announcement)
            except Exception as exc:  # noqa: BLE001 - verification or Redis errors: refuse, keep serving
                self._refuse(announcement, f"verification failed: {exc}")
                return
            try:
                detector = Detector.from_bytes(data, backend="ort", name=announcement.version, threads=self.threads)
                canary = detector.detect([np.zeros(CANARY_SHAPE, np.uint8)])
                if len(canary) != 1 or not np.isfinite(canary[0].xyxy).all():
                    raise ValueError("canary run produced no usable output")
            except Exception as exc:  # noqa: BLE001 - any load or canary failure refuses the model
                self._refuse(announcement, f"load or canary run failed: {exc}")
                return
            self._install(detector, announcement.version)
            if self.backend != "ort":
                self._upgrade_backend(data, announcement.version)
        finally:
            self.loaded.set()

    def _install(self, detector: Detector, version: str) -> None:
        with self._lock:
            self.swap(detector)
            self.serving = version
            self.swaps += 1
        log.info("agent %s now serves %s on %s", self.agent_id, version, detector.backend.name)
        self._report(backend=detector.backend.name)

    def _upgrade_backend(self, data: bytes, version: str) -> None:
        choice = choose_backend(self.backend, data, threads=self.threads)
        if choice.backend.name == "ort" or self.serving != version:
            log.info("model %s stays on ONNX Runtime: %s", version, choice.reason)
            return
        detector = Detector.from_bytes(data, backend=choice.backend, name=version)
        self._install(detector, version)
