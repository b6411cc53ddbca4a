"""The signed model registry in the real Redis and hot swap in a real detector agent on the real
broker: a published version is served with no frame lost; a camera given its own model is served
it while the others keep the general one; tampered, unsigned, replayed and older versions are
refused at the edge; rollback orders restore what was served; a Redis restart mid-stream does not
stop detection."""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from deploy.agent_process import AgentProcess
from deploy.stack import free_loopback_port, lock_redis, start_redis
from detectors.detector import BUNDLED_MODELS, onnx_metadata, with_version
from streams.bus import RecordWatch, ensure_topics
from streams.model_channel import ModelKeys, ModelReader, ModelWatcher, connect_redis
from streams.polling import wait_until
from streams.records import Detections
from streams.signing import PRIVATE_NAME, PUBLIC_NAME, Signer, VerificationError, Verifier, init_keys
from streams.topics import Topics
from tests.integration.test_detector_agent import publish_frames, stop
from trainer.registry import Lineage, Registry

pytestmark = pytest.mark.integration
STUDENT = BUNDLED_MODELS / "student.onnx"  # int8, as the edge serves it
STUDENT_FLOAT = BUNDLED_MODELS / "student-float.onnx"  # the same network before quantization (its weights are plain tensors)


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
    assert v2.serial > v1.serial and v2.number > v1.number
    with pytest.raises(Exception, match="older than s-2.*rollback"):
        registry.make_current("s-1")  # a release order never goes back
    back = registry.rollback()
    assert back.version == "s-1" and back.order == "rollback" and registry.current_version() == "s-1"
    with pytest.raises(Exception, match="served only s-1"):
        registry.rollback()
    # a camera's own model: only that camera's order changes; rolling the camera back past its first
    # own model gives it the general model's version
    own = registry.store(with_version(STUDENT.read_bytes(), "cam-9-1"), scope=["cam-9"])
    registry.assign(own.version, ["cam-9"])
    assert registry.serving("cam-9") == "cam-9-1" and registry.serving("cam-1") == "s-1" and registry.current_version() == "s-1"
    assert registry.rollback("cam-9").version == "s-1" and registry.serving("cam-9") == "s-1"
    assert [o.version for o in registry.history("cam-9")] == ["cam-9-1", "s-1"]
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
    assert rejected.signature is None  # only approved versions are signed
    with pytest.raises(Exception, match="rejected"):
        registry.make_current(rejected.version)
    with pytest.raises(VerificationError, match="unsigned"):
        reader.fetch(rejected)
    # the signature covers the scope and serial, not just the bytes: an order re-scoped is refused
    widened = v2.model_copy(update={"scope": ["cam-1", "cam-2"]})
    with pytest.raises(VerificationError, match="signature"):
        reader.fetch(widened)


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
    relaxed = {"deadline_ms": 10000}
    cameras.write_text(yaml.safe_dump({"cameras": [{"id": c, "source": "unused.avi", "detect": relaxed} for c in ("cam", "cam-b")]}))
    agent = AgentProcess(
        model, broker, topics, home, agent_id, threads=1, batch=2, group=group, redis_url=redis_url, public_key=public_key, cameras=cameras
    )
    return agent.start()


def _serving(registry: Registry, agent_id: str) -> str | None:
    return registry.agents().get(agent_id, {}).get("serving")


class DetectionsWatch(RecordWatch[Detections]):
    """The detections topic read from the start in a thread, so a test can wait on what arrived."""

    def __init__(self, broker: str, topics: Topics) -> None:
        super().__init__(broker, topics, topics.detections, Detections)

    def versions(self) -> set[str]:
        return {d.model_version for d in self.snapshot()}


