"""A faust transport (``pedstream://host:port``) whose consumer does not long-poll for 1.5 s.

faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``. The embedded tansu broker holds each
fetch for the whole wait even when messages arrive, which put ~0.5-1 s of latency on every frame.
This transport is faust's own aiokafka transport with only that one setting taken from
``streams.kafka_settings`` (valid for Apache Kafka as well).
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka_settings import FETCH_MAX_WAIT_MS

SCHEME = "pedstream"


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> LowLatencyConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


class LowLatencyTransport(faust_aiokafka.Transport):
    Consumer = LowLatencyConsumer


def register() -> None:
    """Make ``pedstream://`` broker URLs use this transport."""
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:LowLatencyTransport"


def broker_url(bootstrap: str) -> str:
    register()
    return ";".join(f"{SCHEME}://{server}" for server in bootstrap.split(","))
