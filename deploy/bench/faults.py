"""``pedstream bench faults``: a live stream through the real broker and detector agent processes, one
fault injected per scenario, every frame counted from capture to detection by (camera, seq).

A frame is **accounted for** when a Detections record names it (inferred, or shed as stale with its
reason) or when it was dead-lettered with a reason; **lost** = sent and not accounted for;
**duplicates** = Detections records beyond the first for a frame (at-least-once delivery: a frame
an agent had not committed is detected again by the agent that takes its partition over);
**recovery_s** = time from the fault until every camera the fault hit has a frame captured after the
fault detected (inferred, not shed): a record produced just before the fault and delivered only after
it (seen: 0.07 s for a broker restart that took 8 s) does not count.

Scenarios (issue 15 lists more; these are built):

* ``detector-killed``: two agents in one group share the cameras; the one serving cameras is killed
  with SIGKILL mid-stream; the other must take its partitions over.
* ``redis-restart``: the agent follows a registry in its own Redis, which is killed and restarted on
  the same port with its append-only file: the agent keeps detecting meanwhile, reconnects, and a
  version published after the restart reaches it (recovery_s: restart to serving it).
* ``broker-restart``: a durable broker of its own (tansu on its S3 storage engine, as ``stack up
  --durable``) is killed with SIGKILL mid-stream and started again on the same port a few seconds
  later with its data: cameras buffer and retry, the agent reconnects and resumes from its
  committed offsets (recovery_s: the broker gone to every camera detected again; ``--broker-stop
  term`` sends SIGTERM instead, which tansu takes 5 s to act on). In the suite at 2 cameras x 10 s;
  docs/operations.md has the measurements.
* ``bad-models``: the registry announces a version whose bytes were changed after signing and one
  signed with a key the agent does not trust: both refused with their reasons, the agent still
  serving the good version, every frame detected.
* ``trainer-killed``: one of two Ray trainers of a retraining cycle gets SIGKILL; Ray restarts it,
  the parameter server goes on, and the cycle ends with its verdict (recovery_s: kill to verdict).
* ``bad-input``: one agent; between the cameras' good frames arrive a corrupt JPEG, a truncated
  record header, a record of an unknown schema version and an oversized frame; each must be
  dead-lettered with its reason, every good frame detected, and the agent still running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, TopicPartition

from deploy.agent_process import AgentProcess
from deploy.bench.pipeline import ReplayCameras, wait_until_detected
from deploy.stack import free_loopback_port, start_redis, start_store, start_tansu
from detectors.detector import read_model, weights_path, with_version
from streams.bus import RecordWatch, ensure_topics, make_producer, read_dead_letters
from streams.kafka_settings import DURABLE_FETCH_MAX_WAIT_MS, FETCH_MAX_WAIT_ENV, consumer_settings
from streams.model_channel import ModelKeys, connect_redis
from streams.outage import closing_quietly
from streams.polling import poll_for
from streams.records import Detections, Frame, HardExample, ModelAnnouncement
from streams.signing import PRIVATE_NAME, PUBLIC_NAME, Signer, init_keys
from streams.topics import Topics, TopicSpec, camera_ids_on_distinct_partitions
from streams.wire import META_HEADER, decode, encode
from trainer.cluster import DEFAULT_BASE_PORT
from trainer.registry import Lineage, Registry

SCENARIOS = ("detector-killed", "redis-restart", "broker-restart", "bad-input", "bad-models", "trainer-killed")


@dataclass(frozen=True)
class FaultRig:
    """What every scenario runs on: the broker, the model the agents serve, the camera video, a work
    folder, the teachers (trainer-killed labels with them), the stream's size, a Ray port base."""

    bootstrap: str
    model: str
    source: str
    home: Path
    models_dir: Path | None = None
    cameras: int = 4
    fps: float = 5.0
    seconds: float = 20.0
    ray_port: int = DEFAULT_BASE_PORT
    cycle_updates: int = 80  # trainer-killed: the retraining cycle's size
    cycle_examples: int = 60
    broker_signal: int = signal.SIGKILL  # broker-restart: how the broker is stopped (see docs/operations.md for SIGTERM)
    logs_dir: Path | None = None  # keep every scenario's process logs (agents, broker, store) here


