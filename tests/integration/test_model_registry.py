"""The signed model registry in the real Redis and hot swap in a real detector agent on the real
broker: a published version is served with no frame lost, a tampered one is refused, rollback
restores the previous version, and a Redis restart mid-stream does not stop detection."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from deploy.agent_process import AgentProcess
from deploy.stack import free_loopback_port
from detectors.detector import BUNDLED_MODELS, onnx_metadata, with_version
from streams.bus import RecordWatch, ensure_topics
from streams.model_channel import ModelKeys, ModelReader, connect_redis
from streams.records import Detections
from streams.signing import PRIVATE_NAME, PUBLIC_NAME, Signer, VerificationError, Verifier, init_keys
from streams.topics import Topics
from tests.integration.test_detector_agent import publish_frames, stop
from trainer.registry import Lineage, Registry

pytestmark = pytest.mark.integration
STUDENT = BUNDLED_MODELS / "student.onnx"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def registry(redis_url: str, keys: Path) -> Iterator[Registry]:
    model_keys = ModelKeys(f"t{uuid.uuid4().hex[:8]}:models")
    client = connect_redis(redis_url)
    yield Registry(client, model_keys, Signer.load(keys / PRIVATE_NAME))
    for key in client.scan_iter(f"{model_keys.prefix}:*"):
        client.delete(key)


def test_publish_promote_rollback_and_verification(registry: Registry, keys: Path, tmp_path: Path) -> None:
    reader = ModelReader(registry.client, registry.keys, Verifier.load(keys / PUBLIC_NAME))
    v1 = registry.publish(with_version(STUDENT.read_bytes(), "s-1"), Lineage(data={"examples": 397}), {"ap50": 0.86})
    v2 = registry.publish(with_version(STUDENT.read_bytes(), "s-2"), Lineage(parent="s-1"))
    assert registry.current_version() == "s-2" and reader.current().version == "s-2"
    assert onnx_metadata(reader.fetch(v2))["pedstream_version"] == "s-2"
    listed = registry.versions()
    assert [v["version"] for v in listed] == ["s-1", "s-2"] and listed[1]["parent"] == "s-1" and listed[0]["metrics"] == {"ap50": 0.86}
    assert registry.rollback().version == "s-1" and registry.current_version() == "s-1"
    with pytest.raises(Exception, match="already exists"):
        registry.store(with_version(STUDENT.read_bytes(), "s-1"))
    # tampered bytes: the sha256 no longer matches
    registry.client.set(registry.keys.onnx("s-1"), STUDENT.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(VerificationError, match="sha256"):
        reader.fetch(v1)
    # signed by another key: refused by this public key
    init_keys(tmp_path / "other")
    other = Registry(registry.client, registry.keys, Signer.load(tmp_path / "other" / PRIVATE_NAME))
    foreign = other.store(with_version(STUDENT.read_bytes(), "s-foreign"))
    with pytest.raises(VerificationError, match="signature"):
        reader.fetch(foreign)
    rejected = registry.store(with_version(STUDENT.read_bytes(), "s-bad"), state="rejected", reason="lost 5 AP on cam-2")
    with pytest.raises(Exception, match="rejected"):
        registry.make_current(rejected.version)


def _start_agent(
    model: Path,
    broker: str,
    topics: Topics,
    redis_url: str,
    public_key: Path,
    home: Path,
    agent_id: str,
    group: str | None = None,
) -> AgentProcess:
    home.mkdir(parents=True, exist_ok=True)
    cameras = home / f"{agent_id}-cameras.yaml"
    # these tests are about swaps, not shedding: a deadline no loaded CI machine misses
    cameras.write_text(yaml.safe_dump({"cameras": [{"id": "cam", "source": "unused.avi", "detect": {"deadline_ms": 10000}}]}))
    agent = AgentProcess(
        model, broker, topics, home, agent_id, threads=1, batch=2, group=group, redis_url=redis_url, public_key=public_key, cameras=cameras
    )
    return agent.start()


def _wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _serving(registry: Registry, agent_id: str) -> str | None:
    return registry.agents().get(agent_id, {}).get("serving")


class DetectionsWatch(RecordWatch[Detections]):
    """The detections topic read from the start in a thread, so a test can wait on what arrived."""

    def __init__(self, broker: str, topics: Topics) -> None:
        super().__init__(broker, topics, topics.detections, Detections)

    def versions(self) -> set[str]:
        return {d.model_version for d in self.snapshot()}


def test_agent_hot_swaps_refuses_tampered_and_rolls_back_without_losing_frames(
    broker: str,
    redis_url: str,
    registry: Registry,
    keys: Path,
    shared_models: Path,
    vtest: str,
    tmp_path: Path,
) -> None:
    topics = Topics(registry.keys.prefix.split(":")[0])
    ensure_topics(broker, topics.all())
    registry.publish(with_version(STUDENT.read_bytes(), "s-first"))
    agent = _start_agent(shared_models / "ssdlite_pedestrian.onnx", broker, topics, redis_url, keys / PUBLIC_NAME, tmp_path, "swap-a")
    watch = DetectionsWatch(broker, topics)
    frames = 150
    camera = threading.Thread(
        target=publish_frames, args=(broker, topics, {"id": "cam", "source": vtest, "max_frames": frames, "fps": 10, "realtime": True})
    )
    try:
        _wait_for(lambda: _serving(registry, "swap-a") == "s-first", 60, "the agent to load the current version at start")
        camera.start()
        _wait_for(lambda: "s-first" in watch.versions(), 60, "detections by s-first")
        registry.publish(with_version(STUDENT.read_bytes(), "s-second"), Lineage(parent="s-first"))
        _wait_for(lambda: "s-second" in watch.versions(), 20, "detections by s-second")
        # a second agent (its own consumer group) started now loads the current version, not its --model
        late = _start_agent(
            shared_models / "ssdlite_pedestrian.onnx",
            broker,
            topics,
            redis_url,
            keys / PUBLIC_NAME,
            tmp_path / "late",
            "swap-b",
            group=f"late-{uuid.uuid4().hex[:6]}",
        )
        _wait_for(lambda: _serving(registry, "swap-b") == "s-second", 60, "the late agent to load the current version")
        tampered = registry.store(with_version(STUDENT.read_bytes(), "s-tampered"))
        registry.client.set(registry.keys.onnx("s-tampered"), b"not the signed bytes")
        registry.make_current(tampered.version)
        _wait_for(lambda: "refused" in registry.agents().get("swap-a", {}), 20, "the refusal report")
        status = registry.agents()["swap-a"]
        assert status["serving"] == "s-second" and status["refused"]["version"] == "s-tampered"
        assert "sha256" in status["refused"]["reason"]
        registry.rollback()  # s-tampered -> s-second: already serving; once more -> s-first
        registry.rollback()
        _wait_for(
            lambda: _serving(registry, "swap-a") == _serving(registry, "swap-b") == "s-first", 20, "the rollback to s-first on both agents"
        )
        camera.join(60)
        _wait_for(lambda: len({d.seq for d in watch.records if d.agent_id == "swap-a"}) >= frames, 60, "every frame's detections")
    finally:
        stop(agent)
        if "late" in locals():
            stop(late)
        watch.close()
    ordered = sorted({d.seq: d for d in watch.records if d.agent_id == "swap-a"}.values(), key=lambda d: d.seq)
    assert [d.seq for d in ordered] == list(range(frames))  # no frame lost across three swaps
    assert not [d.seq for d in ordered if d.skipped is not None]  # and none shed
    versions = [d.model_version for d in ordered]
    assert "s-tampered" not in versions and versions[-1] == "s-first"
    switch = versions.index("s-second")
    assert set(versions[:switch]) == {"s-first"}  # every frame names the model that made it


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_restart_mid_stream_does_not_stop_detection(broker: str, keys: Path, shared_models: Path, vtest: str, tmp_path: Path) -> None:
    port = free_loopback_port()
    url = f"redis://127.0.0.1:{port}"

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(lambda: _answers(url), 10, "redis-server")
        return proc

    redis_proc = start_redis()
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    registry = Registry(connect_redis(url), ModelKeys.for_topics(topics.prefix), Signer.load(keys / PRIVATE_NAME))
    registry.publish(with_version(STUDENT.read_bytes(), "r-1"))
    agent = _start_agent(shared_models / "ssdlite_pedestrian.onnx", broker, topics, url, keys / PUBLIC_NAME, tmp_path, "redis-a")
    watch = DetectionsWatch(broker, topics)
    frames = 100
    try:
        _wait_for(lambda: _serving(registry, "redis-a") == "r-1", 60, "the agent to load r-1")
        camera = threading.Thread(
            target=publish_frames, args=(broker, topics, {"id": "cam", "source": vtest, "max_frames": frames, "fps": 10, "realtime": True})
        )
        camera.start()
        _wait_for(lambda: "r-1" in watch.versions(), 60, "detections by r-1")
        redis_proc.terminate()
        redis_proc.wait(10)
        during = len(watch.records)
        _wait_for(lambda: len(watch.records) >= during + 10, 20, "detection to go on without Redis")
        redis_proc = start_redis()  # an empty Redis (it keeps nothing on disk): publish again
        registry = Registry(connect_redis(url), ModelKeys.for_topics(topics.prefix), Signer.load(keys / PRIVATE_NAME))
        registry.publish(with_version(STUDENT.read_bytes(), "r-2"))
        _wait_for(lambda: _serving(registry, "redis-a") == "r-2", 30, "the agent to reconnect and swap to r-2")
        camera.join(60)
        _wait_for(lambda: len({d.seq for d in watch.records}) >= frames, 60, "every frame's detections")
    finally:
        stop(agent)
        watch.close()
        redis_proc.terminate()
        redis_proc.wait(10)
    assert {d.seq for d in watch.records} == set(range(frames))
    assert {"r-1", "r-2"} <= watch.versions()


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False
