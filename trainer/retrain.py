"""One retraining cycle, and when one is due: a camera's new hard examples (teacher-labelled) plus
replay -> fine-tune the model that camera serves on the Ray parameter server -> gate -> ship to that
camera only, or reject.

Triggers: a camera has ``min_new_examples`` new examples, or its estimated accuracy (AP50 of the
edge model's own detections on its mined frames, scored against the teacher's labels) fell below
``min_agreement``. The gate (``trainer.gate``) scores the served model and the candidate on the
camera's held-out time blocks (teacher labels; never trained on) and ships only on a confident
gain. A specialised model serves only the cameras it was trained for, so no other camera changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detectors.detector import Detector, onnx_metadata
from detectors.evaluation import average_precision
from detectors.quantize import PRECISION_METADATA_KEY, calibration_picks, quantize_int8
from detectors.results import BoxArray
from streams.errors import PedstreamError
from streams.mot import GroundTruth
from trainer import metrics
from trainer.choices import PERSON_PX
from trainer.data import Example, LabelCache, shrink
from trainer.gate import GatePolicy, combine, judge
from trainer.input_size import fitted_config
from trainer.job import JobSettings, TrainingJob
from trainer.labels import Labeller, Labels
from trainer.ps import StalenessPolicy
from trainer.registry import Lineage, Registry
from trainer.sources import STORAGE_WIDTH
from trainer.store import HardExampleStore, StoredExample
from trainer.student import StudentConfig, config_of

FINE_TUNE_LR = 5e-4  # a quarter of training from scratch: adapt to the new cameras, keep the rest


def fine_tune_settings(updates: int = 300, workers: int = 2, lr: float = FINE_TUNE_LR, freeze_batchnorm: bool = True) -> JobSettings:
    """Training settings of a retraining cycle: it starts from the current version's weights (and by
    default keeps their batch-norm statistics; False lets them follow the cycle's examples)."""
    return JobSettings(
        updates=updates, workers=workers, eval_every=0, warmup=10, policy=StalenessPolicy(lr=lr), freeze_batchnorm=freeze_batchnorm
    )


@dataclass(frozen=True)
class RetrainPolicy:
    min_new_examples: int = 40
    min_agreement: float = 0.5
    agreement_window: int = 30  # the latest mined frames of a camera that estimate its accuracy
    gate: GatePolicy = field(default_factory=GatePolicy)
    replay_per_new: float = 2.0  # replay examples per new example (drawn with repetition from a smaller pool)
    min_replay: int = 64  # ...and at least this many: a few new examples must not carry a whole cycle
    job: JobSettings = field(default_factory=lambda: fine_tune_settings())
    # the camera's own model gets a larger input when its people are small (trainer.input_size): the
    # median teacher-labelled person at least this many pixels tall at the model's input (None: keep
    # the served model's size), up to this width
    person_px: float | None = PERSON_PX
    max_input_width: int = 640


