"""Other Kafka clients read and write pedstream's topics on the embedded broker, one test per client
family: kafka-python (our own clients), aiokafka (what faust uses), librdkafka (confluent-kafka,
what most non-Java clients wrap) and KafkaJS (Node.js, when `node` and `tests/interop/node_modules`
are there: `make venv` runs `npm ci` in tests/interop). Each reads Frame records (raw JPEG value,
JSON in the ``pedstream-meta`` header) in a consumer group and writes a Detections record that
pedstream's own subscriber then reads and validates."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from streams.bus import RecordSubscriber, ensure_topics, make_producer
from streams.records import Box, Detections, Frame
from streams.topics import Topics
from streams.wire import RECORD_HEADER, decode, encode

pytestmark = pytest.mark.integration
INTEROP = Path(__file__).resolve().parents[1] / "interop"
FRAMES = 4


def _publish_frames(broker: str, topics: Topics, camera: str) -> list[Frame]:
    image = np.zeros((96, 128, 3), np.uint8)
    frames = []
    for seq in range(FRAMES):
        cv2.putText(image, str(seq), (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 2)
        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        frames.append(Frame(camera_id=camera, seq=seq, capture_ts=time.time(), width=128, height=96, jpeg=jpeg, source_frame_index=seq))
    producer = make_producer(broker)
    for frame in frames:
        msg = encode(frame)
        producer.send(topics.frames.name, key=msg.key, value=msg.value, headers=msg.headers)
    producer.flush()
    producer.close()
    return frames


def _detections_for(frame: Frame, client: str) -> Detections:
    return Detections(
        camera_id=frame.camera_id,
        seq=frame.seq,
        capture_ts=frame.capture_ts,
        width=frame.width,
        height=frame.height,
        source_frame_index=frame.source_frame_index,
        model_version=f"{client}-model",
        agent_id=client,
        produced_ts=time.time(),
        boxes=[Box(x1=1, y1=2, x2=30, y2=80, score=0.9)],
    )


def _read_detections(broker: str, topics: Topics, agent_id: str, timeout_s: float = 30) -> list[Detections]:
    """pedstream's own subscriber reads what the other client wrote; nothing may be dead-lettered."""
    subscriber = RecordSubscriber(broker, topics, topics.detections, Detections, f"check-{uuid.uuid4().hex[:6]}")
    got: list[Detections] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not any(d.agent_id == agent_id for d in got):
            got += [d.record for d in subscriber.poll(0.5)]
        assert subscriber.dead_lettered == 0
    finally:
        subscriber.close()
    return [d for d in got if d.agent_id == agent_id]


def _setup(broker: str, camera: str) -> tuple[Topics, list[Frame]]:
    topics = Topics(f"t{uuid.uuid4().hex[:8]}")
    ensure_topics(broker, topics.all())
    return topics, _publish_frames(broker, topics, camera)


def test_kafka_python_reads_and_writes_our_topics(broker: str) -> None:
    from kafka import KafkaConsumer

    from streams.kafka_settings import consumer_settings

    topics, frames = _setup(broker, "kp-cam")
    consumer = KafkaConsumer(topics.frames.name, **consumer_settings(broker, "interop-kafka-python", auto_offset_reset="earliest"))
    read: list[Frame] = []
    deadline = time.monotonic() + 30
    while len(read) < FRAMES and time.monotonic() < deadline:
        for messages in consumer.poll(timeout_ms=500).values():
            read += [decode(Frame, m.value, list(m.headers or [])) for m in messages]
    consumer.commit()
    consumer.close()
    assert read == frames
    producer = make_producer(broker)
    msg = encode(_detections_for(frames[0], "kafka-python"))
    producer.send(topics.detections.name, key=msg.key, value=msg.value, headers=msg.headers)
    producer.flush()
    producer.close()
    assert [d.seq for d in _read_detections(broker, topics, "kafka-python")] == [0]


def test_aiokafka_the_client_faust_uses_reads_and_writes_our_topics(broker: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topics, frames = _setup(broker, "aio-cam")

    async def exchange() -> list[Frame]:
        consumer = AIOKafkaConsumer(
            topics.frames.name, bootstrap_servers=broker, group_id="interop-aiokafka", auto_offset_reset="earliest",
            enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000,
        )  # fmt: skip
        await consumer.start()
        read: list[Frame] = []
        try:
            async with asyncio.timeout(30):
                async for m in consumer:
                    read.append(decode(Frame, m.value, list(m.headers or [])))
                    if len(read) == FRAMES:
                        break
            await consumer.commit()
        finally:
            await consumer.stop()
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
        await producer.start()
        try:
            msg = encode(_detections_for(read[0], "aiokafka"))
            await producer.send_and_wait(topics.detections.name, msg.value, key=msg.key, headers=msg.headers)
        finally:
            await producer.stop()
        return read

    assert asyncio.run(exchange()) == frames
    assert [d.seq for d in _read_detections(broker, topics, "aiokafka")] == [0]


def test_librdkafka_via_confluent_kafka_reads_and_writes_our_topics(broker: str) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient

    topics, frames = _setup(broker, "rd-cam")
    assert tuple(int(x) for x in confluent_kafka.libversion()[0].split(".")[:2]) >= (2, 16)  # older ones fail: docs/records.md
    admin = AdminClient({"bootstrap.servers": broker})
    assert topics.frames.name in admin.list_topics(timeout=10).topics
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "interop-librdkafka",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    consumer.subscribe([topics.frames.name])
    read: list[Frame] = []
    deadline = time.monotonic() + 30
    while len(read) < FRAMES and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        read.append(decode(Frame, message.value(), [(k, v) for k, v in message.headers() or []]))
    consumer.commit(asynchronous=False)
    consumer.close()
    assert read == frames
    producer = confluent_kafka.Producer({"bootstrap.servers": broker, "acks": "all"})
    msg = encode(_detections_for(frames[0], "librdkafka"))
    producer.produce(topics.detections.name, value=msg.value, key=msg.key, headers=msg.headers)
    assert producer.flush(10) == 0
    assert [d.seq for d in _read_detections(broker, topics, "librdkafka")] == [0]


@pytest.mark.skipif(
    shutil.which("node") is None or not (INTEROP / "node_modules" / "kafkajs").is_dir(),
    reason="needs Node.js and `npm ci` in tests/interop (make venv runs it where npm is installed)",
)
def test_kafkajs_reads_and_writes_our_topics(broker: str) -> None:
    topics, frames = _setup(broker, "js-cam")
    run = subprocess.run(
        ["node", "kafkajs_client.js", broker, topics.frames.name, topics.detections.name, "interop-kafkajs", str(FRAMES)],
        cwd=INTEROP, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    read = json.loads(run.stdout.strip().splitlines()[-1])["frames"]
    assert [(f["record"], f["key"], f["camera_id"], f["seq"]) for f in read] == [("Frame", "js-cam", "js-cam", s) for s in range(FRAMES)]
    assert [f["jpeg_bytes"] for f in read] == [len(f.jpeg) for f in frames] and {f["jpeg_magic"] for f in read} == {"ffd8ff"}
    [written] = _read_detections(broker, topics, "kafkajs")
    assert written.seq == 0 and written.model_version == "kafkajs-model" and written.boxes[0].x2 == 30
    assert RECORD_HEADER == "pedstream-record"  # the header the Node client set by name
