"""The trainer service keeps consuming hard examples while a retraining cycle runs (small fakes for
the subscriber, Redis and the retrainer; the real path is tests/integration/test_retraining.py)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace
from typing import Any

from streams.model_channel import ModelKeys
from trainer.retrain import CycleResult
from trainer.service import RetrainKeys, TrainerService, request_retrain


class FakeRedis:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.lists: dict[str, list[bytes]] = {}

    def set(self, key: str, value: str | bytes, ex: int | None = None) -> None:
        self.values[key] = value.encode() if isinstance(value, str) else value

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def rpush(self, key: str, value: str | bytes) -> None:
        self.lists.setdefault(key, []).append(value.encode() if isinstance(value, str) else value)

    def lpop(self, key: str) -> bytes | None:
        items = self.lists.get(key) or []
        return items.pop(0) if items else None


class Polls:
    """A hard-example subscriber that counts how often it was polled."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self, timeout_s: float) -> list[Any]:
        self.polls += 1
        time.sleep(0.01)
        return []

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class SlowRetrainer:
    def __init__(self) -> None:
        self.registry = SimpleNamespace(keys=ModelKeys.for_topics("unit"), current_version=lambda: "v1", agents=lambda: {})
        self.release = threading.Event()
        self.started = threading.Event()

    def run_cycle(self, cameras: list[str] | None, min_examples: int | None) -> CycleResult:
        self.started.set()
        assert self.release.wait(10)
        return CycleResult(version="v2", shipped=True, reason="gain", cameras=cameras or [], new_examples=5, replay_examples=5)

    def due(self) -> dict[str, str]:
        return {}


class Store:
    def counts(self) -> dict[str, dict[str, int]]:
        return {}


def test_the_hard_example_consumer_keeps_polling_while_a_cycle_trains() -> None:
    client, polls, retrainer = FakeRedis(), Polls(), SlowRetrainer()
    told: list[dict] = []  # type: ignore[type-arg]
    service = TrainerService("unused", None, client, Store(), retrainer, auto=False, subscriber=polls, on_cycle=told.append)  # type: ignore[arg-type]
    keys = RetrainKeys(retrainer.registry.keys)
    request_id = request_retrain(client, keys, ["cam"], 5)  # type: ignore[arg-type]
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        assert retrainer.started.wait(5)
        during = polls.polls
        time.sleep(0.5)
        assert polls.polls > during + 5  # collecting went on while the cycle was training
        assert service.busy and json.loads(client.values[keys.status])["state"] == "retraining cam"
    finally:
        retrainer.release.set()
        deadline = time.monotonic() + 5
        while keys.result(request_id) not in client.values and time.monotonic() < deadline:
            time.sleep(0.05)
        service.stop()
        runner.join(5)
    assert json.loads(client.values[keys.result(request_id)])["version"] == "v2"
    assert [(r["version"], r["request_id"]) for r in told] == [("v2", request_id)]  # what `pedstream trainer --json` prints
    assert not runner.is_alive() and not service.busy
