"""The detector agent's accounting, with a fake Kafka event: a frame is acknowledged only once what
was published for it is on the broker, and a camera clock ahead of the broker is reported."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from detectors import metrics
from detectors.agent import AgentSettings, DetectorAgent, Pending
from detectors.detector import Detector, read_model
from detectors.pipeline import WorkItem
from streams.records import Frame
from streams.topics import Topics


class FakeEvent:
    def __init__(self, broker_ts: float) -> None:
        self.message = SimpleNamespace(timestamp=broker_ts, topic="t.frames", partition=0, offset=7, key=b"c", value=b"", headers=[])
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
        await agent._ack_when_delivered(delivered, [ok], "c")
        await agent._ack_when_delivered(failed, [ok, bad], "c")
        waiting = asyncio.ensure_future(agent._ack_when_delivered(pending, [slow], "c"))
        await asyncio.sleep(0.01)
        acked_before_delivery = pending.acked
        slow.set_result("metadata")
        await waiting
        return delivered.acked, failed.acked, acked_before_delivery * 10 + pending.acked

    before = agent.counters["publish_failures"]
    assert asyncio.run(scenario()) == (1, 0, 1)  # delivered: acked; failed: never; slow: only once delivered
    assert agent.counters["publish_failures"] == before + 1
    assert not agent.outage.down  # the slow delivery that succeeded ended the outage the failure began


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
