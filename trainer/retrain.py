"""One retraining cycle, and when one is due: new hard examples (teacher-labelled) plus replay ->
fine-tune the current student on the Ray parameter server -> gate per camera -> publish or reject.

Triggers: a camera has ``min_new_examples`` new examples, or its estimated accuracy (AP50 of the
edge model's own detections on its mined frames, scored against the teacher's labels) fell below
``min_agreement``. The gate scores current and candidate on each camera's held-out hard examples
(teacher labels; they are never trained on): the candidate ships only if it gains at least
``gate_margin`` on the cameras that triggered and loses at most ``max_loss`` on any camera.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detectors.detector import Detector
from detectors.evaluation import average_precision
from detectors.results import BoxArray
from streams.errors import PedstreamError
from streams.mot import GroundTruth
from trainer import metrics
from trainer.data import Example, LabelCache, shrink
from trainer.job import JobSettings, TrainingJob
from trainer.labels import TEACHER_SOURCE, Labels
from trainer.ps import StalenessPolicy
from trainer.registry import Lineage, Registry
from trainer.sources import STORAGE_WIDTH
from trainer.store import HardExampleStore, StoredExample
from trainer.student import StudentConfig, config_of

FINE_TUNE_LR = 5e-4  # a quarter of training from scratch: adapt to the new cameras, keep the rest


def fine_tune_settings(updates: int = 300, workers: int = 2, lr: float = FINE_TUNE_LR) -> JobSettings:
    """Training settings of a retraining cycle: it starts from the current version's weights."""
    return JobSettings(updates=updates, workers=workers, eval_every=0, warmup=10, policy=StalenessPolicy(lr=lr), freeze_batchnorm=True)


@dataclass(frozen=True)
class RetrainPolicy:
    min_new_examples: int = 40
    min_agreement: float = 0.5
    agreement_window: int = 30  # the latest mined frames of a camera that estimate its accuracy
    gate_margin: float = 0.01
    max_loss: float = 0.02
    replay_per_new: float = 2.0  # replay examples per new example (drawn with repetition from a smaller pool)
    min_replay: int = 64  # ...and at least this many: a few new examples must not carry a whole cycle
    job: JobSettings = field(default_factory=lambda: fine_tune_settings())


@dataclass
class CycleResult:
    version: str
    shipped: bool
    reason: str
    cameras: list[str]
    new_examples: int
    replay_examples: int
    per_camera: dict[str, dict[str, float]] = field(default_factory=dict)  # camera -> {current, candidate}
    train: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _truth(labels: Labels) -> GroundTruth:
    n = len(labels.boxes)
    return GroundTruth(labels.boxes.xyxy, np.arange(n), np.ones(n, bool))


def _decode(example: StoredExample) -> np.ndarray:
    image = cv2.imread(str(example.path))
    if image is None:
        raise PedstreamError(f"{example.path}: unreadable hard example")
    return image


