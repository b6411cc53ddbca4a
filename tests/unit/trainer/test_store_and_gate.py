"""The hard-example store (dedupe, counts, held-out time blocks, replay) and the shipping gate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from detectors.results import BoxArray
from streams.mot import GroundTruth
from streams.records import Box, HardExample
from trainer.data import LabelCache
from trainer.gate import GatePolicy, combine, judge
from trainer.labels import Labels
from trainer.retrain import Retrainer
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
    store = HardExampleStore(tmp_path / "store", split_every=5, block_frames=20)
    assert [store.is_gate_block(i) for i in (0, 19, 20, 99, 100, 119, 120)] == [True, True, False, False, True, True, False]
    records = [example("a", i, 30 + i) for i in range(40)] + [example("b", i, 200 - i) for i in range(10)]
    assert all(store.add(r) for r in records)
    assert not store.add(records[3])  # same bytes
    counts = store.counts()
    assert counts["a"]["total"] == 40 and counts["b"]["total"] == 10
    assert counts["a"]["new"] + counts["a"]["held_out"] == 40 and counts["a"]["held_out"] == 20
    assert [e.seq for e in store.held_out("a")] == list(range(20))  # a whole block of the timeline, not every 5th frame
    new_a = store.new_examples("a")
    assert len(new_a) == counts["a"]["new"] and all(e.path.is_file() and not e.held_out for e in new_a)
    assert new_a[0].detections[0]["score"] == 0.4 and new_a[0].reasons == ["uncertain"]
    store.mark_used(new_a, "v1")
    assert store.counts()["a"]["new"] == 0 and len(store.replay()) == len(new_a)
    store.close()
    reopened = HardExampleStore(tmp_path / "store")
    assert reopened.counts()["a"]["used"] == len(new_a)  # the index survives a restart


def frames_with_people(n: int) -> list[GroundTruth]:
    boxes = np.array([[10, 10, 40, 90], [100, 20, 130, 100]], float)
    return [GroundTruth(boxes, np.arange(2), np.ones(2, bool)) for _ in range(n)]


def found(truth: GroundTruth, hits: int, score: float = 0.9) -> BoxArray:
    return BoxArray.of(truth.xyxy[:hits], np.full(hits, score))


def test_gate_ships_a_confident_gain_rejects_noise_and_waits_for_frames() -> None:
    policy = GatePolicy(min_frames=30, margin=0.0, resamples=300)
    truths = frames_with_people(40)
    served = [found(t, 1) for t in truths]  # half the people
    better = [found(t, 2) for t in truths]  # all of them
    ship = judge("night", "v-1", served, better, truths, "teacher", policy)
    assert ship.verdict == "ship" and ship.gain == 0.5 and ship.gain_low > 0 and ship.frames == 40 and ship.labels == "teacher"
    assert "on 40 teacher-labelled gate frames" in ship.reason
    # better on a few frames, worse on as many: the interval straddles zero
    mixed = [found(t, 2) if i % 2 else found(t, 0) for i, t in enumerate(truths)]
    reject = judge("night", "v-1", served, mixed, truths, "teacher", policy)
    assert reject.verdict == "reject" and reject.gain_low <= 0 <= reject.gain_high and "not above" in reject.reason
    wait = judge("night", "v-1", served[:10], better[:10], truths[:10], "teacher", policy)
    assert wait.verdict == "wait" and "10 gate frames on night, fewer than 30" in wait.reason
    assert combine([ship, wait])[0] == "wait" and combine([ship, reject])[0] == "reject" and combine([ship])[0] == "ship"
    assert combine([])[0] == "wait"


class CountingLabeller:
    """A labeller that boxes the whole frame and counts how often it really ran."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.calls = 0

    def label(self, image_bgr: np.ndarray) -> Labels:
        self.calls += 1
        h, w = image_bgr.shape[:2]
        return Labels(BoxArray.of([[0, 0, w, h]], [0.9]), self.source)


def test_retrainer_caches_labels_under_its_own_labellers_source(tmp_path: Path) -> None:
    store = HardExampleStore(tmp_path / "store")
    store.add(example("a", 25, 40))  # frame 25: a training frame, not a gate block's
    [stored] = store.new_examples()
    cache = LabelCache(tmp_path / "labels")
    first, other = CountingLabeller("teacher: a + b"), CountingLabeller("teacher: a + b + c")
    no_registry = cast(Any, None)  # labelling never touches the registry
    for labeller in (first, first, other):
        labels = Retrainer(store, no_registry, labeller, cache).label(stored)
        assert labels.source == labeller.source
    assert (first.calls, other.calls) == (1, 1)  # the second ensemble did not get the first one's cached labels
    [training] = Retrainer(store, no_registry, other, cache).to_training([stored])
    assert training.source == "teacher: a + b + c" and other.calls == 1
