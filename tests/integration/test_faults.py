"""``bench faults`` at a small size: real broker, real detector agent processes, one fault each; every
frame counted from capture to detection by (camera, seq)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from deploy import stack
from deploy.agent_process import AgentProcess
from deploy.bench import faults
from deploy.stack import start_tansu
from detectors.agent import SHUTDOWN_GRACE_S
from streams.bus import ensure_topics, make_producer
from streams.endpoints import BOOTSTRAP_ENV, resolve
from streams.errors import StackError
from streams.kafka_settings import DURABLE_FETCH_MAX_WAIT_MS, FETCH_MAX_WAIT_ENV, consumer_settings
from streams.topics import Topics

pytestmark = pytest.mark.integration


def test_two_agents_split_the_cameras_and_a_killed_one_loses_no_frame(broker: str, vtest: str, tmp_path: Path) -> None:
    """One camera per partition, so both agents serve cameras; the serving one killed, the other one
    takes its cameras over, and every frame is accounted for (detected, or shed as stale)."""
    # 20 s: the kill comes at 40%, and the takeover takes ~9 s (session timeout + rebalance) before
    # frames captured after the kill are detected, which recovery_s waits for
    rig = faults.FaultRig(broker, "student", vtest, tmp_path, cameras=8, fps=2.0, seconds=20.0)
    result = faults.run(rig, ["detector-killed"], progress=lambda _m: None)["scenarios"][0]
    assert result["checks"] == {"survivor_running": True, "victim_had_cameras": True, "survivor_took_them_over": True}, result
    assert "before the fault 2 agent(s) served cameras" in result["fault"], result
    assert result["frames_sent"] >= 8 * 2 * 8
    assert result["lost"] == 0, result
    assert result["recovery_s"] is not None and 0 < result["recovery_s"] < 20, result
    assert result["frames_detected"] + result["frames_shed"] == result["frames_sent"]


def test_a_redis_restart_keeps_the_agent_detecting_and_a_later_version_reaches_it(broker: str, vtest: str, tmp_path: Path) -> None:
    out = faults.run(
        faults.FaultRig(broker, "student", vtest, tmp_path, cameras=2, seconds=9.0), ["redis-restart"], progress=lambda _m: None
    )
    result = out["scenarios"][0]
    assert all(result["checks"].values()), result
    assert result["lost"] == 0 and result["recovery_s"] is not None and result["recovery_s"] < 15, result


def _has_s3rver() -> bool:
    try:
        return bool(stack.s3rver_command())
    except StackError:
        return False


needs_s3rver = pytest.mark.skipif(
    not _has_s3rver(), reason="s3rver (Node.js) is not installed: `npm ci --prefix deploy/durable` (make venv does it where npm exists)"
)


@needs_s3rver
def test_stack_up_durable_keeps_the_broker_s_records_across_down_and_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setenv(FETCH_MAX_WAIT_ENV, "")  # recorded as absent: restored so after the test
    monkeypatch.delenv(FETCH_MAX_WAIT_ENV)
    home = tmp_path / "home"
    state, _ = stack.up(home, durable=True)
    try:
        assert state.store_url and stack.status(home)["kafka"]["storage"].startswith("durable")  # type: ignore[index]
        producer = make_producer(state.bootstrap)
        for i in range(30):
            producer.send("durable-check", key=str(i).encode(), value=bytes(50_000), partition=0)
        producer.flush()
        producer.close()
        stack.down(home)
        again, started = stack.up(home, durable=True)
        assert started and again.bootstrap == state.bootstrap and again.store_url == state.store_url  # same ports
        consumer = KafkaConsumer(**consumer_settings(again.bootstrap, None, fetch_max_wait_ms=DURABLE_FETCH_MAX_WAIT_MS))
        consumer.assign([TopicPartition("durable-check", 0)])
        consumer.seek_to_beginning()
        keys: set[bytes] = set()
        deadline = time.monotonic() + 20
        while len(keys) < 30 and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=500).values():
                keys |= {m.key for m in messages}
        consumer.close()
        assert len(keys) == 30
        assert resolve(home=home).bootstrap == again.bootstrap and os.environ.get(FETCH_MAX_WAIT_ENV) == str(DURABLE_FETCH_MAX_WAIT_MS)
    finally:
        stack.down(home)


@needs_s3rver
def test_the_durable_store_never_keeps_a_partial_upload(tmp_path: Path) -> None:
    """A broker killed while it uploads must leave the object it was replacing whole: plain s3rver
    kept the cut-short body (and tansu then failed on it forever); the launcher writes atomically."""
    store, url = stack.start_store(tmp_path)
    try:
        object_url = f"{url}/{stack.STORE_BUCKET}/segment"
        with urllib.request.urlopen(urllib.request.Request(object_url, data=b"complete-version", method="PUT"), timeout=10) as answer:
            assert answer.status == 200
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:  # dies 10 bytes into 1000
            client.sendall(f"PUT /{stack.STORE_BUCKET}/segment HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n".encode())
            client.sendall(b"x" * 10)
            time.sleep(0.3)
        time.sleep(0.5)
        with urllib.request.urlopen(object_url, timeout=10) as answer:
            assert answer.read() == b"complete-version"
        leftovers = [p.name for p in (tmp_path / "broker-store").rglob("*") if ".upload-" in p.name]
        assert leftovers == []
    finally:
        store.kill()
        store.wait(10)


@needs_s3rver
def test_the_durable_store_lists_what_was_written_last(tmp_path: Path) -> None:
    """The launcher keeps objects' metadata in memory (a list read every object's files from disk);
    a list after an object is replaced or deleted must show the new size, or nothing."""
    store, url = stack.start_store(tmp_path)

    def call(method: str, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"{url}/{stack.STORE_BUCKET}/{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read()

    def sizes() -> dict[str, int]:
        text = call("GET", "?list-type=2&prefix=p/").decode()
        return {key: int(size) for key, size in re.findall(r"<Key>([^<]+)</Key>.*?<Size>(\d+)</Size>", text, re.S)}

    try:
        call("PUT", "p/a", b"12345")
        call("PUT", "p/b", b"1")
        assert sizes() == {"p/a": 5, "p/b": 1}
        assert sizes() == {"p/a": 5, "p/b": 1}  # from memory now
        call("PUT", "p/a", b"1234567890")
        call("DELETE", "p/b")
        assert sizes() == {"p/a": 10}
        assert call("GET", "p/a") == b"1234567890"
    finally:
        store.kill()
        store.wait(10)


@needs_s3rver
def test_a_durable_broker_killed_mid_stream_loses_no_frame(vtest: str, tmp_path: Path) -> None:
    """SIGKILL the durable broker under a live stream, start it again on its store: every frame is
    detected or shed, although tansu's S3 engine loses the writes it acknowledged last (the cameras
    send those frames again and the agent its answers, after the outage)."""
    rig = faults.FaultRig("127.0.0.1:1", "student", vtest, tmp_path, cameras=2, seconds=10.0)  # it starts its own broker
    result = faults.run(rig, ["broker-restart"], progress=lambda _m: None)["scenarios"][0]
    assert all(result["checks"].values()), result
    assert result["lost"] == 0, result
    assert result["recovery_s"] is not None and result["recovery_s"] < 15, result


def test_bad_input_is_dead_lettered_with_reasons_and_every_good_frame_detected(broker: str, vtest: str, tmp_path: Path) -> None:
    out = faults.run(faults.FaultRig(broker, "student", vtest, tmp_path, cameras=2, seconds=6.0), ["bad-input"], progress=lambda _m: None)
    result = out["scenarios"][0]
    assert all(result["checks"].values()), result
    assert result["dead_lettered"] == len(faults.BAD_INPUTS) and result["lost"] == 0, result
    assert "oversized frame: 30000x20000" in result["fault"] and "unsupported schema_version 99" in result["fault"]
    assert "corrupt JPEG" in result["fault"]


def test_an_agent_stops_on_sigterm_within_seconds_while_the_broker_is_down(tmp_path: Path) -> None:
    broker_proc, bootstrap = start_tansu(tmp_path / "stack")
    topics = Topics("sigterm")
    ensure_topics(bootstrap, topics.all())
    agent = AgentProcess("student", bootstrap, topics, tmp_path, "sigterm-agent").start()
    try:
        deadline = time.monotonic() + 60
        while "serving" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)
        broker_proc.kill()
        broker_proc.wait(10)
        time.sleep(5)  # the agent's clients now fail on every attempt
        assert agent.process is not None and agent.alive()
        asked = time.monotonic()
        agent.process.send_signal(signal.SIGTERM)
        agent.process.wait(15)
        took = time.monotonic() - asked
    finally:
        agent.stop(signal.SIGKILL)
        broker_proc.kill()
    log = agent.log()
    assert took < SHUTDOWN_GRACE_S + 3, log[-3000:]
    # one line per kind of client failure per minute, not one per attempt
    assert log.count("Unable connect to node") <= 2 and log.count("Unable to update metadata") <= 2, log[-3000:]


def test_bad_models_are_refused_with_reasons_while_the_agent_serves_and_detects(broker: str, vtest: str, tmp_path: Path) -> None:
    out = faults.run(faults.FaultRig(broker, "student", vtest, tmp_path, cameras=2, seconds=8.0), ["bad-models"], progress=lambda _m: None)
    result = out["scenarios"][0]
    assert all(result["checks"].values()), result
    assert result["lost"] == 0 and "NOT REFUSED" not in result["fault"], result


def test_a_killed_ray_trainer_is_restarted_and_the_cycle_ends_with_its_verdict(
    broker: str, vtest: str, shared_models: Path, tmp_path: Path
) -> None:
    rig = faults.FaultRig(broker, "student", vtest, tmp_path, models_dir=shared_models, ray_port=28000, cycle_updates=40, cycle_examples=16)
    result = faults.run(rig, ["trainer-killed"], progress=lambda _m: None)["scenarios"][0]
    assert result["checks"] == {"trainer_killed": True, "trainer_restarted": True, "cycle_finished": True}, result
    assert result["recovery_s"] is not None and "cycle cam-0-" in result["fault"], result
