"""One turn of the closed loop as ``pedstream demo`` and ``bench loop`` run it, with small budgets:
a detector agent process serving the bundled student mines hard examples from a night-drifted
camera on the real broker, the trainer stores them, labels them with the teachers, trains on a
loopback Ray head and the new version reaches the agent through Redis while a camera streams,
with no frame lost."""

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


def test_a_cycle_driven_by_mined_hard_examples_changes_the_served_version_without_losing_a_frame(
    broker: str,
    redis_url: str,
    shared_data: Path,
    shared_models: Path,
    tmp_path: Path,
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    tud = MotSequence.load(shared_data / "TUD-Campus")
    cameras = [SiteCamera("tud-night", tud, NIGHT, adapt=True), SiteCamera("tud-day", tud)]
    with ray_session(None, RayPorts(47650), num_cpus=3):
        loop = ClosedLoop(
            broker, redis_url, topics, cameras, shared_models, tmp_path / "labels", replay=None, updates=8, workers=2, every=6
        )
        out = loop.run()
    assert out.frames_published == {"tud-night": tud.length // 2, "tud-day": tud.length // 2}
    # the cycle trained on every new hard example the drifted camera gave (the held-out ones gate it)
    assert out.cycle.new_examples == out.hard_examples["tud-night"]["new"] > 0
    assert out.hard_examples["tud-night"]["held_out"] > 0 and "tud-night" in out.cycle.per_camera
    assert out.served_version != out.start_version
    # every live frame got detections, made by the old model before the swap and the new one after
    assert out.frames_dropped == 0 and out.live_frames == min(80, tud.length)
    assert out.live_versions == sorted({out.start_version, out.served_version})
    assert 0 < out.publish_to_serving_s < 30
    assert set(out.ap50_before) == set(out.ap50_after) == {"tud-night", "tud-day"}
    # making versions current also announced them on Kafka, for any other subscriber
    subscriber = RecordSubscriber(broker, topics, topics.models, ModelAnnouncement, f"check-{uuid.uuid4().hex[:6]}")
    announced: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and out.served_version not in announced:
        announced += [d.record.version for d in subscriber.poll(0.5)]
    subscriber.close()
    assert announced[0] == out.start_version and out.served_version in announced
