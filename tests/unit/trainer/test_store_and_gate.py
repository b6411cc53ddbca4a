"""The hard-example store (dedupe, counts, held-out split, replay) and the retraining gate."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from streams.records import Box, HardExample
from trainer.retrain import Retrainer, RetrainPolicy
from trainer.store import HardExampleStore


def example(camera: str, seq: int, shade: int) -> HardExample:
    image = np.full((48, 64, 3), shade, np.uint8)
    image[seq % 40 : seq % 40 + 5, 10:20] = 255 - shade
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    return HardExample(
        camera_id=camera,
        seq=seq,
        capture_ts=1000.0 + seq,
        width=64,
        height=48,
        jpeg=jpeg,
        source_frame_index=seq,
        model_version="v0",
        detections=[Box(x1=1, y1=2, x2=10, y2=20, score=0.4)],
        reasons=["uncertain"],
        mined_ts=time.time(),
    )


def test_store_dedupes_counts_splits_and_replays(tmp_path: Path) -> None:
    store = HardExampleStore(tmp_path / "store", split_every=5)
    records = [example("a", i, 30 + i) for i in range(40)] + [example("b", i, 200 - i) for i in range(10)]
    assert all(store.add(r) for r in records)
    assert not store.add(records[3])  # same bytes
    counts = store.counts()
    assert counts["a"]["total"] == 40 and counts["b"]["total"] == 10
    assert counts["a"]["new"] + counts["a"]["held_out"] == 40 and 0 < counts["a"]["held_out"] < 20
    new_a = store.new_examples("a")
    assert len(new_a) == counts["a"]["new"] and all(e.path.is_file() and not e.held_out for e in new_a)
    assert new_a[0].detections[0]["score"] == 0.4 and new_a[0].reasons == ["uncertain"]
    store.mark_used(new_a, "v1")
    assert store.counts()["a"]["new"] == 0 and len(store.replay()) == len(new_a)
    store.close()
    reopened = HardExampleStore(tmp_path / "store")
    assert reopened.counts()["a"]["used"] == len(new_a)  # the index survives a restart


def gate(per_camera: dict[str, dict[str, float]], targets: list[str]) -> tuple[bool, str]:
    retrainer = Retrainer.__new__(Retrainer)
    retrainer.policy = RetrainPolicy(gate_margin=0.05, max_loss=0.02)
    return retrainer.gate(per_camera, targets)


def test_gate_needs_a_gain_on_the_target_and_no_large_loss_elsewhere() -> None:
    ok, reason = gate({"night": {"current": 0.40, "candidate": 0.60}, "day": {"current": 0.80, "candidate": 0.79}}, ["night"])
    assert ok and "night +0.200" in reason
    ok, reason = gate({"night": {"current": 0.40, "candidate": 0.60}, "day": {"current": 0.80, "candidate": 0.75}}, ["night"])
    assert not ok and "loses 0.050 AP50 on day" in reason
    ok, reason = gate({"night": {"current": 0.40, "candidate": 0.42}}, ["night"])
    assert not ok and "gains less than 0.05" in reason
    ok, reason = gate({"day": {"current": 0.8, "candidate": 0.9}}, ["night"])
    assert not ok and "no held-out frames" in reason