@dataclass
class ScenarioResult:
    name: str
    frames_sent: int
    frames_detected: int  # distinct frames with an inferred Detections record
    frames_shed: int  # distinct frames published as skipped (stale), with the reason
    dead_lettered: int
    lost: int
    duplicates: int
    recovery_s: float | None
    fault: str
    checks: dict[str, bool] = field(default_factory=dict)  # what the scenario must show besides lost == 0
    lost_frames: list[str] = field(default_factory=list)  # the first few, "camera:seq"
    # broker-restart with frames lost: where they are, read back from the broker after the run
    # (frames topic: did they reach the broker; detections topic: did the agent answer them and
    # only the bench's watcher miss it)
    lost_found_in: dict[str, int] = field(default_factory=dict)


class _Tally:
    """Detections records by (camera, seq), from a watcher thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: Counter[tuple[str, int]] = Counter()
        self.inferred: set[tuple[str, int]] = set()
        self.shed: set[tuple[str, int]] = set()
        self.by_agent: dict[str, set[str]] = {}
        self.first_after: dict[str, float] = {}  # camera -> produced_ts of its first frame captured after the fault and inferred
        self.fault_ts: float | None = None

    def add(self, d: Detections, _now: float) -> None:
        key = (d.camera_id, d.seq)
        with self.lock:
            self.records[key] += 1
            (self.shed if d.skipped is not None else self.inferred).add(key)
            self.by_agent.setdefault(d.agent_id, set()).add(d.camera_id)
            # detections flowing again: a frame captured after the fault, inferred (not a record the
            # agent had produced just before the fault and the broker delivered only after it)
            if self.fault_ts is not None and d.capture_ts > self.fault_ts and d.skipped is None:
                self.first_after.setdefault(d.camera_id, d.produced_ts)


@contextmanager
def _agents(
    bootstrap: str, topics: Topics, model: str, home: Path, count: int
) -> Iterator[tuple[list[AgentProcess], _Tally, RecordWatch[Detections]]]:
    group = f"{topics.prefix}-detect"
    agents = [
        AgentProcess(model, bootstrap, topics, home, f"faults-{chr(ord('a') + i)}", threads=1, backend="ort", group=group).start()
        for i in range(count)
    ]
    tally = _Tally()
    watch = RecordWatch(bootstrap, topics, topics.detections, Detections, on_record=tally.add)
    try:
        wait_until_detected(bootstrap, topics, tally.records.__contains__, agents)
        if count > 1:
            time.sleep(6.0)  # let every agent finish joining: the split is then stable before the stream
        yield agents, tally, watch
    finally:
        watch.close()
        for agent in agents:
            agent.stop()


def _drain(tally: _Tally, sent: set[tuple[str, int]], timeout_s: float) -> None:
    """Wait until every sent frame is accounted for, or the timeout."""

    def all_answered() -> bool | None:
        with tally.lock:
            return True if sent <= tally.inferred | tally.shed else None

    poll_for(all_answered, timeout_s, 0.5)


def _lost(tally: _Tally, sent: set[tuple[str, int]], dead: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Frames sent and neither answered (inferred or shed) nor dead-lettered."""
    with tally.lock:
        return sent - tally.inferred - tally.shed - dead


