"""The detector agent's accounting, with a fake Kafka event: a frame is acknowledged only once what
was published for it is on the broker, a frame delivered again gets its Detections again (not
silence, not a second inference), and a camera clock ahead of the broker is reported."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from detectors import metrics
from detectors.agent import AgentSettings, Answer, DetectorAgent, Pending
from detectors.detector import Detector, read_model
from detectors.pipeline import WorkItem
from streams.records import Detections, Frame
from streams.topics import Topics
from streams.wire import WireMessage, encode


class FakeEvent:
    def __init__(self, broker_ts: float, message: WireMessage | None = None) -> None:
        value, headers = (message.value, message.headers) if message is not None else (b"", [])
        self.message = SimpleNamespace(timestamp=broker_ts, topic="t.frames", partition=0, offset=7, key=b"c", value=value, headers=headers)
        self.value = value
        self.acked = 0

    def ack(self) -> None:
        self.acked += 1


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> DetectorAgent:
    settings = AgentSettings(bootstrap="127.0.0.1:9", topics=Topics("unit"), data_dir=tmp_path_factory.mktemp("agent"))
    return DetectorAgent(settings, Detector.from_bytes(read_model("student"), name="student", threads=1))


def _frame(capture_ts: float) -> Frame:
    return Frame(camera_id="cam-skew", seq=1, capture_ts=capture_ts, width=8, height=8, jpeg=b"\xff\xd8\xff\xe0", source_frame_index=0)


def test_a_frame_is_acknowledged_only_after_its_records_reached_the_broker(agent: DetectorAgent) -> None:
    async def scenario() -> tuple[int, int, int]:
        delivered, failed, pending = FakeEvent(time.time()), FakeEvent(time.time()), FakeEvent(time.time())
        loop = asyncio.get_running_loop()
        ok, bad, slow = loop.create_future(), loop.create_future(), loop.create_future()
        ok.set_result("metadata")
        bad.set_exception(ConnectionError("broker down"))
        await agent._ack_when_delivered(Pending(delivered, None, 0.0), [ok], "c")
        await agent._ack_when_delivered(Pending(failed, None, 0.0), [ok, bad], "c")
        waiting = asyncio.ensure_future(agent._ack_when_delivered(Pending(pending, None, 0.0), [slow], "c"))
        await asyncio.sleep(0.01)
        acked_before_delivery = pending.acked
        slow.set_result("metadata")
        await waiting
        return delivered.acked, failed.acked, acked_before_delivery * 10 + pending.acked

    before = agent.counters["publish_failures"]
    assert asyncio.run(scenario()) == (1, 0, 1)  # delivered: acked; failed: never; slow: only once delivered
    assert agent.counters["publish_failures"] == before + 1
    assert not agent.outage.down  # the slow delivery that succeeded ended the outage the failure began


class FakeTopic:
    """Records what the agent sends; every send is delivered at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[str]:
        self.sent.append(value)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done.set_result("metadata")
        return done


def test_a_frame_delivered_again_gets_its_detections_published_again(agent: DetectorAgent) -> None:
    """A broker that lost acknowledged writes (and offset commits) delivers answered frames again:
    the agent answers them again from what it published, without detecting them again; a frame
    whose results failed to publish is detected again when it comes back, not dropped as a duplicate."""
    detections = FakeTopic()
    agent.out = {agent.settings.topics.detections.name: detections}  # type: ignore[dict-item]
    now = time.time()
    answered = Frame(camera_id="cam-r", seq=5, capture_ts=now, width=8, height=8, jpeg=b"\xff\xd8\xff\xe0", source_frame_index=5)
    failed = answered.model_copy(update={"seq": 6})

    async def scenario() -> None:
        first = agent._admit(FakeEvent(now, encode(answered)))
        assert first.error is None
        record = agent._detections(answered, "v1", [], {"total": 1.0}, now)
        await agent._send_detections(record)
        again = agent._admit(FakeEvent(now, encode(answered)))
        assert again.error == "duplicate"
        await agent._republish(again.token)

        unpublished = agent._admit(FakeEvent(now, encode(failed)))
        broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        broken.set_exception(ConnectionError("broker down"))
        await agent._ack_when_delivered(unpublished.token, [broken], "cam-r")
        assert agent._admit(FakeEvent(now, encode(failed))).error is None  # detected again, not a duplicate

    before = agent.counters["republished"]
    asyncio.run(scenario())
    assert len(detections.sent) == 2 and detections.sent[0] == detections.sent[1]
    assert Detections.model_validate_json(detections.sent[1]).seq == 5
    assert agent.counters["republished"] == before + 1


def test_after_a_rebalance_the_answers_of_the_last_seconds_are_published_again(agent: DetectorAgent) -> None:
    """A broker that restarts makes the group rebalance and may have lost its last acknowledged
    writes: the agent publishes the Detections of the last ``republish_window_s`` again, not older
    ones, and not at its first assignment."""
    detections = FakeTopic()
    agent.out = {agent.settings.topics.detections.name: detections}  # type: ignore[dict-item]
    now = time.time()
    old = Frame(camera_id="cam-w", seq=1, capture_ts=now - 60, width=8, height=8, jpeg=b"\xff\xd8\xff\xe0", source_frame_index=1)
    recent = old.model_copy(update={"seq": 2, "capture_ts": now})

    async def scenario() -> tuple[int, int]:
        for frame in (old, recent):
            agent._admit(FakeEvent(now, encode(frame)))
            await agent._send_detections(agent._detections(frame, "v1", [], {"total": 1.0}, now))
        published = agent.seen[(old.camera_id, old.seq, old.capture_ts)]
        assert published is not None
        agent.seen[(old.camera_id, old.seq, old.capture_ts)] = Answer(published.message, now - agent.settings.republish_window_s - 1)
        agent.assignments = 0
        await agent._on_assigned(None, signal=None)  # the first assignment: nothing to republish
        first = len(agent._background)
        await agent._on_assigned(None, signal=None)  # a rebalance
        await asyncio.gather(*agent._background)
        return first, len(detections.sent)

    before = agent.counters["republished"]
    first_tasks, _sent = asyncio.run(scenario())
    assert first_tasks == 0
    again = [Detections.model_validate_json(value) for value in detections.sent[2:]]
    assert [(d.camera_id, d.seq) for d in again if d.camera_id == "cam-w"] == [("cam-w", 2)]  # the recent one, not the old
    assert agent.counters["republished"] == before + len(again)


def test_a_camera_clock_ahead_of_the_broker_is_reported_not_hidden(agent: DetectorAgent, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    ahead = Pending(FakeEvent(now), _frame(now + 2.0), received_ts=now + 0.01)
    steps = agent._anatomy(WorkItem(token=ahead, camera_id="cam-skew", jpeg=b""), ahead)
    assert steps["camera"] == 0.0 and steps["clock_skew"] == pytest.approx(2000.0, abs=20)
    assert metrics.CLOCK_SKEW.labels("cam-skew")._value.get() == pytest.approx(2.0, abs=0.02)
    in_sync = Pending(FakeEvent(now), _frame(now - 0.03), received_ts=now + 0.01)
    steps = agent._anatomy(WorkItem(token=in_sync, camera_id="cam-skew", jpeg=b""), in_sync)
    assert "clock_skew" not in steps and steps["camera"] == pytest.approx(30.0, abs=1)
    assert "cam-skew" in agent.skewed
