// KafkaJS against pedstream's topics: read N Frame records in a consumer group (raw JPEG value,
// JSON in the pedstream-meta header), then write one Detections record (JSON value, the
// pedstream-record header), and print what it read as one JSON line.
// usage: node kafkajs_client.js BOOTSTRAP FRAMES_TOPIC DETECTIONS_TOPIC GROUP COUNT
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, framesTopic, detectionsTopic, group, count] = process.argv.slice(2);
const kafka = new Kafka({ clientId: "pedstream-interop-kafkajs", brokers: [bootstrap], logLevel: logLevel.ERROR });

async function main() {
  const consumer = kafka.consumer({ groupId: group, sessionTimeout: 6000, heartbeatInterval: 1000 });
  await consumer.connect();
  await consumer.subscribe({ topic: framesTopic, fromBeginning: true });
  const frames = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${frames.length} frames in 60 s`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        const meta = JSON.parse(message.headers["pedstream-meta"].toString());
        frames.push({
          record: message.headers["pedstream-record"].toString(),
          key: message.key.toString(),
          camera_id: meta.camera_id,
          seq: meta.seq,
          jpeg_bytes: message.value.length,
          jpeg_magic: message.value.subarray(0, 3).toString("hex"),
        });
        if (frames.length >= Number(count)) { clearTimeout(timer); resolve(); }
      },
    });
  });
  await consumer.disconnect();
  const producer = kafka.producer();
  await producer.connect();
  const first = JSON.parse(JSON.stringify(frames[0]));
  const detections = {
    schema_version: 1, camera_id: first.camera_id, seq: first.seq, capture_ts: Date.now() / 1000,
    width: 768, height: 576, source_frame_index: 0, model_version: "kafkajs-model", agent_id: "kafkajs",
    produced_ts: Date.now() / 1000, boxes: [{ x1: 1, y1: 2, x2: 30, y2: 80, score: 0.9 }], latency_ms: {},
  };
  await producer.send({
    topic: detectionsTopic,
    acks: -1,
    messages: [{ key: first.camera_id, value: JSON.stringify(detections), headers: { "pedstream-record": "Detections" } }],
  });
  await producer.disconnect();
  console.log(JSON.stringify({ frames }));
}

main().catch((err) => { console.error(`kafkajs: ${err.message}`); process.exit(1); });
