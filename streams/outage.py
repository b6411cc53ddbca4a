"""One clear log line per outage of a dependency (the broker, Redis), not one per failed call.

``failed(why)`` logs the first failure of an outage as a warning and counts the rest quietly;
``recovered()`` logs once that the dependency is back, with how long it was gone and how many
calls failed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class OutageLog:
    def __init__(self, dependency: str, logger: logging.Logger | None = None) -> None:
        self.dependency = dependency
        self.log = logger or log
        self.since: float | None = None  # monotonic time the current outage began
        self.failures = 0  # in the current outage
        self.outages = 0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, why: str) -> None:
        with self._lock:
            self.failures += 1
            if self.since is not None:
                return
            self.since = time.monotonic()
            self.outages += 1
        self.log.warning("%s unreachable: %s (logged once until it is back)", self.dependency, why)

    def recovered(self) -> None:
        with self._lock:
            if self.since is None:
                return
            gone_s, failures = time.monotonic() - self.since, self.failures
            self.since, self.failures = None, 0
        self.log.warning("%s back after %.1f s (%d failed calls meanwhile)", self.dependency, gone_s, failures)
