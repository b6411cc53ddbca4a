"""FramePublisher after a broker outage, with a fake producer whose deliveries the test completes:
the frames a restarting broker may have lost are sent again once it acknowledges again, and only
then; nothing is sent again without an outage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from streams.bus import FramePublisher
from streams.records import Frame
from streams.topics import Topics


class FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []
        self.errbacks: list[Callable[[Exception], None]] = []

    def add_callback(self, fn: Callable[[Any], None]) -> None:
        self.callbacks.append(fn)

    def add_errback(self, fn: Callable[[Exception], None]) -> None:
        self.errbacks.append(fn)

    def ack(self) -> None:
        for fn in self.callbacks:
            fn("metadata")

    def fail(self) -> None:
        for fn in self.errbacks:
            fn(ConnectionError("broker down"))


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, FakeFuture]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> FakeFuture:
        future = FakeFuture()
        self.sent.append((value, future))
        return future


def _frame(seq: int) -> Frame:
    return Frame(
        camera_id="cam", seq=seq, capture_ts=1000.0 + seq, width=8, height=8, jpeg=b"\xff\xd8\xff" + bytes([seq]), source_frame_index=seq
    )


def _seqs(values: list[bytes | None]) -> list[int]:
    return [value[3] for value in values if value is not None]


def test_frames_a_restarting_broker_may_have_lost_are_sent_again_once_it_is_back() -> None:
    producer = FakeProducer()
    publisher = FramePublisher(producer, Topics("unit").frames, resend_window_s=10.0, outage_ack_s=0.05)
    for seq in range(3):
        publisher.publish(_frame(seq))
        producer.sent[-1][1].ack()  # acknowledged at once: no outage
    publisher.publish(_frame(3))
    assert _seqs([v for v, _ in producer.sent]) == [0, 1, 2, 3]  # nothing sent again without an outage

    publisher.publish(_frame(4))  # in flight when the broker dies: its delivery fails
    producer.sent[-1][1].fail()
    publisher.publish(_frame(5))  # the broker is still away: nothing to send again yet
    assert _seqs([v for v, _ in producer.sent]) == [0, 1, 2, 3, 4, 5]
    time.sleep(0.06)
    producer.sent[3][1].ack()  # frame 3 acknowledged late: the broker was away
    producer.sent[5][1].ack()
    publisher.publish(_frame(6))  # the broker acknowledges again: 0-3 (may be lost), 5 (late) and 4 (failed) again
    again = _seqs([v for v, _ in producer.sent[6:-1]])
    assert sorted(again) == [0, 1, 2, 3, 4, 5] and _seqs([producer.sent[-1][0]]) == [6]
    assert publisher.resent == 6
    publisher.publish(_frame(7))
    assert _seqs([v for v, _ in producer.sent[-1:]]) == [7]  # once only
