"""docker-compose.yml, checked without a Docker engine: a real Compose implementation parses it,
every pedstream command in it exists in the CLI, every pedstream setting it sets is read by the
code, the Kafka client settings fit the Apache Kafka broker it configures, Prometheus scrapes every
process that serves metrics, and the Grafana dashboard queries only metrics that some role exports."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from deploy.cli import build_parser
from streams.errors import ConfigError
from streams.kafka_settings import (
    MAX_MESSAGE_BYTES,
    MIN_INSYNC_ENV,
    REPLICATION_ENV,
    TopicReplication,
    admin_settings,
    consumer_settings,
    producer_settings,
)
from streams.redis_roles import PASSWORD_ENV, redis_server_args

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SOURCES = [p for pkg in ("streams", "detectors", "trainer", "deploy") for p in (ROOT / pkg).rglob("*.py")]
# settings of third-party programs in the images (the Kafka image, Ray), not read by pedstream
THIRD_PARTY = re.compile(r"^(KAFKA_|RAY_|CLUSTER_ID$)")
# Apache Kafka broker defaults for what the compose file does not set
BROKER_GROUP_MIN_SESSION_MS, BROKER_GROUP_MAX_SESSION_MS = 6000, 1_800_000


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """The pedstream command lines a service runs (inside ``sh -c "a && b"`` too)."""
    command = service.get("command") or []
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs Debian's docker-compose (.ci/run installs it)")
def test_a_real_compose_implementation_accepts_the_file(tmp_path: Path) -> None:
    for folder in ("config", "data", "models"):  # the bind mounts an operator provides
        (tmp_path / folder).mkdir()
    (tmp_path / ".env").write_text("".join(f"{variable}=secret-{role}\n" for role, variable in PASSWORD_ENV.items()))
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    run = subprocess.run(["docker-compose", "config", "--services"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert {"kafka", "redis", "camera", "detector", "ray-head", "ray-worker", "trainer"} <= set(run.stdout.split())


def test_redis_users_by_role_are_the_code_s_and_edge_services_log_in_as_the_edge_role(compose: dict[str, Any]) -> None:
    placeholders = {role: f"${{{v}:?set {v} in .env (see .env.example)}}" for role, v in PASSWORD_ENV.items()}
    persistence = ["redis-server", "--appendonly", "yes", "--save", "60", "1000"]
    assert compose["services"]["redis"]["command"] == [*persistence, *redis_server_args(placeholders)]
    assert "pedstream-trainer:" in compose["x-pedstream-env"]["REDIS_URL"]
    for name in ("detector", "dashboard"):
        assert compose["services"][name]["environment"]["REDIS_URL"].startswith("redis://pedstream-edge:"), name
    example = (ROOT / ".env.example").read_text()
    assert all(f"\n{variable}=\n" in example for variable in PASSWORD_ENV.values())


def test_every_pedstream_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    checked = 0
    for name, service in compose["services"].items():
        for argv in _commands(service):
            if argv and argv[0] == "pedstream":
                try:
                    parser.parse_args(argv[1:])
                except SystemExit:
                    pytest.fail(f"service {name}: `{' '.join(argv)}` is not a valid pedstream command")
                checked += 1
    assert checked >= 5


def test_every_setting_a_service_sets_is_read_by_the_code(compose: dict[str, Any]) -> None:
    code = "\n".join(p.read_text() for p in SOURCES)
    for name, service in compose["services"].items():
        for variable in service.get("environment") or {}:
            if THIRD_PARTY.match(variable):
                continue
            assert f'"{variable}"' in code, f"service {name} sets {variable}, which no pedstream code reads"


def test_services_build_from_existing_dockerfiles_and_the_edge_image_installs_only_the_edge_extra(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name
    edge = (ROOT / "deploy" / "Dockerfile.edge").read_text()
    assert '".[edge]"' in edge and "[trainer]" not in edge  # that edge roles run so is tests/unit/test_edge_without_torch.py
    detector = compose["services"]["detector"]
    assert detector["build"]["dockerfile"].endswith("Dockerfile.edge") and "container_name" not in detector  # scalable


def test_kafka_client_settings_fit_the_apache_kafka_broker(compose: dict[str, Any]) -> None:
    broker = compose["services"]["kafka"]["environment"]
    assert broker["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert int(broker["KAFKA_MESSAGE_MAX_BYTES"]) >= MAX_MESSAGE_BYTES
    assert int(broker["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= MAX_MESSAGE_BYTES
    producer = producer_settings("kafka:9092")
    consumer = consumer_settings("kafka:9092", "g")
    assert producer["max_request_size"] <= int(broker["KAFKA_MESSAGE_MAX_BYTES"])
    assert BROKER_GROUP_MIN_SESSION_MS <= consumer["session_timeout_ms"] <= BROKER_GROUP_MAX_SESSION_MS
    assert consumer["heartbeat_interval_ms"] * 3 <= consumer["session_timeout_ms"]
    assert consumer["request_timeout_ms"] > consumer["session_timeout_ms"]
    # every key is a setting kafka-python knows (it would reject an unknown one at construction)
    assert set(producer) <= set(KafkaProducer.DEFAULT_CONFIG)
    assert set(consumer) <= set(KafkaConsumer.DEFAULT_CONFIG)
    assert set(admin_settings("kafka:9092")) <= set(KafkaAdminClient.DEFAULT_CONFIG)
    env = compose["x-pedstream-env"]
    assert env["PEDSTREAM_BOOTSTRAP"] == "kafka:9092,kafka-2:9092,kafka-3:9092" and "@redis:6379/0" in env["REDIS_URL"]


def test_topics_are_replicated_across_the_three_brokers(compose: dict[str, Any]) -> None:
    brokers = [compose["services"][name]["environment"] for name in ("kafka", "kafka-2", "kafka-3")]
    assert sorted(int(b["KAFKA_NODE_ID"]) for b in brokers) == [1, 2, 3]
    assert len({b["CLUSTER_ID"] for b in brokers}) == 1 and all(b["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3 for b in brokers)
    env = compose["x-pedstream-env"]
    assert (int(env["PEDSTREAM_REPLICATION_FACTOR"]), int(env["PEDSTREAM_MIN_INSYNC_REPLICAS"])) == (3, 2)
    assert producer_settings("kafka:9092")["acks"] == "all"  # a write then needs 2 of the 3 copies


def test_replication_settings_are_validated_and_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPLICATION_ENV, "3")
    monkeypatch.setenv(MIN_INSYNC_ENV, "2")
    assert TopicReplication.from_env() == TopicReplication(3, 2)
    assert TopicReplication.from_env().topic_configs() == {"min.insync.replicas": "2"}
    monkeypatch.setenv(MIN_INSYNC_ENV, "4")
    with pytest.raises(ConfigError, match="PEDSTREAM_MIN_INSYNC_REPLICAS=4: must be between 1 and PEDSTREAM_REPLICATION_FACTOR"):
        TopicReplication.from_env()
    monkeypatch.setenv(REPLICATION_ENV, "three")
    with pytest.raises(ConfigError, match="PEDSTREAM_REPLICATION_FACTOR='three': expected a whole number"):
        TopicReplication.from_env()
    monkeypatch.delenv(REPLICATION_ENV)
    monkeypatch.delenv(MIN_INSYNC_ENV)
    assert TopicReplication.from_env() == TopicReplication(1, None) and TopicReplication().topic_configs() == {}


def test_prometheus_scrapes_every_service_that_serves_metrics(compose: dict[str, Any]) -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {(name, sd["port"]) for job in scrape["scrape_configs"] for sd in job["dns_sd_configs"] for name in sd["names"]}
    serving = set()
    for name, service in compose["services"].items():
        for argv in _commands(service):
            if "--metrics-port" in argv:
                assert argv[argv.index("--metrics-host") + 1] == "0.0.0.0", f"{name}: Prometheus scrapes from another container"
                serving.add((name, int(argv[argv.index("--metrics-port") + 1])))
            if argv[:2] == ["pedstream", "dashboard"]:  # /metrics beside its page
                assert argv[argv.index("--host") + 1] == "0.0.0.0"
                serving.add((name, int(argv[argv.index("--port") + 1])))
    assert serving and serving == targets


def test_the_grafana_dashboard_is_provisioned_and_queries_only_exported_metrics(compose: dict[str, Any]) -> None:
    from deploy.site_view import SiteCollector, SiteView
    from detectors.metrics import DETECTOR_METRICS
    from streams.metrics import CAMERA_METRICS, CameraCollector, role_registry
    from trainer.metrics import TRAINER_METRICS

    mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert "deploy/grafana-dashboard.json:/var/lib/grafana/dashboards/pedstream/" in mounts
    provider = yaml.safe_load((ROOT / "deploy" / "grafana-dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/pedstream"
    exported: set[str] = set()
    camera = role_registry(
        CameraCollector(
            lambda: [{"camera_id": "c", "state": "running", **dict.fromkeys(("published", "dropped", "failed", "bytes", "attempts"), 0)}]
        )
    )
    for registry in (camera, DETECTOR_METRICS, TRAINER_METRICS, role_registry(SiteCollector(SiteView()))):
        for family in registry.collect():
            exported |= {sample.name for sample in family.samples} | {family.name}
    assert CAMERA_METRICS is not camera  # a registry of its own for the check; the camera role's stays untouched
    board = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queried = {name for panel in board["panels"] for target in panel["targets"] for name in re.findall(r"pedstream_\w+", target["expr"])}
    # labelled families have no samples until a child is used: match the family (counters lose _total)
    missing = {name for name in queried if name not in exported and re.sub(r"_(bucket|count|sum|total)$", "", name) not in exported}
    assert queried and not missing, missing
    titles = " ".join(panel["title"].lower() for panel in board["panels"])
    for subject in ("frames", "latency", "shed", "alerts", "hard examples", "model version", "loss", "ap50"):
        assert subject in titles, subject
