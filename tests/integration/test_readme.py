"""Every command README.md's "Using it" shows, as a new user types it (placeholders replaced by
real files), in a fresh PEDSTREAM_HOME: each one parses, names files that exist, and runs. Commands
that end on their own must exit 0; services (camera, detect, dashboard...) must start and stop
cleanly on Ctrl-C. The ones that take minutes (train, tune, the trainer service, bench ingest)
are parsed and their files checked here, and run by their own tests; a README command with no plan
here fails the test, so the README and this test cannot drift apart."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from deploy.cli import build_parser
from deploy.commands.common import find_model, find_sequence
from detectors.detector import model_path

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

# how each README command is tried, by its first words: "exit" (runs to the end, exit 0),
# "serve" (a service: runs a few seconds, then Ctrl-C, exit 0), "parse" (minutes long: parsed here,
# run by the tests named)
PLANS: dict[str, str] = {
    "stack up": "exit",
    "stack status": "exit",
    "camera --config": "exit",  # cameras.yaml here streams a few frames and ends
    "camera --source video.mp4": "serve",
    "camera --source vtest.avi": "serve",
    "frames watch": "serve",
    "dead-letters": "exit",
    "detect --model ssdlite_pedestrian.onnx": "serve",
    "alerts tail": "serve",
    "eval --model nanodet.onnx": "exit",
    "tune": "parse",  # test_tvm_tuning.py
    "bench ingest": "parse",  # test_stack_cli.py::test_bench_ingest_prints_the_documented_json
    "train": "parse",  # test_training.py
    "eval --model student": "exit",
    "quantize": "exit",
    "keys init": "exit",
    "models publish": "exit",
    "detect --model student --cameras": "parse",  # an agent following the registry: test_model_registry.py
    "trainer": "parse",  # test_retraining.py, test_closed_loop.py
    "retrain": "parse",  # needs a trainer service: test_retraining.py
    "models list": "exit",
    "models promote": "parse",  # test_model_registry.py
    "models rollback": "parse",
    "models compile": "parse",  # test_tvm_artifacts.py
    "detect --model student --teacher-model": "parse",  # test_model_registry.py::test_an_agent_rolls_a_camera_back...
    "dashboard": "serve",
    "detect --model student --metrics-port": "parse",  # a fixed port (9100): test_detector_agent.py serves metrics
    "stack down": "exit",
}


def readme_commands() -> list[str]:
    """The `pedstream ...` lines of the "Using it" block, options in [brackets] left out, `A | B`
    as two commands, `...` as the minimal arguments."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = []
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line.startswith("pedstream "):
            continue
        line = re.sub(r"\s*\[[^\]]*\]", "", line).replace(" ... ", " --model student ")
        first, *alternatives = (part.strip() for part in line.split(" | "))
        commands.append(first)
        head = " ".join(first.split()[:2])  # `pedstream models promote V | rollback` -> `pedstream models rollback`
        commands += [f"{head} {alternative}" for alternative in alternatives]
    return commands


def plan_of(command: str) -> str:
    words = command.removeprefix("pedstream ")
    matches = [key for key in PLANS if words == key or words.startswith(key + " ")]
    assert matches, f"README shows `{command}` but this test has no plan for it: add one to PLANS"
    return PLANS[max(matches, key=len)]


def test_every_readme_command_is_planned_parses_and_names_files_that_exist(monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> None:
    monkeypatch.setenv("PEDSTREAM_DATA", str(shared_data))
    monkeypatch.setenv("PEDSTREAM_MODELS", str(shared_data.parent / "models"))
    commands = readme_commands()
    assert len(commands) >= 25
    parser = build_parser()
    for command in commands:
        plan_of(command)
        argv = shlex.split(os.path.expandvars(command))[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: {command}")
        for name in ("model", "teacher_model"):
            value = getattr(args, name, None)
            if value:
                assert model_path(find_model(value)).is_file(), f"{command}: --{name.replace('_', '-')} {value} not found"
        if getattr(args, "sequence", None):
            assert (Path(find_sequence(args.sequence)) / "seqinfo.ini").is_file(), f"{command}: --sequence {args.sequence}"
        for path in re.findall(r"(?:detectors|\$PEDSTREAM_DATA)/\S+", command):
            assert Path(os.path.expandvars(path) if path.startswith("$") else REPO / path).exists(), f"{command}: {path}"


def test_a_new_user_runs_the_readme_top_to_bottom(tmp_path: Path, shared_data: Path, vtest: str, redis_url: str) -> None:
    home = tmp_path / "home"
    prefix = f"readme{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PEDSTREAM_HOME": str(home),
        "PEDSTREAM_KEYS": str(home / "keys"),
        "PEDSTREAM_DATA": str(shared_data),
        "PEDSTREAM_MODELS": str(shared_data.parent / "models"),
        "PEDSTREAM_TOPIC_PREFIX": prefix,
        "REDIS_URL": redis_url,
        "PEDSTREAM_BOOTSTRAP": "",
    }
    # the user's own files the README names
    (tmp_path / "cameras.yaml").write_text(
        f"defaults: {{fps: 0, realtime: false}}\ncameras:\n  - id: gate\n    source: {vtest}\n    max_frames: 8\n"
    )
    (tmp_path / "vtest.avi").symlink_to(vtest)
    (tmp_path / "video.mp4").symlink_to(vtest)
    (tmp_path / "detectors").symlink_to(REPO / "detectors")
    ran: dict[str, int] = {}
    try:
        for command in readme_commands():
            plan = plan_of(command)
            if plan == "parse":
                continue
            argv = [sys.executable, "-m", "deploy.cli", *shlex.split(command.replace("$PEDSTREAM_DATA", str(shared_data)))[1:]]
            if plan == "exit":
                done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
                assert done.returncode == 0, f"`{command}` exited {done.returncode}: {done.stderr[-2000:]}"
                ran[command] = done.returncode
            else:
                ran[command] = _serve_then_interrupt(command, argv, tmp_path, env)
    finally:
        subprocess.run([sys.executable, "-m", "deploy.cli", "stack", "down"], env=env, capture_output=True, timeout=60)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}:*"):  # the registry the README's commands filled
            client.delete(key)
    assert (tmp_path / "student-int8.onnx").is_file()
    assert sum(1 for command in ran if command.startswith("pedstream detect")) == 1 and len(ran) >= 16


# what a service prints once it is serving (and handles Ctrl-C itself)
READY = {
    "camera": "publishing",
    "frames watch": "frames on",
    "detect": "Ready",  # faust's worker
    "alerts tail": "alerts of",
    "dashboard": "pedstream dashboard on",
}


def _serve_then_interrupt(command: str, argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Start a service, wait until it says it is serving, let it run, Ctrl-C it: it must still be
    running then, and stop cleanly (exit 0)."""
    log = cwd / f"{re.sub(r'[^a-z0-9]+', '-', command.lower())[:60]}.log"
    marker = next(text for key, text in READY.items() if command.removeprefix("pedstream ").startswith(key))
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while marker not in log.read_text(errors="replace") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(0.5)
        assert proc.poll() is None, f"`{command}` ended by itself ({proc.returncode}): {log.read_text()[-2000:]}"
        assert marker in log.read_text(errors="replace"), f"`{command}` never said {marker!r}: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, f"`{command}` exited {code} on Ctrl-C: {log.read_text()[-2000:]}"
    assert "Traceback" not in log.read_text(errors="replace"), f"`{command}`: {log.read_text()[-3000:]}"
    return code
