"""`pedstream stack`, `camera`, `frames watch`, `dead-letters` and `bench ingest` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from deploy.stack import free_loopback_port, pid_alive
from streams.topics import Topics

pytestmark = pytest.mark.integration


def pedstream(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def closed_port() -> int:
    return free_loopback_port()  # free: nobody listens on it


def test_stack_starts_its_own_redis_when_none_answers(tmp_path: Path) -> None:
    env = {"PEDSTREAM_HOME": str(tmp_path), "REDIS_URL": f"redis://127.0.0.1:{closed_port()}", "PEDSTREAM_BOOTSTRAP": ""}
    up = pedstream("stack", "up", "--json", env=env)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    try:
        assert info["up"] and info["started"] and info["redis"]["started_by_stack"]
        assert info["kafka"]["bootstrap"].startswith("127.0.0.1:") and info["redis"]["url"].startswith("redis://pedstream-trainer:")
        assert "@127.0.0.1:" in info["redis"]["url"] and "@127.0.0.1:" in info["redis"]["edge_url"]
        assert redis.Redis.from_url(info["redis"]["url"]).ping()
        _check_roles(info["redis"]["url"], info["redis"]["edge_url"])
        again = json.loads(pedstream("stack", "up", "--json", env=env).stdout)
        assert not again["started"] and again["kafka"]["pid"] == info["kafka"]["pid"]
        status = pedstream("stack", "status", env=env)
        assert status.returncode == 0 and "stack up" in status.stdout
    finally:
        down = pedstream("stack", "down", env=env)
    assert down.returncode == 0 and "stack stopped" in down.stdout
    assert not pid_alive(info["kafka"]["pid"]) and not pid_alive(info["redis"]["pid"])
    after = pedstream("stack", "status", "--json", env=env)
    assert after.returncode == 1 and json.loads(after.stdout)["up"] is False


def _check_roles(trainer_url: str, edge_url: str) -> None:
    """The stack's own Redis: the trainer user publishes, the edge user reads models and writes only
    agent status, and nobody gets in without a password."""
    plain = trainer_url.split("@", 1)[1]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"redis://{plain}").ping()
    trainer, edge = redis.Redis.from_url(trainer_url), redis.Redis.from_url(edge_url)
    trainer.hset("p:models:orders", "*", "{}")
    trainer.set("p:models:current", "v-1")
    trainer.publish("p:models:announce", "{}")
    assert edge.hgetall("p:models:orders") == {b"*": b"{}"} and edge.get("p:models:current") == b"v-1"
    edge.hset("p:models:agents", "detector-1", "{}")
    for forbidden in (
        lambda: edge.set("p:models:current", "rogue"),
        lambda: edge.hset("p:models:orders", "*", "rogue"),
        lambda: edge.publish("p:models:announce", "rogue"),
        lambda: edge.set("p:models:version:v-9:onnx", b"rogue"),
        lambda: edge.get("elsewhere"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    trainer.delete("p:models:orders", "p:models:current", "p:models:agents")


def test_stack_up_after_down_takes_the_same_ports_and_keeps_the_registry(tmp_path: Path) -> None:
    env = {"PEDSTREAM_HOME": str(tmp_path), "REDIS_URL": f"redis://127.0.0.1:{closed_port()}", "PEDSTREAM_BOOTSTRAP": ""}
    first = json.loads(pedstream("stack", "up", "--json", env=env).stdout)
    try:
        redis.Redis.from_url(first["redis"]["url"]).set("pedstream:models:test-registry", "kept")
    finally:
        assert pedstream("stack", "down", env=env).returncode == 0
    assert not pid_alive(first["redis"]["pid"])
    second = json.loads(pedstream("stack", "up", "--json", env=env).stdout)
    try:
        assert second["started"] and second["kafka"]["pid"] != first["kafka"]["pid"]
        # running agents reconnect to the same addresses by themselves
        assert second["kafka"]["bootstrap"] == first["kafka"]["bootstrap"] and second["redis"]["url"] == first["redis"]["url"]
        assert redis.Redis.from_url(second["redis"]["url"]).get("pedstream:models:test-registry") == b"kept"  # AOF under the stack home
        _check_roles(second["redis"]["url"], second["redis"]["edge_url"])  # the same users again, passwords kept
    finally:
        assert pedstream("stack", "down", env=env).returncode == 0


def test_stack_uses_the_running_redis_and_commands_find_it(tmp_path: Path, redis_url: str, vtest: str) -> None:
    prefix = Topics(f"t{os.getpid()}cli").prefix
    env = {"PEDSTREAM_HOME": str(tmp_path), "REDIS_URL": redis_url, "PEDSTREAM_TOPIC_PREFIX": prefix, "PEDSTREAM_BOOTSTRAP": ""}
    info = json.loads(pedstream("stack", "up", "--json", env=env).stdout)
    try:
        assert info["redis"]["url"] == redis_url and not info["redis"]["started_by_stack"]
        cam = pedstream("camera", "--source", vtest, "--id", "cli-cam", "--fast", "--fps", "0", "--max-frames", "12", "--json", env=env)
        assert cam.returncode == 0, cam.stderr
        assert json.loads(cam.stdout)[0]["published"] == 12
        watch = pedstream("frames", "watch", "--from-beginning", "--seconds", "8", "--json", env=env)
        assert watch.returncode == 0, watch.stderr
        flow = json.loads(watch.stdout)["cameras"]["cli-cam"]
        assert flow["frames"] == 12 and flow["missing"] == 0 and flow["size"] == "768x576"
        letters = pedstream("dead-letters", "--json", "--timeout", "2", env=env)
        assert letters.returncode == 0 and json.loads(letters.stdout) == []
    finally:
        pedstream("stack", "down", env=env)


def test_bad_camera_config_exits_non_zero_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text("cameras:\n  - id: a\n    source: x.mp4\n    fps: fast\n")
    result = pedstream("camera", "--config", str(cfg), "--validate-config")
    assert result.returncode == 2 and "cameras[0].fps" in result.stderr


def test_bench_ingest_prints_the_documented_json(broker: str, topics: Topics, vtest: str) -> None:
    result = pedstream(
        "bench",
        "ingest",
        "--cameras",
        "2",
        "--fps",
        "5",
        "--seconds",
        "4",
        "--json",
        "--source",
        vtest,
        "--bootstrap",
        broker,
        "--topic-prefix",
        topics.prefix,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"offered_fps", "achieved_fps", "bytes_per_s", "publish_latency_ms", "per_camera"} <= set(out)
    assert out["offered_fps"] == 10 and set(out["per_camera"]) == {"bench-0", "bench-1"}
    assert out["achieved_fps"] > 0 and out["publish_latency_ms"]["p99"] >= out["publish_latency_ms"]["p50"] > 0
