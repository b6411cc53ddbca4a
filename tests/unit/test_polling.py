"""wait_until: returns as soon as the condition holds, names what it waited for when it never does."""

from __future__ import annotations

import time

import pytest

from streams.polling import poll_for, wait_until


def test_wait_until_returns_once_the_condition_holds_and_names_what_timed_out() -> None:
    calls: list[float] = []

    def third_call_true() -> bool:
        calls.append(time.monotonic())
        return len(calls) >= 3

    wait_until(third_call_true, timeout_s=5, what="the third call", interval_s=0.01)
    assert len(calls) == 3
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0 s waiting for the broker"):
        wait_until(lambda: False, timeout_s=0.2, what="the broker", interval_s=0.01)
    assert time.monotonic() - started >= 0.2


def test_poll_for_returns_the_first_answer_or_none_after_the_timeout() -> None:
    answers = iter([None, None, "serving v2", "later"])
    assert poll_for(lambda: next(answers), timeout_s=5, interval_s=0.01) == "serving v2"
    started = time.monotonic()
    assert poll_for(lambda: None, timeout_s=0.2, interval_s=0.01) is None
    assert time.monotonic() - started >= 0.2
    assert poll_for(lambda: 0, timeout_s=0) == 0  # a falsy answer is still an answer
