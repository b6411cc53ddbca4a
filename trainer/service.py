"""``pedstream trainer``: the continual-training service.

It consumes the hard-examples topic into the store, checks the triggers, runs retraining cycles
(automatic, or asked for with ``pedstream retrain``), and publishes what passes the gate. Requests
and status go through Redis (``P:retrain:requests``, ``P:retrain:status``, ``P:retrain:result:<id>``
under the registry prefix), so ``pedstream retrain`` works from any machine that reaches Redis.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from streams.bus import RecordSubscriber
from streams.errors import PedstreamError
from streams.model_channel import ModelKeys, as_bytes, get_bytes
from streams.records import HardExample
from streams.topics import Topics
from trainer import metrics
from trainer.retrain import Retrainer, cycle_as_dict
from trainer.store import HardExampleStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainKeys:
    keys: ModelKeys

    @property
    def requests(self) -> str:
        return f"{self.keys.prefix}:retrain:requests"

    @property
    def status(self) -> str:
        return f"{self.keys.prefix}:retrain:status"

    def result(self, request_id: str) -> str:
        return f"{self.keys.prefix}:retrain:result:{request_id}"


def request_retrain(client: redis.Redis, keys: RetrainKeys, cameras: list[str] | None, min_examples: int | None) -> str:
    request_id = uuid.uuid4().hex[:12]
    client.rpush(keys.requests, json.dumps({"id": request_id, "cameras": cameras, "min_examples": min_examples, "ts": time.time()}))
    return request_id


def wait_for_result(client: redis.Redis, keys: RetrainKeys, request_id: str, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw = get_bytes(client, keys.result(request_id))
        if raw:
            result: dict[str, Any] = json.loads(raw)
            return result
        time.sleep(0.5)
    return None


COMPILE_CHOICES = ("off", "declared", "host")


class TrainerService:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        client: redis.Redis,
        store: HardExampleStore,
        retrainer: Retrainer,
        auto: bool = True,
        check_every_s: float = 10.0,
        subscriber: RecordSubscriber[HardExample] | None = None,
        on_cycle: Callable[[dict[str, Any]], None] | None = None,
        compile_tvm: str = "declared",
        tvm_trials: int = 0,
    ) -> None:
        self.client = client
        self.keys = RetrainKeys(retrainer.registry.keys)
        self.store = store
        self.retrainer = retrainer
        self.auto = auto
        self.check_every_s = check_every_s
        self.subscriber = subscriber or RecordSubscriber(bootstrap, topics, topics.hard_examples, HardExample, "pedstream-trainer")
        self.stopping = threading.Event()
        self.cycles: list[dict[str, Any]] = []
        self.state = "collecting"
        # a cycle runs in its own thread: the hard-example consumer keeps polling (and so keeps its
        # place in the consumer group) however long training takes
        self.worker: threading.Thread | None = None
        self._rollbacks_seen: set[tuple[str, str, str]] = set()
        self.on_cycle = on_cycle  # told each cycle's result (`pedstream trainer --json` prints them)
        if compile_tvm not in COMPILE_CHOICES:
            raise PedstreamError(f"compile_tvm must be one of {', '.join(COMPILE_CHOICES)}, not {compile_tvm!r}")
        self.compile_tvm = compile_tvm  # off | declared (targets agents declare) | host (those and this machine's)
        self.tvm_trials = tvm_trials

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def start_cycle(self, cameras: list[str] | None, min_examples: int | None, request_id: str | None) -> threading.Thread:
        """Run one cycle in the background (one at a time: requests wait in their Redis queue)."""
        if self.busy:
            raise RuntimeError("a retraining cycle is already running")
        self.state = f"retraining {', '.join(cameras) if cameras else 'all cameras'}"
        self.worker = threading.Thread(target=self._cycle, args=(cameras, min_examples, request_id), name="retraining", daemon=True)
        self.worker.start()
        return self.worker

    def stop(self) -> None:
        self.stopping.set()

    def wait_until_assigned(self, timeout_s: float = 60.0) -> bool:
        """Poll (storing whatever arrives) until the hard-example consumer has joined its group and
        holds partitions, so that a short stream is read while it runs; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.collect(0.5)
            if self.subscriber.consumer.assignment():
                return True
        return False

    def collect(self, timeout_s: float = 0.5) -> int:
        """Store whatever hard examples arrived; returns how many were new."""
        added = sum(self.store.add(d.record) for d in self.subscriber.poll(timeout_s))
        self.subscriber.commit()
        return added

    def publish_status(self, due: dict[str, str] | None = None) -> None:
        counts = self.store.counts()
        metrics.observe_store(counts)
        status = {
            "state": self.state,
            "ts": time.time(),
            "counts": counts,
            "due": due or {},
            "current": self.retrainer.registry.current_version(),
            "rollbacks": self.edge_rollbacks(),
            "auto": self.auto,
            "cycles": self.cycles[-10:],
        }
        self.client.set(self.keys.status, json.dumps(status))

    def edge_rollbacks(self) -> dict[str, dict[str, str]]:
        """Cameras an edge agent rolled back on its own (agreement with the teacher fell after a
        swap), by agent: camera -> why. Logged once each; shown by `pedstream retrain status`."""
        out = {agent: dict(status.get("reverted") or {}) for agent, status in self.retrainer.registry.agents().items()}
        out = {agent: cameras for agent, cameras in out.items() if cameras}
        for agent, cameras in out.items():
            for camera, why in cameras.items():
                if (agent, camera, why) not in self._rollbacks_seen:
                    self._rollbacks_seen.add((agent, camera, why))
                    log.warning("agent %s rolled camera %s back: %s", agent, camera, why)
        return out

    def _cycle(self, cameras: list[str] | None, min_examples: int | None, request_id: str | None) -> None:
        self.publish_status()
        try:
            result = cycle_as_dict(self.retrainer.run_cycle(cameras, min_examples))
            log.info("cycle %s: %s (%s)", result["version"], "shipped" if result["shipped"] else "rejected", result["reason"])
        except PedstreamError as exc:  # a request it cannot serve (an unknown camera, too few examples): one line
            log.error("retraining not possible: %s", exc)
            metrics.CYCLES.labels("failed").inc()
            result = {"error": str(exc), "cameras": cameras}
        except Exception as exc:  # noqa: BLE001 - a failed cycle is reported, the service goes on
            log.exception("retraining failed")
            metrics.CYCLES.labels("failed").inc()
            result = {"error": str(exc), "cameras": cameras}
        if result.get("shipped") and self.compile_tvm != "off":
            result["artifacts"] = self._compile(str(result["version"]))
        result["request_id"] = request_id
        self.cycles.append(result)
        if self.on_cycle is not None:
            self.on_cycle(result)
        if request_id:
            self.client.set(self.keys.result(request_id), json.dumps(result), ex=24 * 3600)
        self.state = "collecting"
        self.publish_status()

    def _compile(self, version: str) -> dict[str, Any]:
        """Compile a shipped version for the edge's TVM targets, after its order (agents serve it on
        ONNX Runtime meanwhile, and switch when their library appears)."""
        from trainer.compiling import compile_version, declared_targets

        self.state = f"compiling {version} for the edge"
        self.publish_status()
        try:
            targets = None if self.compile_tvm == "host" else declared_targets(self.retrainer.registry)
            if targets == {}:
                return {"version": version, "published": [], "skipped": {}, "note": "no edge agent declared a TVM target"}
            return compile_version(self.retrainer.registry, version, targets, self.tvm_trials)
        except Exception as exc:  # noqa: BLE001 - the version is served anyway (on ONNX Runtime); say why not compiled
            log.error("compiling %s for the edge failed: %s", version, exc)
            return {"version": version, "error": str(exc)}

    def run(self) -> None:
        last_check = 0.0
        self.publish_status()
        try:
            while not self.stopping.is_set():
                self.collect()
                if self.busy:
                    continue
                raw = as_bytes(self.client.lpop(self.keys.requests))
                if raw:
                    request = json.loads(raw)
                    cameras = request.get("cameras") or None
                    self.start_cycle(cameras, request.get("min_examples"), request["id"])
                    continue
                if time.monotonic() - last_check >= self.check_every_s:
                    last_check = time.monotonic()
                    due = self.retrainer.due() if self.auto else {}
                    self.publish_status(due)
                    if due:
                        log.info("retraining due: %s", due)
                        self.start_cycle(sorted(due)[:1], None, None)  # one camera per cycle: each gets its own model
        finally:
            if self.busy and self.worker is not None:
                log.info("waiting for the running retraining cycle to finish")
                self.worker.join()
            self.subscriber.close()