def _result(
    name: str, fault: str, tally: _Tally, sent: set[tuple[str, int]], dead: set[tuple[str, int]], hit: set[str], fault_ts: float | None
) -> ScenarioResult:
    lost = sorted(_lost(tally, sent, dead))
    with tally.lock:
        duplicates = sum(n - 1 for key, n in tally.records.items() if key in sent and n > 1)
        after = [tally.first_after[c] - fault_ts for c in hit if c in tally.first_after] if fault_ts is not None else []
        recovery = round(max(after), 2) if after and len(after) == len(hit) else None
        return ScenarioResult(
            name=name,
            frames_sent=len(sent),
            frames_detected=len(tally.inferred & sent),
            frames_shed=len((tally.shed - tally.inferred) & sent),
            dead_lettered=len(dead & sent),
            lost=len(lost),
            duplicates=duplicates,
            recovery_s=recovery if hit else 0.0,
            fault=fault,
            lost_frames=[f"{c}:{s}" for c, s in lost[:10]],
        )


def detector_killed(rig: FaultRig) -> ScenarioResult:
    bootstrap, model, source, home = rig.bootstrap, rig.model, rig.source, rig.home
    cameras, fps, seconds = rig.cameras, rig.fps, rig.seconds
    topics = Topics(f"faults{uuid.uuid4().hex[:6]}")
    ensure_topics(bootstrap, topics.all())
    ids = camera_ids_on_distinct_partitions(min(cameras, topics.frames.partitions), topics.frames.partitions)
    with _agents(bootstrap, topics, model, home / "detector-killed", 2) as (agents, tally, _watch):
        stream = ReplayCameras(bootstrap, topics, source, len(ids), fps, "cam", ids=ids)
        stream.start()
        time.sleep(seconds * 0.4)
        with tally.lock:
            serving = {a: cams - {"probe"} for a, cams in tally.by_agent.items()}
        victim = max(agents, key=lambda a: len(serving.get(a.agent_id, set())))
        hit = serving.get(victim.agent_id, set())
        with tally.lock:
            tally.fault_ts = time.time()
        victim.stop(signal.SIGKILL)
        fault = f"SIGKILL {victim.agent_id} (serving {', '.join(sorted(hit)) or 'nothing'}) at {seconds * 0.4:.0f} s of {seconds:.0f} s"
        time.sleep(seconds * 0.6)
        stream.stop()
        sent = stream.published_frames()
        _drain(tally, sent, 30.0)
        result = _result("detector-killed", fault, tally, sent, set(), hit, tally.fault_ts)
        survivor = next(a for a in agents if a is not victim)
        result.checks = {
            "survivor_running": survivor.alive(),
            "victim_had_cameras": bool(hit),
            "survivor_took_them_over": all(c in tally.by_agent.get(survivor.agent_id, set()) for c in hit),
        }
        result.fault += f"; before the fault {sum(1 for served in serving.values() if served)} agent(s) served cameras"
        return result


@dataclass
class _FollowingAgent:
    """An agent that follows a model registry in a Redis of its own (persisted under ``work``)."""

    agent: AgentProcess
    registry: Registry
    redis_proc: Any
    redis_url: str
    start_bytes: bytes
    start_order: ModelAnnouncement
    work: Path

    @property
    def start_version(self) -> str:
        return self.start_order.version


@contextmanager
def _following_agent(bootstrap: str, topics: Topics, model: str, work: Path) -> Iterator[tuple[_FollowingAgent, _Tally]]:
    redis_proc, redis_url = start_redis(work / "redis-stack")
    init_keys(work / "keys")
    registry = Registry(connect_redis(redis_url), ModelKeys.for_topics(topics.prefix), Signer.load(work / "keys" / PRIVATE_NAME))
    start_bytes = read_model(model)
    start_order = registry.publish(start_bytes, Lineage(notes="bench faults: start"))
    agent = AgentProcess(
        model, bootstrap, topics, work, "faults-follower", threads=1, backend="ort", group=f"{topics.prefix}-detect",
        redis_url=redis_url, public_key=work / "keys" / PUBLIC_NAME, metrics_port=free_loopback_port(),
    ).start()  # fmt: skip
    following = _FollowingAgent(agent, registry, redis_proc, redis_url, start_bytes, start_order, work)
    tally = _Tally()
    watch = RecordWatch(bootstrap, topics, topics.detections, Detections, on_record=tally.add)
    try:
        wait_until_detected(bootstrap, topics, tally.records.__contains__, [agent])
        yield following, tally
    finally:
        watch.close()
        agent.stop()
        following.redis_proc.kill()


