"""``pedstream bench loop``: one turn of the closed loop, measured end to end on real processes.

A detector agent (its own process, following the registry) serves the bundled student. Cameras
publish: the camera to adapt (``--sequence``, optionally drifted to night) and a normal PETS camera.
The agent mines hard examples; the trainer side stores them and runs one retraining cycle driven
only by them (teacher labels, replay, gate). The result is made current while a camera is still
publishing, and the benchmark measures how long until the agent serves it, whether any frame went
without detections, and AP50 before and after on frames never trained on: the adapted camera's
later frames (same drift) and the other cameras' (forgetting).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detectors.detector import BUNDLED_MODELS, Detector, read_model
from detectors.evaluation import evaluate_sequence
from streams.bus import RecordSubscriber
from streams.cameras.agent import CameraFleet
from streams.cameras.config import Look, parse_cameras
from streams.cameras.looks import render
from streams.model_channel import ModelKeys, connect_redis
from streams.mot import MotSequence
from streams.records import Detections
from streams.signing import PRIVATE_NAME, PUBLIC_NAME, Signer, init_keys
from streams.topics import Topics
from trainer.data import LabelCache
from trainer.job import JobSettings
from trainer.labels import TeacherLabeler
from trainer.registry import Lineage, Registry
from trainer.report import read_weights
from trainer.retrain import RetrainPolicy, Retrainer
from trainer.service import TrainerService
from trainer.store import HardExampleStore

DRIFTS = {"night": Look(brightness=0.25, noise=12.0), "none": Look()}


def _ap(detector: Detector, sequence: MotSequence, frames: tuple[int, int], look: Look, every: int) -> float:
    rng = np.random.default_rng(0)

    def detect(images: list[np.ndarray]) -> list[Any]:
        return detector.detect([render(image, look, None, rng) for image in images])

    return round(evaluate_sequence(detect, sequence, frames[0], frames[1], every).ap50, 4)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run(bootstrap: str, redis_url: str, topics: Topics, sequence_dir: Path, pets_dir: Path, models_dir: Path, drift: str,
        label_cache: Path, updates: int = 300, every: int = 4, progress: Callable[[str], None] | None = None) -> dict[str, object]:
    say = progress or (lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="pedstream-loop-"))
    init_keys(work / "keys")
    registry = Registry(connect_redis(redis_url), ModelKeys.for_topics(topics.prefix), Signer.load(work / "keys" / PRIVATE_NAME))
    start_bytes = read_model("student")
    registry.publish(start_bytes, Lineage(notes="bundled student"), weights=read_weights(BUNDLED_MODELS / "student.weights.npz"))
    start_version = registry.current_version()
    adapt = MotSequence.load(sequence_dir)
    pets = MotSequence.load(pets_dir)
    half = adapt.length // 2
    look = DRIFTS[drift]
    cameras = {"cameras": [
        {"id": "adapt", "source": str(adapt.video or adapt.image_dir), "max_frames": half, "fps": 0, "realtime": False,
         "look": look.model_dump(), "detect": {"hard_examples_per_minute": 6000}},
        {"id": "pets", "source": str(pets.video or pets.image_dir), "max_frames": pets.length // 2, "fps": 0, "realtime": False,
         "detect": {"hard_examples_per_minute": 600}},
    ]}
    (work / "cameras.yaml").write_text(yaml.safe_dump(cameras))
    agent_cmd = [sys.executable, "-m", "deploy.cli", "detect", "--model", "student", "--bootstrap", bootstrap, "--redis", redis_url,
                 "--topic-prefix", topics.prefix, "--threads", "1", "--agent-id", "loop-agent", "--backend", "ort",
                 "--cameras", str(work / "cameras.yaml"), "--public-key", str(work / "keys" / PUBLIC_NAME)]
    agent = subprocess.Popen(agent_cmd, stdout=open(work / "agent.log", "wb"), stderr=subprocess.STDOUT,
                             env={**os.environ, "PEDSTREAM_HOME": str(work)})
    store = HardExampleStore(work / "store")
    policy = RetrainPolicy(min_new_examples=10**9, job=JobSettings(updates=updates, workers=2, eval_every=0, warmup=10))
    teacher = TeacherLabeler(models_dir)
    retrainer = Retrainer(store, registry, teacher.label, LabelCache(label_cache), policy, progress=say)
    service = TrainerService(bootstrap, topics, registry.client, store, retrainer, auto=False)
    try:
        say(f"agent starting; serving {start_version}")
        _wait(lambda: registry.agents().get("loop-agent", {}).get("serving") == start_version, 120, "the agent to serve the start model")
        say(f"cameras publishing: adapt ({adapt.name}, drift {drift}, frames 1-{half}), pets (frames 1-{pets.length // 2})")
        fleet = CameraFleet(parse_cameras(cameras), bootstrap, topics)
        fleet.start()
        waiter = threading.Thread(target=fleet.wait, args=(600,), daemon=True)
        waiter.start()
        quiet_since = time.monotonic()
        while True:  # store hard examples until the cameras are done and nothing new came for 8 s
            if service.collect(0.5):
                quiet_since = time.monotonic()
            if not waiter.is_alive() and time.monotonic() - quiet_since > 8:
                break
        fleet.stop()
        counts = store.counts()
        say(f"hard examples stored: {counts}")
        before = Detector.from_bytes(start_bytes, name="before", threads=1)
        eval_adapt = (half + 1, adapt.length)
        eval_pets = (pets.length // 2 + 1, pets.length)
        say("scoring the start model on frames never trained on")
        ap_before = _ap(before, adapt, eval_adapt, look, every)
        others_before = {"pets-day": _ap(before, pets, eval_pets, Look(), every)}
        cycle = retrainer.run_cycle(["adapt"], promote=False)
        say(f"cycle {cycle.version}: {'passes' if cycle.shipped else 'fails'} the gate ({cycle.reason})")
        swap_version = cycle.version
        if not cycle.shipped:  # still measure a swap, with a re-signed copy of the start model
            swap_version = f"{start_version}-again"
            import onnx

            proto = onnx.load_model_from_string(start_bytes)
            for prop in proto.metadata_props:
                if prop.key == "pedstream_version":
                    prop.value = swap_version
            registry.store(proto.SerializeToString(), Lineage(parent=start_version, notes="swap timing only"))
        # publish while a camera is streaming: no frame may go without detections
        live = CameraFleet(parse_cameras({"cameras": [{"id": "live", "source": str(pets.video or pets.image_dir),
                                                       "max_frames": 80, "fps": 10, "realtime": True}]}), bootstrap, topics)
        watch = RecordSubscriber(bootstrap, topics, topics.detections, Detections, f"loop-watch-{os.getpid()}")
        live.start()
        time.sleep(3)
        published_at = time.time()
        registry.make_current(swap_version)
        _wait(lambda: registry.agents().get("loop-agent", {}).get("serving") == swap_version, 60, "the agent to serve the new model")
        serving_at = registry.agents()["loop-agent"]["ts"]
        live.wait(60)
        live.stop()
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 80:
            for d in watch.poll(0.5):
                if d.record.camera_id == "live":
                    seen[d.record.seq] = d.record.model_version
        watch.close()
        after = Detector.from_bytes(registry.onnx(registry.current_version()), name="after", threads=1)
        ap_after = _ap(after, adapt, eval_adapt, look, every)
        others_after = {"pets-day": _ap(after, pets, eval_pets, Look(), every)}
        tud = pets_dir.parent / "TUD-Campus"
        if tud.is_dir() and tud.resolve() != sequence_dir.resolve():
            tud_seq = MotSequence.load(tud)
            others_before["tud-campus"] = _ap(before, tud_seq, (1, tud_seq.length), Look(), 1)
            others_after["tud-campus"] = _ap(after, tud_seq, (1, tud_seq.length), Look(), 1)
        return {
            "publish_to_serving_s": round(serving_at - published_at, 3),
            "frames_dropped": 80 - len(seen),
            "frames_around_swap": {"published": 80, "with_detections": len(seen),
                                   "versions": sorted(set(seen.values()))},
            "ap50_before": ap_before, "ap50_after": ap_after,
            "others_ap50_before": others_before, "others_ap50_after": others_after,
            "cycle": {"version": cycle.version, "shipped": cycle.shipped, "reason": cycle.reason,
                      "new_examples": cycle.new_examples, "replay_examples": cycle.replay_examples,
                      "gate": cycle.per_camera, "train_s": cycle.train.get("seconds"), "seconds": cycle.seconds},
            "hard_examples": counts, "drift": drift, "sequence": adapt.name,
            "eval_frames": {"adapt": list(eval_adapt), "pets-day": list(eval_pets), "every": every},
            "swap_measured_with": swap_version,
        }
    finally:
        service.subscriber.close()
        if agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
