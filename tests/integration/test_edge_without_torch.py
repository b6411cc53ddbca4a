"""The edge roles run where only ``pedstream[edge]`` is installed: ``camera``, ``detect``, ``alerts``
and ``dashboard`` start and work with torch and ray made unimportable (an import hook in a
``sitecustomize`` the child processes load), on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from deploy.agent_process import stop_process
from deploy.stack import free_loopback_port
from streams.bus import RecordWatch, ensure_topics
from streams.records import Detections
from streams.topics import Topics

pytestmark = pytest.mark.integration

BLOCKER = '''
import sys

class BlockTrainerPackages:
    """Edge roles must never need these: importing one fails as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ray", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: edge roles run without it)")
        return None

sys.meta_path.insert(0, BlockTrainerPackages())
'''
EDGE_COMMANDS = (["camera"], ["detect"], ["alerts", "tail"], ["dashboard"], ["frames", "watch"], ["dead-letters"], ["eval"])


@pytest.fixture
def edge_env(tmp_path: Path) -> dict[str, str]:
    hook = tmp_path / "blocker"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKER)
    repo = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), repo]), "PEDSTREAM_HOME": str(tmp_path / "home")}


def _pedstream(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_the_blocker_really_blocks(edge_env: dict[str, str]) -> None:
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=edge_env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "blocked: edge roles run without it" in probe.stderr


@pytest.mark.parametrize("command", EDGE_COMMANDS, ids=lambda c: " ".join(c))
def test_edge_commands_start_without_torch_or_ray(edge_env: dict[str, str], command: list[str]) -> None:
    result = _pedstream(edge_env, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: pedstream" in result.stdout


def test_camera_detect_alerts_and_dashboard_run_without_torch_or_ray(
    broker: str, edge_env: dict[str, str], shared_models: Path, vtest: str, tmp_path: Path
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    conn = ["--bootstrap", broker, "--topic-prefix", topics.prefix]
    watch = RecordWatch(broker, topics, topics.detections, Detections)
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("detect", "alerts", "dashboard")}  # noqa: SIM115
    port = free_loopback_port()
    procs = {
        "detect": ["detect", "--model", str(shared_models / "ssdlite_pedestrian.onnx"), "--backend", "ort", "--threads", "1"],
        "alerts": ["alerts", "tail", "--seconds", "120"],
        "dashboard": ["dashboard", "--port", str(port)],
    }
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", *args, *conn, "--no-registry"]
            if name == "detect"
            else [sys.executable, "-m", "deploy.cli", *args, *conn],
            env=edge_env,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
        )
        for name, args in procs.items()
    }
    try:
        camera = _pedstream(
            edge_env,
            "camera",
            "--source",
            vtest,
            "--id",
            "door",
            "--max-frames",
            "12",
            "--once",
            "--fast",
            "--fps",
            "0",
            *conn,
            timeout=120,
        )
        assert camera.returncode == 0, camera.stderr
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len({d.seq for d in watch.snapshot()}) < 12:
            time.sleep(0.3)
        assert {d.seq for d in watch.snapshot() if d.camera_id == "door"} == set(range(12))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        for name, proc in running.items():
            assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
    finally:
        watch.close()
        for proc in running.values():
            stop_process(proc)
        for log in logs.values():
            log.close()
    for name in running:
        text = (tmp_path / f"{name}.log").read_text()
        assert "blocked: edge roles run without it" not in text, f"{name} tried to import torch or ray:\n{text[-2000:]}"
