"""The camera runner with a fake source and publisher: fps cap drops (never queues), failures back off."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka.errors import KafkaTimeoutError

from streams.cameras.agent import CameraRunner
from streams.cameras.config import parse_cameras
from streams.cameras.sources import FrameSource
from streams.errors import SourceError
from streams.records import CameraStatus, Frame


class FakePublisher:
    def __init__(self) -> None:
        self.records: list[object] = []

    def publish(self, record: object, on_delivery=None) -> None:  # type: ignore[no-untyped-def]
        self.records.append(record)
        if on_delivery:
            on_delivery(None)


class CountingSource(FrameSource):
    """Delivers numbered frames as fast as asked; ``fail_opens`` first opens raise."""

    def __init__(self, frames: int, fail_opens: int = 0, native_fps: float | None = None, opens: list[int] | None = None) -> None:
        super().__init__("fake")
        self.frames, self.fail_opens, self.native_fps = frames, fail_opens, native_fps
        self.opens = opens if opens is not None else []
        self.i = 0

    def open(self) -> None:
        self.opens.append(1)
        if len(self.opens) <= self.fail_opens:
            raise SourceError("fake: cannot open")

    def read(self):  # type: ignore[no-untyped-def]
        if self.i >= self.frames:
            return None
        self.i += 1
        return self.i - 1, np.zeros((24, 32, 3), np.uint8)


def run(camera: dict[str, object], source_factory, seconds: float = 5.0):  # type: ignore[no-untyped-def]
    [cfg] = parse_cameras({"cameras": [{"id": "c", "source": "rtsp://127.0.0.1:1/x", **camera}]})
    frames, status, stop = FakePublisher(), FakePublisher(), threading.Event()
    runner = CameraRunner(cfg, frames, status, stop, source_factory=source_factory)  # type: ignore[arg-type]
    runner.thread.start()
    runner.thread.join(timeout=seconds)
    stop.set()
    runner.thread.join(timeout=5)
    return runner, frames.records, status.records


def test_fast_source_without_cap_publishes_every_frame_in_order() -> None:
    runner, frames, status = run({"fps": 0}, lambda cfg: CountingSource(50))
    assert [f.seq for f in frames] == list(range(50))
    assert [f.source_frame_index for f in frames] == list(range(50))
    assert all(isinstance(f, Frame) and (f.width, f.height) == (32, 24) for f in frames)
    assert [s.state for s in status] == ["starting", "running", "finished"]


def test_fps_cap_drops_frames_instead_of_queueing() -> None:
    started = time.monotonic()
    runner, frames, _ = run({"fps": 10, "max_frames": 8}, lambda cfg: CountingSource(10**9))
    elapsed = time.monotonic() - started
    assert len(frames) == 8
    assert runner.stats.dropped > 100  # the source is far faster than 10 fps: the rest were dropped
    assert 0.5 < elapsed < 3.0  # ~0.7 s for 8 frames at 10 fps, not the time to read every frame


def test_realtime_file_is_paced_at_its_native_rate() -> None:
    started = time.monotonic()
    _, frames, _ = run({"fps": 0, "realtime": True}, lambda cfg: CountingSource(10, native_fps=20.0))
    assert len(frames) == 10 and 0.4 < time.monotonic() - started < 2.0


def test_failing_source_is_reported_and_retried_with_backoff() -> None:
    opens: list[int] = []
    runner, frames, status = run(
        {"fps": 0, "retry": {"initial_s": 0.05, "max_s": 0.2}},
        lambda cfg: CountingSource(5, fail_opens=3, opens=opens),
    )
    retries = [s for s in status if isinstance(s, CameraStatus) and s.state == "retrying"]
    assert [r.attempt for r in retries] == [1, 2, 3]
    assert [r.retry_in_s for r in retries] == [0.05, 0.1, 0.2]
    assert all("cannot open" in (r.reason or "") for r in retries)
    assert len(frames) == 5 and status[-1].state == "finished"


class UnreachableBroker(FakePublisher):
    """Every publish fails the way kafka-python fails with no broker: no metadata within max_block_ms."""

    def publish(self, record: object, on_delivery=None) -> None:  # type: ignore[no-untyped-def]
        raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")


def test_frames_the_broker_did_not_take_are_counted_apart_from_drops_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    [cfg] = parse_cameras({"cameras": [{"id": "c", "source": "rtsp://127.0.0.1:1/x", "fps": 0}]})
    stop = threading.Event()
    runner = CameraRunner(cfg, UnreachableBroker(), UnreachableBroker(), stop, source_factory=lambda c: CountingSource(30))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        runner.thread.start()
        runner.thread.join(timeout=5)
        stop.set()
        runner.thread.join(timeout=5)
    stats = runner.stats.snapshot()
    assert stats["failed"] == 30 and stats["dropped"] == 0 and stats["published"] == 0 and stats["state"] == "finished"
    assert "KafkaTimeoutError" in str(stats["last_error"]) or "metadata" in str(stats["last_error"])
    broker_lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(broker_lines) == 1 and not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_missing_source_file_fails_at_once_and_the_command_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy import cli

    # no broker is needed to find out: the camera fails before publishing anything (its status report is best effort)
    code = cli.main(["camera", "--source", str(tmp_path / "gone.mp4"), "--id", "door", "--bootstrap", "127.0.0.1:1", "--seconds", "20"])
    err = capsys.readouterr().err
    assert code == 1 and f"camera door failed: source {tmp_path / 'gone.mp4'}: no such file or folder" in err


def test_a_camera_whose_file_is_missing_reports_failed_and_is_not_retried(tmp_path: Path) -> None:
    [cfg] = parse_cameras({"cameras": [{"id": "yard", "source": str(tmp_path / "gone.mp4")}]})
    frames, status, stop = FakePublisher(), FakePublisher(), threading.Event()
    runner = CameraRunner(cfg, frames, status, stop)  # type: ignore[arg-type]
    runner.thread.start()
    runner.thread.join(timeout=5)
    assert not runner.thread.is_alive() and runner.stats.state == "failed" and frames.records == []
    [report] = status.records
    assert isinstance(report, CameraStatus) and report.state == "failed" and "no such file or folder" in (report.reason or "")


def test_a_truncated_video_ends_with_a_warning_naming_where_it_stopped(tmp_path: Path) -> None:
    import cv2

    from streams.cameras.sources import CaptureSource

    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(60):
        writer.write(rng.integers(0, 255, (120, 160, 3), np.uint8))
    writer.release()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    notes = {}
    for path in (whole, cut):
        source = CaptureSource(str(path), live=False, loop=False)
        source.open()
        while source.read() is not None:
            pass
        source.close()
        notes[path.name] = source.end_note
    assert notes["whole.avi"] is None
    assert notes["cut.avi"] is not None and "ended at frame 30 of the 60 its container declares" in notes["cut.avi"]


def test_a_truncated_video_ends_with_one_warning_and_no_ffmpeg_noise(tmp_path: Path, vtest: str) -> None:
    """FFmpeg's per-block decoder errors stay out of the output; the source says the file ended early."""
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(Path(vtest).read_bytes()[:2_000_000])
    script = (
        "from streams.cameras.sources import build_source\n"
        f"source = build_source({str(truncated)!r}, loop=False)\n"
        "source.open()\n"
        "frames = 0\n"
        "while source.read() is not None:\n"
        "    frames += 1\n"
        "print(frames, source.end_note)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stderr
    frames, note = run.stdout.strip().split(" ", 1)
    assert 0 < int(frames) < 795 and "looks truncated" in note
    assert "error while decoding" not in run.stderr and "msmpeg4" not in run.stderr, run.stderr[-1000:]
