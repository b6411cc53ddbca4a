"""Hot swap at the edge: turn a release order into a verified, loaded, canary-tested detector, in
the background, and serve it on the order's cameras (or as the general model) from the next batch.

Order of checks: the signature over the release statement (``streams.signing``), the order rules
(a newer serial; no older version unless a signed rollback: ``detectors.serving``), the bytes'
sha256, loading (ONNX Runtime at once), a canary run on a blank frame (outputs must
decode). A model failing any check is refused and reported; the cameras keep what they serve.
With ``backend`` tvm or auto the agent first serves the new version on ONNX Runtime, then looks
for the TVM library the trainer compiled for this device's target (``tvm_artifacts``; its id is in
the agent's status as ``tvm_target``), verifies it, loads it and (auto) serves it where it measures
faster here. It never compiles while serving: without a library it stays on ONNX Runtime, says
why in its status, and looks again every few seconds (the trainer publishes libraries after the
order, so that a new version is live within a second).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from detectors.backends.base import BackendError
from detectors.backends.selection import choose_from_artifact, tvm_module
from detectors.detector import Detector
from detectors.metrics import BACKEND_MS, MODEL_SWAPS
from detectors.serving import ServedModels
from streams.model_channel import ModelReader
from streams.records import ModelAnnouncement, describe_scope

log = logging.getLogger(__name__)

CANARY_SHAPE = (480, 640, 3)


class ModelUpdater:
    """Receives release orders (from ``ModelWatcher``) and swaps verified models in, per scope."""

    def __init__(
        self,
        reader: ModelReader,
        models: ServedModels,
        agent_id: str,
        backend: str = "ort",
        threads: int = 0,
        artifact_poll_s: float = 5.0,
        artifact_wait_s: float = 3600.0,
    ) -> None:
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
        self.artifact_poll_s = artifact_poll_s
        self.artifact_wait_s = artifact_wait_s
        self.device_target: dict[str, str] | None = None  # this device's TVM target: what the trainer compiles for
        self.backend_choices: dict[str, dict[str, Any]] = {}  # version -> backend, reason, measured ms
        self._timers: list[threading.Timer] = []
        if backend != "ort":
            self._executor.submit(self._declare_target)

    @property
    def serving(self) -> str:
        """The general model's version."""
        return self.models.general.version

    def on_announcement(self, order: ModelAnnouncement) -> None:
        self._executor.submit(self._load, order)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _declare_target(self) -> None:
        """Find this device's TVM target (importing TVM takes seconds: on the loader thread) and say it."""
        if self.device_target is not None:
            return
        try:
            artifacts = tvm_module("tvm_artifacts")
            self.device_target = {"id": artifacts.target_id(), "target": str(tvm_module("tvm").host_target())}
        except BackendError as exc:
            self.device_target = {"error": str(exc)}
        self.report()

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
                {
                    "serving": self.serving,
                    "cameras": status,
                    "swaps": self.swaps,
                    "reverted": self.reverted,
                    "tvm_target": self.device_target,
                    "backends": self.backend_choices,
                    **extra,
                },
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

    def _upgrade_backend(self, data: bytes, version: str, deadline: float | None = None) -> None:
        """Serve ``version`` on the TVM library compiled for this device where there is one (and, for
        auto, where it measures faster); otherwise stay on ONNX Runtime and look again later."""
        self._declare_target()
        device = self.device_target or {}
        found = None
        if "id" not in device:
            missing = f"TVM is unavailable on this device ({device.get('error')})"
        else:
            try:
                found = self.reader.artifact(version, device["id"])
                missing = (
                    f"no TVM library compiled for this device (target {device['id']}) is published for {version} yet "
                    "(edge agents never compile while serving)"
                )
            except Exception as exc:  # noqa: BLE001 - a refused or unreadable artifact: keep ONNX Runtime
                missing = f"the TVM library published for this device was refused: {exc}"
        choice = choose_from_artifact(self.backend, data, found[1] if found else None, missing, self.threads)
        first = version not in self.backend_choices
        self.backend_choices[version] = {"backend": choice.backend.name, "reason": choice.reason, "measured_ms": choice.measured_ms}
        for name, ms in choice.measured_ms.items():
            BACKEND_MS.labels(version, name).set(ms)
        if found is None and "id" in device and "refused" not in missing:
            self._look_again(data, version, deadline if deadline is not None else time.monotonic() + self.artifact_wait_s)
        if choice.backend.name == "ort":
            if first or found is not None:
                log.info("model %s stays on ONNX Runtime: %s", version, choice.reason)
                self.report()
            return
        detector = Detector.from_bytes(data, backend=choice.backend, name=version, threads=self.threads)
        with self._lock:
            changed = self.models.replace_backend(version, detector)
        if changed:
            log.info("model %s now runs on %s for %s: %s", version, detector.backend.name, ", ".join(changed), choice.reason)
        self.report(backend=detector.backend.name)

    def _look_again(self, data: bytes, version: str, deadline: float) -> None:
        """Check for ``version``'s compiled library again in a while, while it is served and until ``deadline``."""
        served = {str(s["version"]) for s in self.models.status().values()}
        if version not in served or time.monotonic() + self.artifact_poll_s > deadline:
            return
        timer = threading.Timer(self.artifact_poll_s, self._submit_quietly, args=(self._upgrade_backend, data, version, deadline))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _submit_quietly(self, *task: Any) -> None:
        try:
            self._executor.submit(*task)
        except RuntimeError:  # closed meanwhile
            pass
