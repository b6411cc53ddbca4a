"""One log line per outage of a dependency, however many calls fail during it."""

from __future__ import annotations

import logging

import pytest

from streams.bus import RecordSubscriber
from streams.outage import OutageLog, closing_quietly, quiet_client_logs
from streams.records import Frame


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    outage = OutageLog("the Kafka broker")
    with caplog.at_level(logging.INFO, logger="streams.outage"):
        outage.recovered()  # nothing was down: nothing to say
        for i in range(50):
            outage.failed(f"connection refused #{i}")
        assert outage.down and outage.failures == 50
        outage.recovered()
        outage.recovered()
        outage.failed("timed out")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0] == "the Kafka broker unreachable: connection refused #0 (logged once until it is back)"
    assert lines[1].startswith("the Kafka broker back after") and "(50 failed calls meanwhile)" in lines[1]
    assert lines[2].startswith("the Kafka broker unreachable: timed out")
    assert outage.outages == 2


def test_kafka_pythons_slow_task_warnings_stay_out_of_user_output(caplog: pytest.LogCaptureFixture) -> None:
    quiet_client_logs()
    selector = logging.getLogger("kafka.net.selector")
    with caplog.at_level(logging.INFO):
        selector.warning("Task %s ran for 0.273s (>0.100s threshold). It is blocking the event loop", "t")
        selector.error("a real selector error")
    assert [r.getMessage() for r in caplog.records if r.name == "kafka.net.selector"] == ["a real selector error"]


def test_closing_quietly_also_silences_client_loggers_that_have_a_level_of_their_own(caplog: pytest.LogCaptureFixture) -> None:
    """kafka-python 3.0 logs "Error closing coroutine for cancelled task" with a traceback when a
    consumer closes while its IO thread runs (CI caught it on Ctrl-C of `dashboard`); the selector's
    logger has its own level (quiet_client_logs), so silencing "kafka" alone left it through."""
    quiet_client_logs()
    selector = logging.getLogger("kafka.net.selector")
    with caplog.at_level(logging.INFO):
        with closing_quietly():
            selector.error("Error closing coroutine for cancelled task")
        selector.error("a selector error after the close")
    assert [r.getMessage() for r in caplog.records if r.name == "kafka.net.selector"] == ["a selector error after the close"]
    assert selector.level == logging.ERROR


class _FlakyConsumer:
    """Raises what kafka-python 3's poll raises while the broker is down, then delivers nothing."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def poll(self, timeout_ms: int) -> dict[object, list[object]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return {}


def _subscriber(consumer: _FlakyConsumer) -> RecordSubscriber[Frame]:
    """A subscriber around the fake consumer (no broker: only poll() is exercised)."""
    subscriber: RecordSubscriber[Frame] = RecordSubscriber.__new__(RecordSubscriber)
    subscriber.consumer = consumer  # type: ignore[assignment]
    subscriber.broker = OutageLog("broker (reading frames)")
    return subscriber


def test_a_subscriber_rides_out_a_broker_restart_instead_of_raising_into_its_callers_loop(caplog: pytest.LogCaptureFixture) -> None:
    """Seen: kafka-python raised ECONNREFUSED from poll() while a durable broker restarted, which killed
    the thread of every watcher, monitor and dashboard reading a topic."""
    from kafka.errors import KafkaConnectionError

    consumer = _FlakyConsumer(KafkaConnectionError("111 ECONNREFUSED"), failures=3)
    subscriber = _subscriber(consumer)
    with caplog.at_level(logging.INFO, logger="streams.bus"):
        assert [subscriber.poll(0.01) for _ in range(5)] == [[], [], [], [], []]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "unreachable: KafkaConnectionError: 111 ECONNREFUSED" in lines[0], lines
    assert "back after" in lines[1] and "(3 failed calls meanwhile)" in lines[1]


def test_a_subscriber_still_raises_errors_that_retrying_cannot_mend() -> None:
    from kafka.errors import TopicAuthorizationFailedError

    subscriber = _subscriber(_FlakyConsumer(TopicAuthorizationFailedError("not allowed"), failures=1))
    with pytest.raises(TopicAuthorizationFailedError):
        subscriber.poll(0.01)
