"""Hot swap at the edge: turn a release order into a verified, loaded, canary-tested detector, in
the background, and serve it on the order's cameras (or as the general model) from the next batch.

Order of checks: the signature over the release statement (``streams.signing``), the order rules
(a newer serial; no older version unless a signed rollback: ``detectors.serving``), the bytes'
sha256, loading (ONNX Runtime at once), a canary run on a blank frame (outputs must
decode). A model failing any check is refused and reported; the cameras keep what they serve.
With ``backend`` tvm or auto the agent first serves the new version on ONNX Runtime, then swaps to
TVM when its compile is ready and it is faster.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from detectors.backends.selection import choose_backend
from detectors.detector import Detector
from detectors.metrics import MODEL_SWAPS
from detectors.serving import ServedModels
from streams.model_channel import ModelReader
from streams.records import ModelAnnouncement, describe_scope

log = logging.getLogger(__name__)

CANARY_SHAPE = (480, 640, 3)


class ModelUpdater:
    """Receives release orders (from ``ModelWatcher``) and swaps verified models in, per scope."""

    def __init__(self, reader: ModelReader, models: ServedModels, agent_id: str, backend: str = "ort", threads: int = 0) -> None:
        self.reader = reader
        self.models = models
        self.agent_id = agent_id
        self.backend = backend
        self.threads = threads
        self.refused: dict[str, str] = {}
        self.reverted: dict[str, str] = {}  # camera -> why this agent rolled it back on its own
        self.swaps = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.loaded = threading.Event()  # set after each completed attempt (tests and benchmarks wait on it)

    @property
    def serving(self) -> str:
        """The general model's version."""
        return self.models.general.version

    def on_announcement(self, order: ModelAnnouncement) -> None:
        self._executor.submit(self._load, order)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _refuse(self, order: ModelAnnouncement, reason: str) -> None:
        where = describe_scope(order.scope)
        log.error("agent %s refused model %s for %s: %s; still serving what it served", self.agent_id, order.version, where, reason)
        self.refused[order.version] = reason
        self.report(refused={"version": order.version, "scope": order.scope, "serial": order.serial, "reason": reason})

    def report(self, **extra: object) -> None:
        """Write this agent's entry in the registry: what each scope serves, swaps, refusals."""
        status = self.models.status()
        try:
            self.reader.report(
                self.agent_id,
                {"serving": self.serving, "cameras": status, "swaps": self.swaps, "reverted": self.reverted, **extra},
            )
        except Exception as exc:  # noqa: BLE001 - reporting is best effort (Redis may be away)
            log.warning("could not report model status: %s", exc)

    def _load(self, order: ModelAnnouncement) -> None:
        try:
            try:
                self.reader.verifier.verify_order(order)  # nothing unsigned is acted on, not even to refuse it as old
            except Exception as exc:  # noqa: BLE001 - refuse, keep serving
                self._refuse(order, f"verification failed: {exc}")
                return
            why_not = self.models.admit(order)
            if why_not == "":
                self.report()  # already serving it (e.g. read again after a reconnect): say so
                return
            if why_not is not None:
                self._refuse(order, why_not)
                return
            if self.models.adopt(order):  # the same bytes already serve there (e.g. the model the agent started with)
                self.report()
                return
            try:
                data = self.reader.fetch(order)
            except Exception as exc:  # noqa: BLE001 - verification or Redis errors: refuse, keep serving
                self._refuse(order, f"verification failed: {exc}")
                return
            try:
                detector = Detector.from_bytes(data, backend="ort", name=order.version, threads=self.threads)
                canary = detector.detect([np.zeros(CANARY_SHAPE, np.uint8)])
                if len(canary) != 1 or not np.isfinite(canary[0].xyxy).all():
                    raise ValueError("canary run produced no usable output")
            except Exception as exc:  # noqa: BLE001 - any load or canary failure refuses the model
                self._refuse(order, f"load or canary run failed: {exc}")
                return
            self._install(detector, order)
            if self.backend != "ort":
                self._upgrade_backend(data, order.version)
        finally:
            self.loaded.set()

    def _install(self, detector: Detector, order: ModelAnnouncement) -> None:
        with self._lock:
            self.models.install(detector, order, list(order.scope))
            self.swaps += 1
            MODEL_SWAPS.inc()
            for camera in order.scope:
                self.reverted.pop(camera, None)
        log.info("agent %s now serves %s on %s for %s", self.agent_id, order.version, detector.backend.name, describe_scope(order.scope))
        self.report(backend=detector.backend.name)

    def revert(self, camera: str, reason: str) -> str | None:
        """Roll ``camera`` back to what it served before its latest swap; returns the version it
        serves now (None: nothing to go back to)."""
        with self._lock:
            now = self.models.revert(camera)
            if now is None:
                return None
            self.reverted[camera] = reason
        log.warning("agent %s rolled camera %s back to %s: %s", self.agent_id, camera, now.version, reason)
        self.report(rolled_back={"camera": camera, "to": now.version, "reason": reason})
        return now.version

    def _upgrade_backend(self, data: bytes, version: str) -> None:
        choice = choose_backend(self.backend, data, threads=self.threads)
        if choice.backend.name == "ort":
            log.info("model %s stays on ONNX Runtime: %s", version, choice.reason)
            return
        detector = Detector.from_bytes(data, backend=choice.backend, name=version, threads=self.threads)
        with self._lock:
            changed = self.models.replace_backend(version, detector)
        if changed:
            log.info("model %s now runs on %s for %s", version, detector.backend.name, ", ".join(changed))
            self.report(backend=detector.backend.name)
