"""A faust transport (``pedstream://host:port``) whose consumer does not long-poll for 1.5 s.

Why a transport and not a setting: faust-streaming 0.15.3 builds its aiokafka consumer with the
literal ``fetch_max_wait_ms=1500`` (``faust/transport/drivers/aiokafka.py``,
``_create_worker_consumer``) and has no setting for it; the embedded tansu broker holds every fetch
for the whole wait even when messages arrive, which put 0.5-1 s on every frame. aiokafka (0.14)
keeps the constructor argument as ``_fetch_max_wait_ms`` and reads it only when ``start()`` builds
its fetcher, so this transport sets that attribute on the freshly built consumer, before start.
``check_supported`` fails loudly (at agent start, and in tests/unit/detectors/test_faust_transport.py)
if a faust or aiokafka upgrade changes either fact, instead of silently serving with 1.5 s waits.
The value, ``streams.kafka_settings.fetch_max_wait_ms()``, is valid for Apache Kafka as well.
"""

from __future__ import annotations

import inspect
from typing import Any

import aiokafka
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka_settings import fetch_max_wait_ms

SCHEME = "pedstream"
_ATTRIBUTE = "_fetch_max_wait_ms"


def check_supported() -> None:
    """Raise if aiokafka no longer keeps the fetch wait where this transport sets it."""
    source = inspect.getsource(aiokafka.AIOKafkaConsumer)
    if f"self.{_ATTRIBUTE} = fetch_max_wait_ms" not in source or f"fetch_max_wait_ms=self.{_ATTRIBUTE}" not in source:
        raise RuntimeError(
            f"aiokafka {aiokafka.__version__} no longer stores fetch_max_wait_ms as {_ATTRIBUTE}: "
            "detectors/faust_transport.py must be updated (faust would long-poll 1.5 s per fetch)"
        )


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        setattr(consumer, _ATTRIBUTE, fetch_max_wait_ms())  # read by start(); see the module docstring
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> LowLatencyConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


class LowLatencyTransport(faust_aiokafka.Transport):
    Consumer = LowLatencyConsumer


def register() -> None:
    """Make ``pedstream://`` broker URLs use this transport."""
    check_supported()
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:LowLatencyTransport"


def broker_url(bootstrap: str) -> str:
    register()
    return ";".join(f"{SCHEME}://{server}" for server in bootstrap.split(","))