def redis_restart(rig: FaultRig) -> ScenarioResult:
    """The agent follows a registry in a Redis of its own (persisted, on its own port) that is killed
    and restarted mid-stream; a version published once Redis is back must reach the agent."""
    bootstrap, model, source, home = rig.bootstrap, rig.model, rig.source, rig.home
    cameras, fps, seconds = rig.cameras, rig.fps, rig.seconds
    topics = Topics(f"faults{uuid.uuid4().hex[:6]}")
    ensure_topics(bootstrap, topics.all())
    with _following_agent(bootstrap, topics, model, home / "redis-restart") as (f, tally):
        port = int(f.redis_url.rsplit(":", 1)[1])
        new_version = f"{f.start_version}-after-restart"
        stream = ReplayCameras(bootstrap, topics, source, cameras, fps, "cam")
        stream.start()
        time.sleep(seconds * 0.3)
        with tally.lock:
            tally.fault_ts = time.time()
        f.redis_proc.kill()
        f.redis_proc.wait(10)
        down_s = min(5.0, seconds * 0.2)
        time.sleep(down_s)
        with tally.lock:
            detected_while_down = len(tally.first_after)  # cameras detected with Redis gone
        f.redis_proc, _ = start_redis(f.work / "redis-stack", port)
        back = time.monotonic()
        f.registry.publish(with_version(f.start_bytes, new_version), Lineage(parent=f.start_version, notes="published after the restart"))
        arrived_s = _wait_until_served(f.agent, new_version, 30.0)
        time.sleep(max(0.0, seconds * 0.5 - (time.monotonic() - back)))
        stream.stop()
        sent = stream.published_frames()
        _drain(tally, sent, 30.0)
        result = _result("redis-restart", f"Redis killed at {seconds * 0.3:.0f} s, restarted {down_s:.0f} s later (same port, its AOF)",
                         tally, sent, set(), set(), None)  # fmt: skip
        result.recovery_s = arrived_s
        result.checks = {
            "agent_running": f.agent.alive(),
            "detections_while_redis_down": detected_while_down == cameras,
            "registry_kept": f.registry.current_version() == new_version and f.registry.entry(f.start_version) is not None,
            "new_version_served_after_restart": arrived_s is not None,
        }
        return result


