"""Detector agents as child processes: how the benchmarks, the closed loop and the integration tests
start a real ``pedstream detect`` and stop it again.

The agent runs ``python -m deploy.cli detect`` with its own ``PEDSTREAM_HOME`` and writes its log to
``HOME/AGENT_ID.log``; ``served_model`` reads what it actually serves from its Prometheus metrics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streams.topics import Topics


@dataclass
class AgentProcess:
    """What a detector agent process is started with; ``start()`` runs it."""

    model: str | Path
    bootstrap: str
    topics: Topics
    home: Path
    agent_id: str
    threads: int = 1
    batch: int | None = None
    backend: str = "ort"
    group: str | None = None
    cameras: Path | None = None
    redis_url: str | None = None
    public_key: Path | None = None
    metrics_port: int | None = None
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.agent_id}.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "deploy.cli", "detect", "--model", str(self.model), "--bootstrap", self.bootstrap]
        cmd += ["--topic-prefix", self.topics.prefix, "--threads", str(self.threads), "--agent-id", self.agent_id]
        cmd += ["--backend", self.backend]
        optional = {
            "--batch": self.batch,
            "--group": self.group,
            "--cameras": self.cameras,
            "--redis": self.redis_url,
            "--public-key": self.public_key,
            "--metrics-port": self.metrics_port,
        }
        for flag, value in optional.items():
            if value is not None:
                cmd += [flag, str(value)]
        return cmd + self.extra

    def start(self) -> AgentProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PEDSTREAM_HOME": str(self.home)}
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        """Send ``sig`` (SIGKILL to simulate a crash) and wait; kill it if it does not exit in time."""
        return stop_process(self.process, sig, timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def served_model(self, timeout_s: float = 5.0) -> dict[str, str]:
        """``{"version", "backend"}`` the agent reports serving (its ``pedstream_detector_model_info``
        metric); needs ``metrics_port``."""
        if self.metrics_port is None:
            raise ValueError("served_model needs the agent started with metrics_port")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("pedstream_detector_model_info{") and line.rstrip().endswith(" 1.0"):
                labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
                return {k: v.strip('"') for k, v in labels.items()}
        raise RuntimeError(f"agent {self.agent_id} reports no served model on its metrics port")


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
    """Signal a child process and wait for it; SIGKILL when it outlives ``timeout_s``. Its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
