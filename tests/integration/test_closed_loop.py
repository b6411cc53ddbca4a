"""One turn of the closed loop as ``pedstream demo`` and ``bench loop`` run it, with small budgets:
a detector agent process serving a start model that is weak on the camera mines hard examples from
a night-drifted PETS09-S2L1 camera on the real broker, the trainer stores them, labels them with the teachers,
trains on a loopback Ray head; the candidate must pass the gate, reach the agent through Redis while
a camera streams with no frame lost, and raise the camera's AP50 on frames never trained on.

The start model is student v0 (``tests/fixtures/student-v0.*``, the one-scene student bundled before
v1, trained on PETS09-S2L1 daylight frames only): 0.19 AP50 at night, so the test can fail on
learning. The bundled v1 already scores 0.785 there (the teachers 0.83): too little room for a
test of learning. Measured (2 cores) with frames 1-397 streamed: 317 new hard examples, 80 gate
frames, 40 updates, gate 0.25 -> 0.83, AP50 on frames 398-795 (every 8th) 0.18 -> 0.70, 260 s, most
of it the teachers labelling; the test streams frames 1-120: 80 examples, 40 gate frames, gate
0.29 -> 0.87, AP50 0.18 -> 0.70, 146 s on the same machine."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from deploy.closed_loop import NIGHT, ClosedLoop, SiteCamera
from streams.bus import RecordSubscriber, ensure_topics
from streams.mot import MotSequence
from streams.records import ModelAnnouncement
from streams.topics import Topics
from trainer.cluster import RayPorts, ray_session

pytestmark = pytest.mark.integration
V0 = Path(__file__).resolve().parents[1] / "fixtures" / "student-v0.onnx"


def test_a_cycle_driven_by_mined_hard_examples_changes_the_served_version_without_losing_a_frame(
    broker: str,
    redis_url: str,
    shared_data: Path,
    shared_models: Path,
    tmp_path: Path,
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    pets = MotSequence.load(shared_data / "PETS09-S2L1")
    # the first 120 frames only (the teachers label each hard example: the test's longest part):
    # 6 blocks of 20, blocks 1 and 6 held out for the gate (40 frames), 80 to train on
    cameras = [SiteCamera("pets-night", pets, NIGHT, adapt=True, stream_frames=120)]
    with ray_session(None, RayPorts(27650), num_cpus=3):
        loop = ClosedLoop(
            broker, redis_url, topics, cameras, shared_models, tmp_path / "labels", replay=None, updates=40, workers=2, every=8,
            start_model=V0,
        )  # fmt: skip
        out = loop.run()
    assert not loop.work.exists()  # its temporary folder, private signing key included, is gone
    assert out.frames_published == {"pets-night": 120}
    # the cycle trained on every new hard example the drifted camera gave (the held-out ones gate it)
    assert out.cycle.new_examples == out.hard_examples["pets-night"]["new"] > 0
    assert out.hard_examples["pets-night"]["held_out"] > 0 and "pets-night" in out.cycle.per_camera
    # the candidate passed the gate and is what the agent serves
    assert out.cycle.shipped, out.cycle.reason
    # PETS09-S2L1's people are small (median 81 of 576 px): the camera's own model sees them larger
    # than v0's 384x288 does (trainer.input_size), and the cycle says what that costs per frame
    assert out.cycle.input_size is not None and out.cycle.input_size[0] > 384
    assert out.cycle.input_size[0] * 3 == out.cycle.input_size[1] * 4
    assert set(out.cycle.ms_per_frame) == {"served", "candidate"}
    assert out.served_version == out.cycle.version != out.start_version
    # it learned: the camera's AP50 on the second half of the sequence (never trained on) rose
    assert out.ap50_after["pets-night"] >= out.ap50_before["pets-night"] + 0.15, (out.ap50_before, out.ap50_after)
    # every live frame got detections, made by the old model before the swap and the new one after
    assert out.frames_dropped == 0 and out.live_frames == 80
    assert out.live_versions == sorted({out.start_version, out.served_version})
    assert 0 < out.publish_to_serving_s < 30
    # release orders are also announced on Kafka, for any other subscriber
    subscriber = RecordSubscriber(broker, topics, topics.models, ModelAnnouncement, f"check-{uuid.uuid4().hex[:6]}")
    orders: list[ModelAnnouncement] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and out.served_version not in [o.version for o in orders]:
        orders += [d.record for d in subscriber.poll(0.5)]
    subscriber.close()
    assert orders[0].version == out.start_version and orders[0].scope == []  # the general model
    assert [o.scope for o in orders if o.version == out.served_version] == [["pets-night"]]  # the camera's own model, for it only
