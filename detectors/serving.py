"""Which model each camera is served, at the edge: the general model, and the models of cameras (or
groups of cameras) that have their own, each with the release order that put it there.

The pipeline asks ``for_camera`` at the start of every batch, so a swap takes effect between
batches with no frame dropped. The order rules an agent enforces live here too (``admit``):
a camera moves only to an order with a higher serial, and, unless the order is a signed rollback,
only to a version approved no earlier than the one it serves. The previous model of a camera is
kept so the agent can roll the camera back on its own (``revert``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from detectors.detector import Detector
from streams.records import GENERAL_SCOPE, ModelAnnouncement, describe_scope


@dataclass(frozen=True)
class Served:
    """One model in service and the order that put it there (None: the model the agent started with)."""

    detector: Detector
    order: ModelAnnouncement | None = None

    @property
    def version(self) -> str:
        return self.detector.version

    @property
    def serial(self) -> int:
        return self.order.serial if self.order else 0

    @property
    def number(self) -> int:
        return self.order.number if self.order else 0


class ServedModels:
    """The general model plus per-camera models; thread-safe (the model loader writes, the pipeline reads)."""

    def __init__(self, general: Detector) -> None:
        self._lock = threading.Lock()
        self._general = Served(general)
        self._cameras: dict[str, Served] = {}
        self._previous: dict[str, Served] = {}  # scope -> what it served before its latest swap

    @property
    def general(self) -> Detector:
        return self._general.detector

    def for_camera(self, camera: str) -> Detector:
        with self._lock:
            served = self._cameras.get(camera, self._general)
        return served.detector

    def served(self, scope: str) -> Served:
        """What ``scope`` (a camera id, or ``*``) serves now."""
        with self._lock:
            return self._general if scope == GENERAL_SCOPE else self._cameras.get(scope, self._general)

    def admit(self, order: ModelAnnouncement) -> str | None:
        """Why this order must be refused (None: it may be served). Orders already in force, such as
        those read again after a reconnect, are refused with reason ``""`` (nothing to do)."""
        scopes = order.scope or [GENERAL_SCOPE]
        for scope in scopes:
            served = self.served(scope) if scope == GENERAL_SCOPE else self._own(scope)
            if served is None:
                continue  # a camera with no model of its own yet: any signed order may give it one
            if order.serial == served.serial and order.version == served.version:
                return ""
            if order.serial <= served.serial:
                return f"order #{order.serial} is not newer than order #{served.serial} that {describe_scope([scope])} serves"
            if order.order != "rollback" and order.number < served.number:
                return (
                    f"version {order.version} (approval #{order.number}) is older than {served.version} (#{served.number}) "
                    f"that {describe_scope([scope])} serves, and the order is not a signed rollback"
                )
        return None

    def has_own(self, camera: str) -> bool:
        """Whether the camera serves a model of its own (not the general one)."""
        return self._own(camera) is not None

    def _own(self, camera: str) -> Served | None:
        with self._lock:
            return self._cameras.get(camera)

    def install(self, detector: Detector, order: ModelAnnouncement | None, scope: list[str]) -> None:
        """Serve ``detector`` on ``scope`` (empty: as the general model) from the next batch on."""
        served = Served(detector, order)
        with self._lock:
            if not scope:
                self._previous[GENERAL_SCOPE] = self._general
                self._general = served
            for camera in scope:
                self._previous[camera] = self._cameras.get(camera, self._general)
                self._cameras[camera] = served

    def adopt(self, order: ModelAnnouncement) -> bool:
        """When every scope of ``order`` already serves exactly its bytes (the same sha256), take the
        order as theirs without loading anything again (no new session, no warm-up on the frames'
        path); returns whether it did."""
        scopes = order.scope or [GENERAL_SCOPE]
        with self._lock:
            current = [self._general if scope == GENERAL_SCOPE else self._cameras.get(scope, self._general) for scope in scopes]
            if any(served.detector.info.sha256 != order.sha256 for served in current):
                return False
            for scope, served in zip(scopes, current, strict=True):
                adopted = Served(served.detector, order)
                if scope == GENERAL_SCOPE:
                    self._general = adopted
                else:
                    self._cameras[scope] = adopted
        return True

    def replace_backend(self, version: str, detector: Detector) -> list[str]:
        """Swap every scope serving ``version`` to ``detector`` (the same model on a faster backend);
        returns the scopes changed."""
        changed = []
        with self._lock:
            if self._general.version == version:
                self._general = Served(detector, self._general.order)
                changed.append(GENERAL_SCOPE)
            for camera, served in self._cameras.items():
                if served.version == version:
                    self._cameras[camera] = Served(detector, served.order)
                    changed.append(camera)
        return changed

    def previous(self, camera: str) -> Served | None:
        with self._lock:
            return self._previous.get(camera)

    def revert(self, camera: str) -> Served | None:
        """Serve ``camera`` what it served before its latest swap (its own rollback, no order
        needed: a model this agent already verified and served); returns what it serves now. A
        camera following the general model goes back to the general model before its latest swap."""
        with self._lock:
            if camera in self._cameras:
                previous = self._previous.pop(camera, None)
            else:
                previous = self._previous.get(GENERAL_SCOPE)
            if previous is None:
                return None
            if previous is self._general:
                self._cameras.pop(camera, None)  # back to following the general model
            else:
                self._cameras[camera] = previous
            return self._cameras.get(camera, self._general)

    def status(self) -> dict[str, dict[str, object]]:
        """Scope -> version, backend, order serial and approval number (for reports and metrics)."""
        with self._lock:
            items = [(GENERAL_SCOPE, self._general), *sorted(self._cameras.items())]
        return {
            scope: {"version": s.version, "backend": s.detector.backend.name, "serial": s.serial, "number": s.number} for scope, s in items
        }