class Retrainer:
    def __init__(
        self,
        store: HardExampleStore,
        registry: Registry,
        teacher: Callable[[np.ndarray], Labels],
        label_cache: LabelCache,
        policy: RetrainPolicy = RetrainPolicy(),
        config: StudentConfig | None = None,
        base_examples: list[Example] | None = None,
        models_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.teacher = teacher
        self.cache = label_cache
        self.policy = policy
        self.config = config  # None: the current model's own (its ONNX metadata; v1's trunk from models_dir)
        self.models_dir = models_dir
        self.base_examples = base_examples or []  # the original training set, part of the replay pool
        self.say = progress or (lambda _m: None)

    # --- labels and scores -----------------------------------------------------------------------

    def label(self, example: StoredExample) -> Labels:
        cached = self.cache.get(example.sha256, TEACHER_SOURCE)
        if cached is not None:
            return Labels(BoxArray.of(*cached), TEACHER_SOURCE)
        labels = self.teacher(_decode(example))
        self.cache.put(example.sha256, TEACHER_SOURCE, labels.boxes.xyxy, labels.boxes.scores)
        return labels

    def to_training(self, examples: list[StoredExample]) -> list[Example]:
        out = []
        for e in examples:
            labels = self.label(e)
            out.append(shrink(Example(_decode(e), labels.boxes.xyxy, labels.boxes.scores, TEACHER_SOURCE, e.sha256), STORAGE_WIDTH))
        return out

    def estimated_accuracy(self, camera: str) -> float | None:
        """AP50 of the edge model's detections on the camera's latest mined frames vs the teacher."""
        recent = (self.store.new_examples(camera) + self.store.held_out(camera))[-self.policy.agreement_window :]
        if len(recent) < 5:
            return None
        found = [
            BoxArray.of(
                np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in e.detections]).reshape(-1, 4),
                np.array([d["score"] for d in e.detections]).reshape(-1),
            )
            for e in recent
        ]
        truths = [_truth(self.label(e)) for e in recent]
        return average_precision(found, truths).ap50

    def ap_on(self, detector: Detector, examples: list[StoredExample]) -> float:
        found = [detector.detect([_decode(e)])[0] for e in examples]
        return average_precision(found, [_truth(self.label(e)) for e in examples]).ap50

    # --- triggers --------------------------------------------------------------------------------

    def due(self) -> dict[str, str]:
        """Cameras that need retraining, with the reason."""
        out = {}
        for camera, counts in self.store.counts().items():
            if counts["new"] >= self.policy.min_new_examples:
                out[camera] = f"{counts['new']} new hard examples (>= {self.policy.min_new_examples})"
                continue
            accuracy = self.estimated_accuracy(camera) if counts["new"] else None
            if accuracy is not None and accuracy < self.policy.min_agreement:
                out[camera] = f"estimated accuracy {accuracy:.2f} < {self.policy.min_agreement}"
        return out

    # --- the cycle -------------------------------------------------------------------------------

    def run_cycle(self, cameras: list[str] | None = None, min_examples: int | None = None, promote: bool = True) -> CycleResult:
        """Train, gate and store a candidate; make it current when it passes and ``promote``."""
        started = time.perf_counter()
        current = self.registry.current_version()
        if current is None:
            raise PedstreamError("no current model in the registry: publish one first (pedstream models publish)")
        init = self.registry.weights(current)
        if init is None:
            raise PedstreamError(f"the current model {current} has no training weights in the registry: it cannot be fine-tuned")
        new = [e for e in self.store.new_examples() if cameras is None or e.camera_id in cameras]
        needed = min_examples if min_examples is not None else 1
        if len(new) < needed:
            raise PedstreamError(f"{len(new)} new hard examples for {cameras or 'any camera'}: fewer than {needed}")
        targets = sorted({e.camera_id for e in new})
        self.say(f"labelling {len(new)} new hard examples from {', '.join(targets)} with the teacher")
        fresh = self.to_training(new)
        replay_pool = self.to_training(self.store.replay()) + self.base_examples
        rng = np.random.default_rng(len(new))
        take = max(int(round(len(fresh) * self.policy.replay_per_new)), self.policy.min_replay) if replay_pool else 0
        # a replay pool smaller than the share it must hold is drawn with repetition, so new data never outweighs it
        picks: Sequence[int] | np.ndarray = rng.choice(len(replay_pool), size=take, replace=take > len(replay_pool)) if take else []
        replay = [replay_pool[i] for i in picks]
        version = time.strftime("student-%Y%m%d-%H%M%S")
        self.say(f"training {version} from {current}: {len(fresh)} new + {len(replay)} replay examples")
        settings = replace(self.policy.job, batch_size=min(self.policy.job.batch_size, len(fresh) + len(replay)))
        current_onnx = self.registry.onnx(current)
        config = self.config or config_of(current_onnx, self.models_dir or Path("."))
        job = TrainingJob(fresh + replay, settings, config, None, init_weights=init, model_version=version)
        result = job.run()
        self.say("gating the candidate on every camera's held-out hard examples")
        current_detector = Detector.from_bytes(current_onnx, name=current)
        candidate = Detector.from_bytes(result.model_onnx, name=version)
        per_camera: dict[str, dict[str, float]] = {}
        for camera in self.store.counts():
            held = self.store.held_out(camera)
            if held:
                per_camera[camera] = {
                    "current": round(self.ap_on(current_detector, held), 4),
                    "candidate": round(self.ap_on(candidate, held), 4),
                    "frames": len(held),
                }
        shipped, reason = self.gate(per_camera, targets)
        for camera, scores in per_camera.items():
            metrics.HELD_OUT_AP50.labels(camera, "current").set(scores["current"])
            metrics.HELD_OUT_AP50.labels(camera, "candidate").set(scores["candidate"])
        metrics.CYCLES.labels("shipped" if shipped else "rejected").inc()
        version_metrics = {f"ap50_{cam}": v["candidate"] for cam, v in per_camera.items()}
        lineage = Lineage(
            parent=current, data={"new": len(fresh), "replay": len(replay)}, labels=TEACHER_SOURCE, notes=f"cameras {', '.join(targets)}"
        )
        self.registry.store(
            result.model_onnx,
            lineage,
            version_metrics,
            state="published" if shipped else "rejected",
            reason=None if shipped else reason,
            weights=result.weights,
        )
        if shipped and promote:
            self.registry.make_current(version)
        self.store.mark_used(new, version)
        train = {k: v for k, v in result.metrics().items() if k not in ("loss_curve", "ap_curve", "shards", "settings")}
        return CycleResult(
            version, shipped, reason, targets, len(fresh), len(replay), per_camera, train, round(time.perf_counter() - started, 1)
        )

    def gate(self, per_camera: dict[str, dict[str, float]], targets: list[str]) -> tuple[bool, str]:
        gains = {cam: v["candidate"] - v["current"] for cam, v in per_camera.items()}
        scored_targets = [cam for cam in targets if cam in gains]
        if not scored_targets:
            return False, "no held-out frames yet for the cameras that triggered retraining"
        worst = min(gains, key=lambda camera: gains[camera])
        if gains[worst] < -self.policy.max_loss:
            return False, f"loses {-gains[worst]:.3f} AP50 on {worst} (allowed {self.policy.max_loss})"
        short = [cam for cam in scored_targets if gains[cam] < self.policy.gate_margin]
        if short:
            return False, f"gains less than {self.policy.gate_margin} AP50 on {', '.join(short)}"
        return True, "gains " + ", ".join(f"{cam} {gains[cam]:+.3f}" for cam in scored_targets)


def cycle_as_dict(result: CycleResult) -> dict[str, Any]:
    return asdict(result)