def test_agent_hot_swaps_per_camera_refuses_bad_orders_and_rolls_back_without_losing_frames(
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
    first = registry.publish(with_version(STUDENT.read_bytes(), "s-first"))
    agent = _start_agent(shared_models / "ssdlite_pedestrian.onnx", broker, topics, redis_url, keys / PUBLIC_NAME, tmp_path, "swap-a")
    watch = DetectionsWatch(broker, topics)
    frames = 120

    def stream(camera_id: str, count: int) -> threading.Thread:
        spec = {"id": camera_id, "source": vtest, "max_frames": count, "fps": 10, "realtime": True}
        return threading.Thread(target=publish_frames, args=(broker, topics, spec))

    camera = stream("cam", frames)
    second_camera = stream("cam-b", 70)

    def versions_of(camera_id: str) -> list[str]:
        return [d.model_version for d in sorted(watch.snapshot(), key=lambda d: d.seq) if d.camera_id == camera_id]

    def refusal(version: str) -> str:
        refused = registry.agents().get("swap-a", {}).get("refused") or {}
        return str(refused.get("reason")) if refused.get("version") == version else ""

    try:
        wait_until(lambda: _serving(registry, "swap-a") == "s-first", 60, "the agent to load the current version at start")
        camera.start()
        wait_until(lambda: "s-first" in watch.versions(), 60, "detections by s-first")
        registry.publish(with_version(STUDENT.read_bytes(), "s-second"), Lineage(parent="s-first"))
        wait_until(lambda: "s-second" in watch.versions(), 20, "detections by s-second")
        # a camera that appears now, with no model of its own, is served the general model from its first frame
        second_camera.start()
        wait_until(lambda: len(versions_of("cam-b")) >= 5, 30, "cam-b's first detections")
        assert set(versions_of("cam-b")[:5]) == {"s-second"}
        # cam-b gets a model of its own; cam keeps the general one
        own = registry.store(with_version(STUDENT.read_bytes(), "cam-b-own"), scope=["cam-b"])
        registry.assign(own.version, ["cam-b"])
        wait_until(lambda: "cam-b-own" in versions_of("cam-b"), 20, "cam-b's own model")
        # a second agent (its own consumer group) started now loads every order in force, not its --model
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
        wait_until(lambda: _serving(registry, "swap-b") == "s-second", 60, "the late agent to load the current version")
        wait_until(
            lambda: registry.agents()["swap-b"].get("cameras", {}).get("cam-b", {}).get("version") == "cam-b-own", 30, "its cam-b model"
        )
        # orders an agent must refuse: tampered bytes, an unsigned (rejected) version, a replayed old order
        tampered = registry.store(with_version(STUDENT.read_bytes(), "s-tampered"))
        registry.client.set(registry.keys.onnx("s-tampered"), b"not the signed bytes")
        registry.make_current(tampered.version)
        wait_until(lambda: "sha256" in refusal("s-tampered"), 20, "the refusal of tampered bytes")
        rejected = registry.store(with_version(STUDENT.read_bytes(), "s-rejected"), state="rejected", reason="failed the gate")
        registry.client.publish(registry.keys.channel, rejected.model_copy(update={"serial": 10**15}).model_dump_json())
        wait_until(lambda: "unsigned" in refusal("s-rejected"), 20, "the refusal of an unsigned version")
        registry.client.publish(registry.keys.channel, first.model_dump_json())  # s-first's old, validly signed order
        wait_until(lambda: "not newer" in refusal("s-first"), 20, "the refusal of a replayed order")
        assert _serving(registry, "swap-a") == "s-second"
        registry.rollback()  # s-tampered -> s-second: already serving; once more -> s-first
        registry.rollback()
        wait_until(
            lambda: _serving(registry, "swap-a") == _serving(registry, "swap-b") == "s-first", 20, "the rollback to s-first on both agents"
        )
        assert registry.agents()["swap-a"]["cameras"]["cam-b"]["version"] == "cam-b-own"  # its own model is not the general one
        camera.join(60)
        second_camera.join(60)
        wait_until(lambda: len(_seqs(watch, "swap-a", "cam")) >= frames, 60, "every frame")
    finally:
        stop(agent)
        if "late" in locals():
            stop(late)
        watch.close()
    ordered = sorted({d.seq: d for d in watch.records if d.agent_id == "swap-a" and d.camera_id == "cam"}.values(), key=lambda d: d.seq)
    assert [d.seq for d in ordered] == list(range(frames))  # no frame lost across the swaps
    assert not [d.seq for d in ordered if d.skipped is not None]  # and none shed
    versions = [d.model_version for d in ordered]
    assert not {"s-tampered", "s-rejected", "cam-b-own"} & set(versions) and versions[-1] == "s-first"
    switch = versions.index("s-second")
    assert set(versions[:switch]) == {"s-first"}  # every frame names the model that made it
    b_versions = versions_of("cam-b")
    assert len(_seqs(watch, "swap-a", "cam-b")) == 70
    assert b_versions[-1] == "cam-b-own" and "s-first" not in b_versions[b_versions.index("cam-b-own") :]


def _seqs(watch: DetectionsWatch, agent_id: str, camera_id: str) -> set[int]:
    return {d.seq for d in watch.records if d.agent_id == agent_id and d.camera_id == camera_id}


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
        wait_until(lambda: _answers(url), 10, "redis-server")
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
        wait_until(lambda: _serving(registry, "redis-a") == "r-1", 60, "the agent to load r-1")
        camera = threading.Thread(
            target=publish_frames, args=(broker, topics, {"id": "cam", "source": vtest, "max_frames": frames, "fps": 10, "realtime": True})
        )
        camera.start()
        wait_until(lambda: "r-1" in watch.versions(), 60, "detections by r-1")
        redis_proc.terminate()
        redis_proc.wait(10)
        during = len(watch.records)
        wait_until(lambda: len(watch.records) >= during + 10, 20, "detection to go on without Redis")
        redis_proc = start_redis()  # an empty Redis (it keeps nothing on disk): publish again
        registry = Registry(connect_redis(url), ModelKeys.for_topics(topics.prefix), Signer.load(keys / PRIVATE_NAME))
        registry.publish(with_version(STUDENT.read_bytes(), "r-2"))
        wait_until(lambda: _serving(registry, "redis-a") == "r-2", 30, "the agent to reconnect and swap to r-2")
        camera.join(60)
        wait_until(lambda: len({d.seq for d in watch.records}) >= frames, 60, "every frame's detections")
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


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_an_edge_user_follows_the_registry_and_cannot_change_it(keys: Path, tmp_path: Path) -> None:
    """On a Redis with the role users (as `pedstream stack` makes them): the trainer user publishes
    and signs orders; the edge user's watcher receives them, fetches and verifies the bytes, reports
    its status, and cannot write an order of its own."""
    proc, url = start_redis(tmp_path)
    try:
        roles = lock_redis(tmp_path, url)
        model_keys = ModelKeys("edgetest:models")
        registry = Registry(connect_redis(roles["trainer"]), model_keys, Signer.load(keys / PRIVATE_NAME))
        registry.publish(with_version(STUDENT.read_bytes(), "e-1"))
        reader = ModelReader(connect_redis(roles["edge"]), model_keys, Verifier.load(keys / PUBLIC_NAME))
        received: list[str] = []
        watcher = ModelWatcher(roles["edge"], model_keys, lambda order: received.append(order.version)).start()
        try:
            wait_until(lambda: received == ["e-1"], 10, "the order in force")
            registry.publish(with_version(STUDENT.read_bytes(), "e-2"))
            wait_until(lambda: received == ["e-1", "e-2"], 10, "the announced order")
        finally:
            watcher.stop()
        assert onnx_metadata(reader.fetch(reader.orders()["*"]))["pedstream_version"] == "e-2"
        reader.report("edge-1", {"serving": "e-2"})
        assert registry.agents()["edge-1"]["serving"] == "e-2"
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.client.hset(model_keys.orders, "*", registry.orders()["*"].model_dump_json())
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_agent_rolls_a_camera_back_on_its_own_when_agreement_with_its_teacher_falls(
    broker: str, registry: Registry, redis_url: str, keys: Path, shared_models: Path, vtest: str, tmp_path: Path
) -> None:
    """`detect --teacher-model`: a camera served the bundled student (agreement with NanoDet about 0.8
    on PETS09-S2L1) gets a broken release ordered on it (the same network with its person heatmap
    turned down: it misses most people); the agent's sampled agreement with the teacher falls, it
    puts the camera back on the good version by itself and reports why in its status."""
    topics = Topics(registry.keys.prefix.split(":")[0])
    ensure_topics(broker, topics.all())
    registry.publish(with_version(STUDENT.read_bytes(), "ar-good"))
    home = tmp_path / "agent"
    home.mkdir()
    cameras = home / "cameras.yaml"
    cameras.write_text(yaml.safe_dump({"cameras": [{"id": "yard", "source": "unused.avi", "detect": {"deadline_ms": 10000}}]}))
    teacher = ["--teacher-model", str(shared_models / "nanodet.onnx"), "--agreement-every-s", "0.3"]
    agent = AgentProcess(
        shared_models / "ssdlite_pedestrian.onnx", broker, topics, home, "ar-a", threads=1, batch=2, redis_url=redis_url,
        public_key=keys / PUBLIC_NAME, cameras=cameras, extra=teacher,
    ).start()  # fmt: skip
    watch = DetectionsWatch(broker, topics)
    yard = {"id": "yard", "source": vtest, "max_frames": 400, "fps": 10, "realtime": True}
    camera = threading.Thread(target=publish_frames, args=(broker, topics, yard), daemon=True)
    status = lambda: registry.agents().get("ar-a", {})  # noqa: E731
    try:
        wait_until(lambda: _serving(registry, "ar-a") == "ar-good", 60, "the agent to serve ar-good")
        camera.start()
        wait_until(lambda: len([d for d in watch.snapshot() if d.model_version == "ar-good"]) >= 60, 60, "6 s of ar-good on the camera")
        bad = registry.store(with_version(_turned_down(STUDENT_FLOAT.read_bytes()), "ar-bad"), scope=["yard"])
        registry.assign(bad.version, ["yard"])
        wait_until(lambda: "yard" in (status().get("reverted") or {}), 60, "the agent to roll the camera back")
        reason = status()["reverted"]["yard"]
        scopes = lambda: status().get("cameras") or {}  # noqa: E731 - scope -> what serves it; a camera back on the general model has none
        wait_until(lambda: (scopes().get("yard") or scopes().get("*") or {}).get("version") == "ar-good", 20, "ar-good on the camera again")
        seen = len(watch.snapshot())
        wait_until(lambda: len(watch.snapshot()) >= seen + 10, 30, "detections after the rollback")
    finally:
        stop(agent)
        watch.close()
    assert "agreement with the teacher fell" in reason and "ar-bad" in reason, reason
    versions = [d.model_version for d in sorted(watch.snapshot(), key=lambda d: d.seq) if d.camera_id == "yard"]
    first_bad = versions.index("ar-bad")
    assert set(versions[:first_bad]) == {"ar-good"} and versions[-1] == "ar-good"  # good -> bad -> good again, on its own
    assert "ar-bad" not in versions[versions.index("ar-good", first_bad) :]


def _turned_down(student: bytes, shift: float = 4.0) -> bytes:
    """A broken release: the student with its person heatmap's logits lowered (scores fall below
    the publish threshold, so it misses most people)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(student)
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == "heatmap.1.bias":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) - shift, tensor.name))
            return model.SerializeToString()
    raise AssertionError("the student has no heatmap.1.bias")