def broker_restart(rig: FaultRig) -> ScenarioResult:
    """A durable broker of its own (tansu on a local S3 store), killed mid-stream and started again
    on the same port with its data; the agent and cameras use it throughout."""
    work = rig.home / "broker-restart"
    saved_wait = os.environ.get(FETCH_MAX_WAIT_ENV)
    os.environ[FETCH_MAX_WAIT_ENV] = str(DURABLE_FETCH_MAX_WAIT_MS)  # every client of this broker, agents included
    store, store_url = start_store(work)
    broker, bootstrap = start_tansu(work, None, store_url)
    port = int(bootstrap.rsplit(":", 1)[1])
    try:
        topics = Topics(f"faults{uuid.uuid4().hex[:6]}")
        ensure_topics(bootstrap, topics.all())
        with _agents(bootstrap, topics, rig.model, work, 1) as (agents, tally, _watch):
            stream = ReplayCameras(bootstrap, topics, rig.source, rig.cameras, rig.fps, "cam")
            stream.start()
            time.sleep(rig.seconds * 0.3)
            with tally.lock:
                before = set(tally.inferred | tally.shed)
            broker.send_signal(rig.broker_signal)
            stopping_s = time.time()
            broker.wait(10)
            with tally.lock:  # the fault: the broker gone (a SIGTERMed tansu serves for seconds before it exits)
                tally.fault_ts = time.time()
            down_s = min(5.0, rig.seconds * 0.2)
            time.sleep(down_s)
            broker, _ = start_tansu(work, port, store_url)
            time.sleep(max(0.0, rig.seconds * 0.7 - down_s))
            stream.stop()
            sent = stream.published_frames()
            _drain(tally, sent, 60.0)
            hit = set(stream.ids)
            fault = (f"broker stopped ({signal.Signals(rig.broker_signal).name}) at {rig.seconds * 0.3:.0f} s, gone "
                     f"{tally.fault_ts - stopping_s:.1f} s later, started again {down_s:.0f} s after that "
                     "(same port, its S3 store)")  # fmt: skip
            result = _result("broker-restart", fault, tally, sent, set(), hit, tally.fault_ts)
            result.checks = {
                "agent_running": agents[0].alive(),
                "detected_before_the_fault": bool(before & sent),
                "every_camera_detected_after_restart": all(c in tally.first_after for c in hit),
                "data_kept": (before & sent) <= _read_back(bootstrap, topics.frames, Frame, before & sent),
            }
            if result.lost:
                lost = _lost(tally, sent, set())
                result.lost_found_in = {
                    "frames_topic": len(_read_back(bootstrap, topics.frames, Frame, lost)),
                    "detections_topic": len(_read_back(bootstrap, topics.detections, Detections, lost)),
                }
            return result
    finally:
        broker.kill()
        store.kill()
        if saved_wait is None:
            os.environ.pop(FETCH_MAX_WAIT_ENV, None)
        else:
            os.environ[FETCH_MAX_WAIT_ENV] = saved_wait


