"""The pedstream:// faust transport really builds consumers that wait FETCH_MAX_WAIT_MS, not 1.5 s."""

from __future__ import annotations

import asyncio
import inspect

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

from detectors.faust_transport import check_supported
from streams.kafka_settings import FETCH_MAX_WAIT_MS


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
