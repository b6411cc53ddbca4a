"""The pedstream:// faust transport really builds consumers that wait FETCH_MAX_WAIT_MS, not 1.5 s."""

from __future__ import annotations

import asyncio
import inspect

import aiokafka
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from detectors.faust_transport import check_supported
from streams.errors import ConfigError
from streams.kafka_settings import (
    DURABLE_FETCH_MAX_WAIT_MS,
    FETCH_MAX_WAIT_ENV,
    FETCH_MAX_WAIT_MS,
    consumer_settings,
    fetch_max_wait_ms,
)


def test_faust_still_hard_codes_its_wait_so_the_transport_is_still_needed() -> None:
    source = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=1500" in source


def test_aiokafka_reads_the_attribute_the_transport_sets_when_it_starts() -> None:
    check_supported()  # raises if aiokafka no longer builds its fetcher from that attribute

    async def build() -> aiokafka.AIOKafkaConsumer:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1500)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # what LowLatencyConsumerThread does
        return consumer

    assert asyncio.run(build())._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1500


def test_the_fetch_wait_follows_the_environment_and_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FETCH_MAX_WAIT_ENV, raising=False)
    assert fetch_max_wait_ms() == FETCH_MAX_WAIT_MS == consumer_settings("127.0.0.1:1", None)["fetch_max_wait_ms"]
    monkeypatch.setenv(FETCH_MAX_WAIT_ENV, str(DURABLE_FETCH_MAX_WAIT_MS))  # what clients of a durable stack get
    assert consumer_settings("127.0.0.1:1", None)["fetch_max_wait_ms"] == DURABLE_FETCH_MAX_WAIT_MS
    for bad in ("soon", "-5", "100000"):
        monkeypatch.setenv(FETCH_MAX_WAIT_ENV, bad)
        with pytest.raises(ConfigError, match=FETCH_MAX_WAIT_ENV):
            fetch_max_wait_ms()
