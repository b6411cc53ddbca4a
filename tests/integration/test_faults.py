"""``bench faults`` at a small size: real broker, real detector agent processes, one fault each; every
frame counted from capture to detection by (camera, seq)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.bench import faults

pytestmark = pytest.mark.integration


def test_a_killed_detector_agent_loses_no_frame_and_its_cameras_come_back(broker: str, vtest: str, tmp_path: Path) -> None:
    out = faults.run(broker, "student", vtest, tmp_path, ["detector-killed"], cameras=3, fps=5.0, seconds=12.0, progress=lambda _m: None)
    result = out["scenarios"][0]
    assert result["checks"] == {"survivor_running": True, "victim_had_cameras": True}, result
    assert result["frames_sent"] >= 3 * 5 * 10
    assert result["lost"] == 0, result
    assert result["recovery_s"] is not None and 0 < result["recovery_s"] < 20, result
    assert result["frames_detected"] + result["frames_shed"] == result["frames_sent"]


def test_bad_input_is_dead_lettered_with_reasons_and_every_good_frame_detected(broker: str, vtest: str, tmp_path: Path) -> None:
    out = faults.run(broker, "student", vtest, tmp_path, ["bad-input"], cameras=2, fps=5.0, seconds=10.0, progress=lambda _m: None)
    result = out["scenarios"][0]
    assert all(result["checks"].values()), result
    assert result["dead_lettered"] == len(faults.BAD_INPUTS) and result["lost"] == 0, result
    assert "oversized frame: 30000x20000" in result["fault"] and "unsupported schema_version 99" in result["fault"]
    assert "corrupt JPEG" in result["fault"]
