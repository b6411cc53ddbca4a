"""One turn of pedstream's closed loop on real processes: what ``pedstream demo`` shows and
``pedstream bench loop`` measures.

A detector agent (its own process, following the registry in Redis) serves the bundled student.
Cameras publish the first half of their sequences; the agent detects, raises alerts and mines hard
examples; the trainer side stores them and runs one retraining cycle driven by them (teacher
labels, a replay set of the student's original training frames, 2 Ray trainers, the evaluation
gate on the camera's held-out time blocks). The candidate is ordered served on the adapted cameras
only, while the first of them streams live, and the run measures how long until the agent serves it
there, whether any live frame went without detections, and every camera's AP50 before and after
(with the model it serves) on the second half of its sequence, which nothing was trained on.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deploy.agent_process import AgentProcess
from detectors.detector import Detector, model_path, read_model, trained_on, weights_path, with_version
from detectors.evaluation import evaluate_sequence
from streams.bus import ModelAnnouncementPublisher, RecordWatch, make_producer
from streams.cameras.agent import CameraFleet
from streams.cameras.config import Look, parse_cameras
from streams.cameras.looks import render
from streams.errors import PedstreamError
from streams.model_channel import ModelKeys, connect_redis
from streams.mot import MotSequence, parse_frame_range
from streams.polling import wait_until
from streams.records import Alert, Detections
from streams.signing import PRIVATE_NAME, PUBLIC_NAME, Signer, init_keys
from streams.topics import Topics
from trainer.data import Example, LabelCache
from trainer.labels import TeacherLabeler
from trainer.registry import Lineage, Registry
from trainer.report import read_weights
from trainer.retrain import FINE_TUNE_LR, CycleResult, Retrainer, RetrainPolicy, fine_tune_settings
from trainer.service import TrainerService
from trainer.sources import ReplaySet
from trainer.store import HardExampleStore

NIGHT = Look(brightness=0.25, noise=12.0)
LIVE_FRAMES = 80  # frames the live camera streams around the swap (10 fps, real time)
AGENT_ID = "loop-agent"


@dataclass(frozen=True)
class SiteCamera:
    """A camera of the site: a MOT-style sequence seen through a look. Its first half streams (and
    may be trained on; ``stream_frames`` streams only the first N frames of it); its second half is
    only ever scored."""

    camera_id: str
    sequence: MotSequence
    look: Look = field(default_factory=Look)
    adapt: bool = False  # a camera the retraining cycle is for (drifted, or never seen)
    stream_frames: int | None = None

    @property
    def streamed(self) -> tuple[int, int]:
        half = self.sequence.length // 2
        return 1, min(half, self.stream_frames or half)

    @property
    def scored(self) -> tuple[int, int]:
        return self.sequence.length // 2 + 1, self.sequence.length

    def config(self, alert_people: int) -> dict[str, Any]:
        return {
            "id": self.camera_id,
            "source": str(self.sequence.video or self.sequence.image_dir),
            "max_frames": self.streamed[1],
            "fps": 0,
            "realtime": False,
            "look": self.look.model_dump(),
            "detect": {
                # the budget refills by capture time, and these cameras stream a whole half-sequence in a
                # second or two (faster than real time): 6000 a minute capped the adapted camera at ~95
                "hard_examples_per_minute": 10**6 if self.adapt else 600,
                "alerts": [{"name": "crowd", "count_at_least": alert_people, "cooldown_s": 5}],
            },
        }


@dataclass
class LoopOutcome:
    start_version: str
    cycle: CycleResult
    served_version: str  # what the agent serves at the end (the candidate if it shipped)
    publish_to_serving_s: float
    live_frames: int
    live_with_detections: int
    live_versions: list[str]
    ap50_before: dict[str, float]
    ap50_after: dict[str, float]
    frames_published: dict[str, int]
    detections: int
    alerts: int
    hard_examples: dict[str, dict[str, int]]
    seconds: float
    # cameras whose scored frames the start model was trained on (its metadata says): their AP50 is
    # not that of a camera never seen
    start_trained_on_scored: list[str] = field(default_factory=list)

    @property
    def frames_dropped(self) -> int:
        return self.live_frames - self.live_with_detections


def _trained_on_scored(sources: list[dict[str, Any]], camera: SiteCamera) -> bool:
    """Whether a training source (``pedstream train``'s data summary) covers frames the loop scores
    the camera on: the same sequence, with no frame range or one that reaches the scored half."""
    first, _last = camera.scored
    for source in sources:
        if source.get("name") != camera.sequence.name:
            continue
        frames = source.get("frames")
        if not frames:
            return True
        _start, stop = parse_frame_range(str(frames), camera.sequence.length)
        if stop >= first:
            return True
    return False


def score_camera(detector: Detector, camera: SiteCamera, every: int) -> float:
    """AP50 of ``detector`` on every ``every``-th frame of the camera's scored half, seen through its look."""
    rng = np.random.default_rng(0)

    def detect(images: list[np.ndarray]) -> list[Any]:
        return detector.detect([render(image, camera.look, None, rng) for image in images])

    first, last = camera.scored
    return round(evaluate_sequence(detect, camera.sequence, first, last, every).ap50, 4)


class _Counter:
    """Counts Detections and Alerts on the bus, as any subscriber would, and keeps the live camera's
    detections (seq -> model version)."""

    def __init__(self, bootstrap: str, topics: Topics, live_camera: str) -> None:
        self.live_camera = live_camera
        self.live: dict[int, str] = {}
        self.detections = RecordWatch(bootstrap, topics, topics.detections, Detections, on_record=self._detected)
        self.alerts = RecordWatch(bootstrap, topics, topics.alerts, Alert)

    def _detected(self, d: Detections, _now: float) -> None:
        if d.camera_id == self.live_camera and d.skipped is None:  # a shed frame got no detections
            self.live[d.seq] = d.model_version

    @property
    def counts(self) -> dict[str, int]:
        return {"detections": len(self.detections.records), "alerts": len(self.alerts.records)}

    def close(self) -> None:
        self.detections.close()
        self.alerts.close()


class ClosedLoop:
    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        topics: Topics,
        cameras: list[SiteCamera],
        models_dir: Path,
        label_cache: Path,
        replay: ReplaySet | list[ReplaySet] | None = None,
        updates: int = 300,
        workers: int = 2,
        every: int = 4,
        alert_people: int = 5,
        progress: Callable[[str], None] | None = None,
        start_model: str | Path = "student",
        replay_per_new: float = RetrainPolicy.replay_per_new,
        lr: float = FINE_TUNE_LR,
        adapt_batchnorm: bool = False,
        person_px: float | None = RetrainPolicy.person_px,
    ) -> None:
        if not any(c.adapt for c in cameras):
            raise ValueError("at least one camera must be one to adapt")
        self.bootstrap, self.redis_url, self.topics = bootstrap, redis_url, topics
        self.cameras = cameras
        self.models_dir = models_dir
        self.label_cache = label_cache
        self.replay = [replay] if isinstance(replay, ReplaySet) else list(replay or [])
        self.updates, self.workers, self.every, self.alert_people = updates, workers, every, alert_people
        self.say = progress or (lambda _m: None)
        self.start_model = start_model  # the model the loop starts from; its NAME.weights.npz beside it
        self.replay_per_new, self.lr, self.adapt_batchnorm = replay_per_new, lr, adapt_batchnorm
        self.person_px = person_px  # the camera's own model's input fits its people (None: the start model's size)
        self.work = Path(tempfile.mkdtemp(prefix="pedstream-loop-"))

    @property
    def live_source(self) -> SiteCamera:
        """The camera that streams live around the swap: the (first) one the new model is for."""
        return self.adapted[0]

    @property
    def live_frames(self) -> int:
        """Frames the live camera streams around the swap (its source may be shorter than LIVE_FRAMES)."""
        return min(LIVE_FRAMES, self.live_source.sequence.length)

    @property
    def adapted(self) -> list[SiteCamera]:
        return [c for c in self.cameras if c.adapt]

    def _start_agent(self, cameras_yaml: Path) -> AgentProcess:
        agent = AgentProcess(
            str(self.start_model),
            self.bootstrap,
            self.topics,
            self.work,
            AGENT_ID,
            threads=1,
            backend="ort",
            cameras=cameras_yaml,
            redis_url=self.redis_url,
            public_key=self.work / "keys" / PUBLIC_NAME,
        )
        return agent.start()

    def _replay_examples(self, start_bytes: bytes) -> list[Example]:
        """Teacher-labelled frames of what the start model was trained on (so a cycle does not make
        it forget them); a sequence it never saw is no replay: for a camera new to the model that
        would hand the cycle more of the camera than its own mined examples."""
        sources = trained_on(start_bytes)
        examples: list[Example] = []
        for replay in self.replay:
            if sources and not any(source.get("name") == replay.sequence.name for source in sources):
                self.say(f"no replay of {replay.sequence.name}: the start model was not trained on it")
                continue
            self.say(f"replay set: {replay.describe()}")
            examples += replay.examples(self.models_dir, self.label_cache)
        return examples

    def run(self) -> LoopOutcome:
        started = time.monotonic()
        init_keys(self.work / "keys")
        announcements = ModelAnnouncementPublisher(make_producer(self.bootstrap), self.topics.models)
        registry = Registry(
            connect_redis(self.redis_url),
            ModelKeys.for_topics(self.topics.prefix),
            Signer.load(self.work / "keys" / PRIVATE_NAME),
            announcements,
        )
        start_bytes, start_file = read_model(self.start_model), model_path(self.start_model)
        start_weights = weights_path(self.start_model)
        if start_weights is None:
            raise PedstreamError(f"{start_file}: no training weights beside it (NAME.weights.npz): it cannot be fine-tuned")
        registry.publish(start_bytes, Lineage(notes=f"start model {start_file.name}"), weights=read_weights(start_weights))
        start_version = registry.current_version() or "?"
        site = {"cameras": [c.config(self.alert_people) for c in self.cameras]}
        (self.work / "cameras.yaml").write_text(yaml.safe_dump(site))
        agent = self._start_agent(self.work / "cameras.yaml")
        store = HardExampleStore(self.work / "store")
        policy = RetrainPolicy(
            min_new_examples=10**9,
            replay_per_new=self.replay_per_new,
            person_px=self.person_px,
            job=fine_tune_settings(self.updates, self.workers, self.lr, freeze_batchnorm=not self.adapt_batchnorm),
        )
        retrainer = Retrainer(
            store,
            registry,
            TeacherLabeler(self.models_dir),
            LabelCache(self.label_cache),
            policy,
            base_examples=self._replay_examples(start_bytes),
            progress=self.say,
            models_dir=self.models_dir,
        )
        service = TrainerService(self.bootstrap, self.topics, registry.client, store, retrainer, auto=False)
        counter = _Counter(self.bootstrap, self.topics, self.live_source.camera_id)  # its consumers join while the agent starts
        try:
            self.say(f"detector agent starting; registry current {start_version}")
            wait_until(
                lambda: registry.agents().get(AGENT_ID, {}).get("serving") == start_version, 180, "the agent to serve the start model"
            )
            if not service.wait_until_assigned(60):  # else a short stream can end before the trainer reads it
                raise PedstreamError("the trainer's hard-example consumer got no partition within 60 s (is the broker up?)")
            self.say(
                "cameras publishing: "
                + ", ".join(
                    f"{c.camera_id} ({c.sequence.name} frames 1-{c.streamed[1]}{', drifted' if c.look != Look() else ''})"
                    for c in self.cameras
                )
            )
            fleet = CameraFleet(parse_cameras(site), self.bootstrap, self.topics)
            fleet.start()
            waiter = threading.Thread(target=fleet.wait, args=(900,), daemon=True)
            waiter.start()
            quiet_since = time.monotonic()
            last_note = 0.0
            while True:  # store hard examples until the cameras are done and none came for 8 s
                if service.collect(0.5):
                    quiet_since = time.monotonic()
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    self.say(
                        f"frames {sum(int(s['published']) for s in fleet.stats())}, detections {counter.counts['detections']}, "  # type: ignore[call-overload]
                        f"alerts {counter.counts['alerts']}, hard examples {sum(c['new'] + c['held_out'] for c in store.counts().values())}"
                    )
                if not waiter.is_alive() and time.monotonic() - quiet_since > 8:
                    break
            fleet.stop()
            # nothing more to collect: leave the group now, not by timing out of it while the cycle runs
            service.subscriber.close()
            published = {str(s["camera_id"]): int(s["published"]) for s in fleet.stats()}  # type: ignore[call-overload]
            counts = store.counts()
            self.say(f"hard examples stored: {counts}")
            before = Detector.from_bytes(start_bytes, name="before", threads=1)
            self.say("scoring the start model on every camera's second half (never trained on by the loop)")
            ap_before = {c.camera_id: score_camera(before, c, self.every) for c in self.cameras}
            cycle = retrainer.run_cycle([c.camera_id for c in self.adapted], promote=False)
            self.say(f"cycle {cycle.version or '-'}: {cycle.outcome} ({cycle.reason})")
            swap_version = cycle.version if cycle.shipped else self._resigned_copy(registry, start_bytes, start_version)
            publish_to_serving, live_versions = self._swap_while_streaming(registry, counter, swap_version)
            ap_after = {}
            for c in self.cameras:
                served = registry.serving(c.camera_id) or start_version
                ap_after[c.camera_id] = (
                    ap_before[c.camera_id] if served == start_version else score_camera(_detector(registry, served), c, self.every)
                )
            return LoopOutcome(
                start_version=start_version,
                cycle=cycle,
                served_version=swap_version,
                publish_to_serving_s=publish_to_serving,
                live_frames=self.live_frames,
                live_with_detections=len(counter.live),
                live_versions=live_versions,
                ap50_before=ap_before,
                ap50_after=ap_after,
                frames_published=published,
                detections=counter.counts["detections"],
                alerts=counter.counts["alerts"],
                hard_examples=counts,
                seconds=round(time.monotonic() - started, 1),
                start_trained_on_scored=[c.camera_id for c in self.cameras if _trained_on_scored(trained_on(start_bytes), c)],
            )
        finally:
            counter.close()
            service.subscriber.close()
            announcements.producer.close(timeout=5)  # else its thread reports the broker going away after the run
            agent.stop()
            store.close()
            shutil.rmtree(self.work / "keys", ignore_errors=True)  # never leave a private signing key behind
            if sys.exc_info()[0] is None:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                self.say(f"the agent's log and the hard-example store are kept for inspection in {self.work}")

    def _resigned_copy(self, registry: Registry, start_bytes: bytes, start_version: str) -> str:
        """A candidate that failed the gate (or waits for gate frames) is not served; the swap is still
        measured, with the start model stored again under a new version (same weights, so the
        cameras' AP is unchanged)."""
        version = f"{start_version}-again"
        registry.store(
            with_version(start_bytes, version),
            Lineage(parent=start_version, notes="swap timing only: the candidate was not shipped"),
            scope=[c.camera_id for c in self.adapted],
        )
        return version

    def _swap_while_streaming(self, registry: Registry, counter: _Counter, version: str) -> tuple[float, list[str]]:
        """Order ``version`` served on the adapted cameras while the first of them streams live at
        10 fps; returns the seconds from the order to the agent reporting it serves it on that
        camera, and the versions seen on that camera's live detections."""
        camera = self.live_source
        live_config = camera.config(self.alert_people) | {"max_frames": self.live_frames, "fps": 10, "realtime": True}
        live = CameraFleet(parse_cameras({"cameras": [live_config]}), self.bootstrap, self.topics)
        counter.live.clear()  # from here on: the live stream's frames only
        live.start()
        time.sleep(3)
        self.say(f"ordering {version} on {', '.join(c.camera_id for c in self.adapted)} while {camera.camera_id} streams live")
        published_at = time.time()
        registry.assign(version, [c.camera_id for c in self.adapted])

        def serving_on_camera() -> bool:
            cameras = registry.agents().get(AGENT_ID, {}).get("cameras", {})
            return bool(cameras.get(camera.camera_id, {}).get("version") == version)

        wait_until(serving_on_camera, 60, f"the agent to serve the new model on {camera.camera_id}")
        serving_at = float(registry.agents()[AGENT_ID]["ts"])
        live.wait(60)
        live.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(counter.live) < self.live_frames:
            time.sleep(0.2)
        return round(serving_at - published_at, 3), sorted(set(counter.live.values()))


def _detector(registry: Registry, version: str) -> Detector:
    return Detector.from_bytes(registry.onnx(version), name=version, threads=1)