def _read_back(
    bootstrap: str, topic: TopicSpec, record_type: type[Frame] | type[Detections], wanted: set[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Which of ``wanted`` (camera, seq) the topic holds now, read from its beginning without a group."""
    consumer = KafkaConsumer(**consumer_settings(bootstrap, None))
    seen: set[tuple[str, int]] = set()
    try:
        consumer.assign([TopicPartition(topic.name, p) for p in range(topic.partitions)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not wanted <= seen:
            for messages in consumer.poll(timeout_ms=500).values():
                for msg in messages:
                    record = decode(record_type, msg.value, list(msg.headers or []))
                    seen.add((record.camera_id, record.seq))
    finally:
        with closing_quietly():
            consumer.close()
    return seen & wanted


def _wait_until_served(agent: AgentProcess, version: str, timeout_s: float) -> float | None:
    """Seconds until the agent reports serving ``version`` (its metrics), or None."""
    started = time.monotonic()

    def served() -> float | None:
        try:
            return round(time.monotonic() - started, 2) if agent.served_model().get("version") == version else None
        except OSError:  # its metrics endpoint not answering yet
            return None

    return poll_for(served, timeout_s, 0.2)


BAD_MODELS = ("tampered-bytes", "signed-by-another-key", "rejected-unsigned", "replayed-old-order")


def bad_models(rig: FaultRig) -> ScenarioResult:
    """While the cameras stream, the registry announces bad versions: bytes changed after signing, a
    model signed with a key the agent does not trust, a rejected (unsigned) version pushed on the
    channel, and the start version's own order replayed after a newer one. Each must be refused
    with its reason while the agent goes on serving and detecting."""
    bootstrap, model, source, home = rig.bootstrap, rig.model, rig.source, rig.home
    cameras, fps, seconds = rig.cameras, rig.fps, rig.seconds
    topics = Topics(f"faults{uuid.uuid4().hex[:6]}")
    ensure_topics(bootstrap, topics.all())
    with _following_agent(bootstrap, topics, model, home / "bad-models") as (f, tally):
        stream = ReplayCameras(bootstrap, topics, source, cameras, fps, "cam")
        stream.start()
        rogue = Registry(f.registry.client, f.registry.keys, Signer(Ed25519PrivateKey.generate()))
        reasons: dict[str, str] = {}
        for kind in BAD_MODELS:
            version = f"{f.start_version}-{kind}"
            if kind == "tampered-bytes":
                f.registry.store(with_version(f.start_bytes, version))
                f.registry.client.set(f.registry.keys.onnx(version), with_version(f.start_bytes, version) + b"tampered")
                f.registry.make_current(version)
            elif kind == "signed-by-another-key":
                rogue.publish(with_version(f.start_bytes, version))
            elif kind == "rejected-unsigned":
                rejected = f.registry.store(with_version(f.start_bytes, version), state="rejected", reason="failed the gate")
                f.registry.client.publish(f.registry.keys.channel, rejected.model_copy(update={"serial": 2**62}).model_dump_json())
            else:  # the start version's first order, validly signed, replayed after a newer order for the same version
                version = f.start_version
                newer = f.registry.make_current(version)
                _wait_for_serial(f.registry, newer.serial, 20.0)
                f.registry.client.publish(f.registry.keys.channel, f.start_order.model_dump_json())
            reasons[kind] = _wait_until_refused(f.registry, version, 20.0)
        time.sleep(seconds * 0.3)
        stream.stop()
        sent = stream.published_frames()
        _drain(tally, sent, 30.0)
        served = f.agent.served_model().get("version")
        result = _result("bad-models", "registry announced: " + ", ".join(BAD_MODELS), tally, sent, set(), set(), None)
        result.checks = {
            "agent_running": f.agent.alive(),
            "still_serving_the_good_version": served == f.start_version,
            **{f"refused_{kind}": bool(reasons[kind]) for kind in BAD_MODELS},
        }
        result.fault += "; reasons: " + "; ".join(f"{k}: {v or 'NOT REFUSED'}" for k, v in reasons.items())
        return result


def _wait_for_serial(registry: Registry, serial: int, timeout_s: float) -> None:
    """Until some agent reports serving the general model under order ``serial``."""

    def reported() -> bool | None:
        return True if any((s.get("cameras") or {}).get("*", {}).get("serial") == serial for s in registry.agents().values()) else None

    poll_for(reported, timeout_s, 0.2)


def _wait_until_refused(registry: Registry, version: str, timeout_s: float) -> str:
    """The reason the agent gave for refusing ``version`` (its status in the registry), or ''."""

    def reason() -> str | None:
        refusals = [status.get("refused") or {} for status in registry.agents().values()]
        return next((str(r.get("reason")) for r in refusals if r.get("version") == version), None)

    return poll_for(reason, timeout_s, 0.2) or ""


BAD_INPUTS = ("corrupt-jpeg", "truncated-header", "unknown-schema", "oversized-frame")


def _bad_message(kind: str, good: Frame) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """One bad message of ``kind``, keyed ``bad-KIND`` so its dead-letter entry can be matched."""
    msg = encode(good.model_copy(update={"camera_id": f"bad-{kind}"}))
    headers = list(msg.headers)
    value = msg.value
    if kind == "corrupt-jpeg":
        value = value[:3] + bytes(200)  # still starts like a JPEG, decodes to nothing
    elif kind == "truncated-header":
        headers = [(k, v[: len(v) // 2] if k == META_HEADER else v) for k, v in headers]
    elif kind == "unknown-schema":
        headers = [(k, json.dumps({**json.loads(v), "schema_version": 99}).encode() if k == META_HEADER else v) for k, v in headers]
    elif kind == "oversized-frame":
        huge = good.model_copy(update={"camera_id": f"bad-{kind}", "width": 30_000, "height": 20_000})
        big = encode(huge)
        return big.key or b"", big.value, list(big.headers)
    return msg.key or b"", value, headers


def bad_input(rig: FaultRig) -> ScenarioResult:
    bootstrap, model, source, home = rig.bootstrap, rig.model, rig.source, rig.home
    cameras, fps, seconds = rig.cameras, rig.fps, rig.seconds
    topics = Topics(f"faults{uuid.uuid4().hex[:6]}")
    ensure_topics(bootstrap, topics.all())
    with _agents(bootstrap, topics, model, home / "bad-input", 1) as (agents, tally, _watch):
        stream = ReplayCameras(bootstrap, topics, source, cameras, fps, "cam")
        stream.start()
        producer = make_producer(bootstrap)
        jpeg, width, height = stream.jpegs[0]
        injected: set[tuple[str, int]] = set()
        try:
            for i, kind in enumerate(BAD_INPUTS):
                time.sleep(seconds / (len(BAD_INPUTS) + 1))
                good = Frame(camera_id="x", seq=i, capture_ts=time.time(), width=width, height=height, jpeg=jpeg, source_frame_index=i)
                key, value, headers = _bad_message(kind, good)
                producer.send(topics.frames.name, key=key, value=value, headers=headers)
                producer.flush()
                injected.add((f"bad-{kind}", i))
            time.sleep(seconds / (len(BAD_INPUTS) + 1))
        finally:
            producer.close()
        stream.stop()
        good_frames = stream.published_frames()
        _drain(tally, good_frames, 30.0)
        letters = read_dead_letters(bootstrap, topics, timeout_s=3.0)
        reasons = {(letter.key or b"").decode(errors="replace"): letter.reason for letter in letters}
        dead = {(camera, seq) for camera, seq in injected if camera in reasons}
        result = _result("bad-input", f"{len(BAD_INPUTS)} bad messages among the good frames: {', '.join(BAD_INPUTS)}",
                         tally, good_frames | injected, dead, set(), None)  # fmt: skip
        result.checks = {
            "agent_running": agents[0].alive(),
            **{f"dead_lettered_{kind}": f"bad-{kind}" in reasons for kind in BAD_INPUTS},
        }
        result.fault += "; reasons: " + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        return result


def trainer_killed(rig: FaultRig) -> ScenarioResult:
    """A retraining cycle on a loopback Ray head (PS + 2 trainers) from hard examples of the camera
    video; one trainer process gets SIGKILL mid-cycle. Ray restarts it, the parameter server goes
    on, and the cycle must finish with a verdict (shipped or rejected, with its reason)."""
    import psutil

    from trainer.cluster import RayPorts, ray_session
    from trainer.data import LabelCache
    from trainer.gate import GatePolicy
    from trainer.labels import TeacherLabeler
    from trainer.report import read_weights
    from trainer.retrain import Retrainer, RetrainPolicy, fine_tune_settings
    from trainer.store import HardExampleStore

    if rig.models_dir is None:
        raise ValueError("trainer-killed needs the teachers' models folder")
    work = rig.home / "trainer-killed"
    topics = Topics(f"faults{uuid.uuid4().hex[:6]}")
    redis_proc, redis_url = start_redis(work / "redis-stack")
    killed: list[float] = []
    try:
        init_keys(work / "keys")
        registry = Registry(connect_redis(redis_url), ModelKeys.for_topics(topics.prefix), Signer.load(work / "keys" / PRIVATE_NAME))
        weights = weights_path(rig.model)
        if weights is None:
            raise ValueError(f"{rig.model}: no training weights beside it; trainer-killed fine-tunes it")
        registry.publish(read_model(rig.model), Lineage(notes="bench faults: start"), weights=read_weights(weights))
        store = HardExampleStore(work / "store")
        for example in _hard_examples(rig.source, "cam-0", rig.cycle_examples):
            store.add(example)
        policy = RetrainPolicy(  # any verdict will do: the scenario asks whether the cycle ends, not what it decides
            min_new_examples=10**9, gate=GatePolicy(min_frames=1, margin=-1.0), job=fine_tune_settings(updates=rig.cycle_updates, workers=2)
        )
        retrainer = Retrainer(store, registry, TeacherLabeler(rig.models_dir), LabelCache(work / "labels"), policy,
                              models_dir=rig.models_dir)  # fmt: skip

        def kill_a_trainer() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                trainers = [p for p in psutil.process_iter(["cmdline"]) if "ray::Trainer" in " ".join(p.info["cmdline"] or [])]
                if len(trainers) >= 2:
                    time.sleep(3.0)  # well into the cycle
                    trainers[0].kill()
                    killed.append(time.time())
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_a_trainer, daemon=True, name="kill-a-trainer")
        with ray_session(None, RayPorts(rig.ray_port), num_cpus=2):
            killer.start()
            cycle = retrainer.run_cycle(["cam-0"], promote=False)
            finished = time.time()
        killer.join(5)
        restarts = int(cycle.train.get("trainer_restarts", 0))
        back = [float(ts) for ts in cycle.train.get("trainer_back_ts", [])]
        # recovery: the kill to the restarted trainer's first gradient (the PS never stops: the other
        # trainer goes on meanwhile); the verdict's time is in the fault text
        back_s = round(back[0] - killed[0], 2) if killed and back else None
        result = ScenarioResult(
            name="trainer-killed", frames_sent=0, frames_detected=0, frames_shed=0, dead_lettered=0, lost=0, duplicates=0,
            recovery_s=back_s,
            fault=f"SIGKILL one of 2 Ray trainers 3 s into a cycle of {cycle.train.get('updates')} updates; restarted trainer's "
                  f"first gradient {back_s if back_s is not None else '-'} s after the kill; cycle "
                  f"{cycle.version}: {'shipped' if cycle.shipped else 'rejected'} ({cycle.reason}) "
                  f"{round(finished - killed[0], 1) if killed else '-'} s after the kill",
        )  # fmt: skip
        result.checks = {"trainer_killed": bool(killed), "trainer_restarted": restarts >= 1 and bool(back),
                         "cycle_finished": bool(cycle.version)}  # fmt: skip
        return result
    finally:
        redis_proc.kill()


def _hard_examples(source: str, camera: str, count: int) -> list[HardExample]:
    """Every 4th frame of ``source`` as mined hard examples of ``camera``."""
    capture = cv2.VideoCapture(source)
    out: list[HardExample] = []
    index = 0
    while len(out) < count:
        ok, image = capture.read()
        if not ok:
            break
        if index % 4 == 0:
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            out.append(HardExample(camera_id=camera, seq=index, capture_ts=1_000_000.0 + index, width=image.shape[1],
                                   height=image.shape[0], jpeg=jpeg, source_frame_index=index, model_version="start",
                                   detections=[], reasons=["random"], mined_ts=time.time()))  # fmt: skip
        index += 1
    capture.release()
    return out


RUNNERS: dict[str, Callable[[FaultRig], ScenarioResult]] = {
    "detector-killed": detector_killed,
    "redis-restart": redis_restart,
    "broker-restart": broker_restart,
    "bad-models": bad_models,
    "trainer-killed": trainer_killed,
    "bad-input": bad_input,
}


def _keep_logs(home: Path, into: Path, since: float) -> None:
    """Copy the logs the scenario's processes wrote (``*.log`` under ``home`` changed since ``since``)."""
    for log_file in home.rglob("*.log"):
        if log_file.is_file() and log_file.stat().st_mtime >= since:
            target = into / log_file.relative_to(home)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_file, target)


def run(rig: FaultRig, scenarios: list[str], progress: Callable[[str], None] = print) -> dict[str, Any]:
    unknown = [s for s in scenarios if s not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    out = []
    for name in scenarios:
        progress(f"{name}: {rig.cameras} cameras x {rig.fps:g} fps for {rig.seconds:.0f} s")
        started = time.time()
        result = RUNNERS[name](rig)
        if rig.logs_dir is not None:
            _keep_logs(rig.home, rig.logs_dir / name, started)
        progress(f"{name}: sent {result.frames_sent}, lost {result.lost}, duplicates {result.duplicates}, recovery {result.recovery_s} s")
        out.append(asdict(result))
    return {"scenarios": out, "cameras": rig.cameras, "fps": rig.fps, "seconds": rig.seconds, "model": rig.model}
