"""bench faults' recovery_s: the fault until a frame captured after it is detected, per camera hit."""

from __future__ import annotations

from deploy.bench.faults import _result, _Tally
from streams.records import Detections


def _detections(seq: int, capture_ts: float, produced_ts: float, skipped: str | None = None) -> Detections:
    return Detections(
        camera_id="cam-0", seq=seq, capture_ts=capture_ts, width=4, height=4, source_frame_index=seq,
        model_version="v1", boxes=[], agent_id="a", produced_ts=produced_ts, skipped=skipped,
    )  # fmt: skip


def test_a_record_produced_before_the_fault_and_delivered_after_it_is_not_a_recovery() -> None:
    tally = _Tally()
    tally.fault_ts = 100.0
    tally.add(_detections(1, capture_ts=99.9, produced_ts=100.07), 108.0)  # in flight when the broker died
    tally.add(_detections(2, capture_ts=100.5, produced_ts=107.0, skipped="stale"), 108.0)  # shed, not detected
    assert "cam-0" not in tally.first_after
    tally.add(_detections(3, capture_ts=100.7, produced_ts=108.0), 108.1)
    result = _result("broker-restart", "kill", tally, {("cam-0", s) for s in (1, 2, 3)}, set(), {"cam-0"}, tally.fault_ts)
    assert result.recovery_s == 8.0 and result.lost == 0
