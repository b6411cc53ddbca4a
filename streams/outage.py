"""One clear log line per outage of a dependency (the broker, Redis), not one per failed call.

``failed(why)`` logs the first failure of an outage as a warning and counts the rest quietly;
``recovered()`` logs once that the dependency is back, with how long it was gone and how many
calls failed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


class RepeatFilter(logging.Filter):
    """Lets one record of each message template through per ``interval_s`` (per logger); the next
    one that passes says how many were held back. Client libraries log a line per failed attempt
    (aiokafka about 40 a second while the broker is down): this keeps their first line of an outage
    and drops the flood."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.interval_s:.0f} s not shown)"
        return True


@contextmanager
def closing_quietly(prefixes: tuple[str, ...] = ("kafka", "aiokafka")) -> Iterator[None]:
    """Silence the Kafka client libraries while a client closes: kafka-python logs an error with a
    traceback for the socket it is itself closing mid-read (seen on Ctrl-C of `alerts tail`), and
    kafka-python 3.0 one for the coroutine its IO thread is still running ("generator already
    executing", seen on Ctrl-C of `dashboard`). A child logger with a level of its own (as
    ``quiet_client_logs`` gives ``kafka.net.selector``) would not follow its parent's, so each is set."""
    names = [
        name
        for name, logger in list(logging.root.manager.loggerDict.items())  # other threads may add loggers
        if name.split(".")[0] in prefixes and isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    ]
    loggers = [logging.getLogger(p) for p in dict.fromkeys([*prefixes, *names])]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def quiet_client_logs(prefixes: tuple[str, ...] = ("aiokafka", "kafka"), interval_s: float = 60.0) -> RepeatFilter:
    """Install one ``RepeatFilter`` on every logger of the Kafka client libraries imported so far, and
    drop kafka-python's "Task ... ran for 0.27s (>0.100s threshold)" warnings: it reports its own
    event loop being slow, which any busy 2-core machine makes it, and the user can do nothing about."""
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    repeat = RepeatFilter(interval_s)
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in prefixes]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(repeat)
    return repeat
