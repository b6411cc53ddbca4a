"""Waiting on something another process makes true (a broker answering, an agent serving a model):
poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_for(probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05) -> T | None:
    """The first answer of ``probe()`` that is not None, asked every ``interval_s``; None once
    ``timeout_s`` has passed without one."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if answer is not None:
            return answer
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Return as soon as ``condition()`` is true; raise ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    if poll_for(lambda: True if condition() else None, timeout_s, interval_s) is None:
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