@dataclass
class CycleResult:
    version: str
    shipped: bool
    reason: str
    cameras: list[str]
    new_examples: int
    replay_examples: int
    per_camera: dict[str, dict[str, float]] = field(default_factory=dict)  # camera -> {current, candidate, frames}
    train: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    outcome: str = "shipped"  # shipped, rejected, or waiting (too few gate frames: nothing trained)
    gate: dict[str, Any] = field(default_factory=dict)  # trainer.gate's report: verdict, reason, per camera
    input_size: tuple[int, int] | None = None  # the candidate's (width, height); None when nothing was trained
    ms_per_frame: dict[str, float] = field(default_factory=dict)  # detection on the gate frames: served, candidate


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
        teacher: Labeller,
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
        cached = self.cache.get(example.sha256, self.teacher.source)
        if cached is not None:
            return Labels(BoxArray.of(*cached), self.teacher.source)
        labels = self.teacher.label(_decode(example))
        self.cache.put(example.sha256, self.teacher.source, labels.boxes.xyxy, labels.boxes.scores)
        return labels

    def to_training(self, examples: list[StoredExample], max_width: int = STORAGE_WIDTH) -> list[Example]:
        out = []
        for e in examples:
            labels = self.label(e)
            out.append(shrink(Example(_decode(e), labels.boxes.xyxy, labels.boxes.scores, self.teacher.source, e.sha256), max_width))
        return out

    def _as_served(self, candidate_onnx: bytes, parent_onnx: bytes, fresh: list[Example]) -> bytes:
        """The candidate in its parent's precision: int8 when the parent is (the bundled student is),
        calibrated on the camera's own new examples, so the gate judges what the edge would serve."""
        if onnx_metadata(parent_onnx).get(PRECISION_METADATA_KEY) != "int8":
            return candidate_onnx
        self.say("quantizing the candidate to int8, as its parent (calibrated on the camera's new examples)")
        return quantize_int8(candidate_onnx, [fresh[i].image for i in calibration_picks(len(fresh))])

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

    # --- triggers --------------------------------------------------------------------------------

    def due(self) -> dict[str, str]:
        """Cameras that need retraining, with the reason."""
        out = {}
        for camera, counts in self.store.counts().items():
            if counts["held_out"] < self.policy.gate.min_frames:
                continue  # the gate could not judge a candidate yet: keep collecting
            if counts["new"] >= self.policy.min_new_examples:
                out[camera] = f"{counts['new']} new hard examples (>= {self.policy.min_new_examples})"
                continue
            accuracy = self.estimated_accuracy(camera) if counts["new"] else None
            if accuracy is not None and accuracy < self.policy.min_agreement:
                out[camera] = f"estimated accuracy {accuracy:.2f} < {self.policy.min_agreement}"
        return out

    # --- the cycle -------------------------------------------------------------------------------

    def run_cycle(self, cameras: list[str] | None = None, min_examples: int | None = None, promote: bool = True) -> CycleResult:
        """Train a model for ``cameras`` (a camera, or a group sharing a scene; None: every camera
        with new examples, as one group) from the model they serve, gate it on each camera's gate
        frames against what that camera serves, store it (approved or rejected), and, when it ships
        and ``promote``, order it served on those cameras only. Too few gate frames: the cycle
        waits (nothing is trained; the examples stay new)."""
        started = time.perf_counter()
        known = self.store.counts()
        unknown = [c for c in cameras or [] if c not in known]
        if unknown:
            raise PedstreamError(
                f"no hard examples from camera {', '.join(unknown)}: known cameras are {', '.join(sorted(known)) or 'none'}"
            )
        new = [e for e in self.store.new_examples() if cameras is None or e.camera_id in cameras]
        needed = min_examples if min_examples is not None else 1
        if len(new) < needed:
            raise PedstreamError(f"{len(new)} new hard examples for {cameras or 'any camera'}: fewer than {needed}")
        targets = sorted(cameras or {e.camera_id for e in new})
        held = {camera: self.store.held_out(camera) for camera in targets}
        short = [c for c in targets if len(held[c]) < self.policy.gate.min_frames]
        if short:
            reason = ", ".join(f"{c} has {len(held[c])} gate frames" for c in short) + f" (needs {self.policy.gate.min_frames})"
            self.say(f"not training yet: {reason}")
            metrics.CYCLES.labels("waiting").inc()
            return CycleResult("", False, f"waiting for more examples: {reason}", targets, len(new), 0, outcome="waiting")
        served = {camera: self.registry.serving(camera) for camera in targets}
        parent = served[targets[0]]
        if parent is None:
            raise PedstreamError("no model in the registry: publish one first (pedstream models publish)")
        init = self.registry.weights(parent)
        if init is None:
            raise PedstreamError(f"the served model {parent} has no training weights in the registry: it cannot be fine-tuned")
        self.say(f"labelling {len(new)} new hard examples from {', '.join(targets)} with the teacher")
        parent_onnx = self.registry.onnx(parent)
        config = self.config or config_of(parent_onnx, self.models_dir or Path("."))
        person_px = self.policy.person_px if self.config is None else None  # a config given by the operator stays as given
        # decoded and labelled once, wide enough for the largest input the fit may choose
        widest = max(STORAGE_WIDTH, self.policy.max_input_width * 5 // 4) if person_px is not None else STORAGE_WIDTH
        fresh = self.to_training(new, max_width=widest)
        if person_px is not None:
            config = fitted_config(config, fresh, person_px, self.policy.max_input_width)
        # kept 5/4 of the input wide (room to zoom in on the camera's own frames), at least STORAGE_WIDTH
        fresh = [shrink(example, max(STORAGE_WIDTH, config.input_width * 5 // 4)) for example in fresh]
        replay_pool = self.to_training(self.store.replay()) + self.base_examples
        rng = np.random.default_rng(len(new))
        take = max(int(round(len(fresh) * self.policy.replay_per_new)), self.policy.min_replay) if replay_pool else 0
        # a replay pool smaller than the share it must hold is drawn with repetition, so new data never outweighs it
        picks: Sequence[int] | np.ndarray = rng.choice(len(replay_pool), size=take, replace=take > len(replay_pool)) if take else []
        replay = [replay_pool[i] for i in picks]
        version = f"{_version_stem(targets)}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.say(
            f"training {version} for {', '.join(targets)} from {parent}: {len(fresh)} new + {len(replay)} replay examples"
            f" at {config.input_width}x{config.input_height}"
        )
        settings = replace(self.policy.job, batch_size=min(self.policy.job.batch_size, len(fresh) + len(replay)))
        job = TrainingJob(fresh + replay, settings, config, None, init_weights=init, model_version=version)
        result = job.run()
        self.say(f"gating the candidate on the gate frames of {', '.join(targets)} (held-out time blocks, teacher labels)")
        candidate_onnx = self._as_served(result.model_onnx, parent_onnx, fresh)
        candidate = Detector.from_bytes(candidate_onnx, name=version)
        served_detectors = {v: Detector.from_bytes(self.registry.onnx(v), name=v) for v in {served[c] or parent for c in targets}}
        gates = []
        timing = _Timing()
        for camera in targets:
            served_version = served[camera] or parent
            served_detector = served_detectors[served_version]
            truths = [_truth(self.label(e)) for e in held[camera]]
            gates.append(
                judge(
                    camera,
                    served_version,
                    timing.detect_all("served", served_detector, held[camera]),
                    timing.detect_all("candidate", candidate, held[camera]),
                    truths,
                    self.teacher.source.split(":")[0],  # "teacher": what labelled the gate frames (the lineage names the models)
                    self.policy.gate,
                )
            )
        verdict, reason = combine(gates)
        shipped = verdict == "ship"
        per_camera = {g.camera: {"current": g.served_ap50, "candidate": g.candidate_ap50, "frames": g.frames} for g in gates}
        for g in gates:
            metrics.HELD_OUT_AP50.labels(g.camera, "current").set(g.served_ap50)
            metrics.HELD_OUT_AP50.labels(g.camera, "candidate").set(g.candidate_ap50)
        metrics.CYCLES.labels("shipped" if shipped else "rejected").inc()
        lineage = Lineage(
            parent=parent,
            data={"new": len(fresh), "replay": len(replay)},
            labels=self.teacher.source,
            notes=f"cameras {', '.join(targets)}; input {config.input_width}x{config.input_height}",
        )
        gate_report = {"verdict": verdict, "reason": reason, "cameras": [g.as_dict() for g in gates], "policy": asdict(self.policy.gate)}
        self.registry.store(
            candidate_onnx,
            lineage,
            {f"ap50_{g.camera}": g.candidate_ap50 for g in gates},
            state="approved" if shipped else "rejected",
            reason=None if shipped else reason,
            weights=result.weights,
            scope=targets,
            gate=gate_report,
        )
        if shipped and promote:
            self.registry.assign(version, targets)
        self.store.mark_used(new, version)
        train = {k: v for k, v in result.metrics().items() if k not in ("loss_curve", "ap_curve", "shards", "settings")}
        return CycleResult(
            version,
            shipped,
            reason,
            targets,
            len(fresh),
            len(replay),
            per_camera,
            train,
            round(time.perf_counter() - started, 1),
            outcome="shipped" if shipped else "rejected",
            gate=gate_report,
            input_size=(config.input_width, config.input_height),
            ms_per_frame=timing.ms_per_frame(),
        )


class _Timing:
    """Detection on the gate frames, timed per model (what a camera's own, larger model costs)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.frames: dict[str, int] = {}

    def detect_all(self, which: str, detector: Detector, examples: list[StoredExample]) -> list[BoxArray]:
        images = [_decode(e) for e in examples]
        detector.detect(images[:1])  # warm up: a fresh session's first run is several times slower
        started = time.perf_counter()
        found = [detector.detect([image])[0] for image in images]
        self.seconds[which] = self.seconds.get(which, 0.0) + time.perf_counter() - started
        self.frames[which] = self.frames.get(which, 0) + len(images)
        return found

    def ms_per_frame(self) -> dict[str, float]:
        return {which: round(1000 * self.seconds[which] / max(self.frames[which], 1), 2) for which in self.seconds}


def _version_stem(cameras: list[str]) -> str:
    """Versions are named for what they serve: ``cam-3-...``, or ``group-<first>-and-2-...``."""
    return cameras[0] if len(cameras) == 1 else f"group-{cameras[0]}-and-{len(cameras) - 1}"


def cycle_as_dict(result: CycleResult) -> dict[str, Any]:
    return asdict(result)
