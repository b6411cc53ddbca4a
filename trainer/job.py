"""A training job: the driver loop over Ray parameter-server shards and trainers, async or sync.

Asynchronous mode keeps one task in flight per trainer; each gradient that comes back is applied on
every shard at once (staleness-scaled rate, bound), and that trainer gets the fresh weights.
Synchronous mode hands the same weights to every trainer, averages the K gradients and applies one
update. Either way: a crashed trainer is restarted by Ray and given work again, a trainer may join
mid-run, shards checkpoint every so often, and held-out AP is measured along the way.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError

from detectors.detector import Detector
from detectors.evaluation import average_precision
from streams.errors import PedstreamError
from streams.mot import GroundTruth
from trainer import metrics
from trainer.actors import ParameterShard, Trainer, save_examples, save_weights, split_into_shards
from trainer.choices import TRAINING_MODES, WARMUP_UPDATES
from trainer.data import Augment, Example
from trainer.ps import StalenessPolicy, Weights, load_weights, model_weights
from trainer.stem import distill_stem
from trainer.student import Student, StudentConfig, export_onnx


@dataclass(frozen=True)
class JobSettings:
    """What a job does; every field is a ``pedstream train`` option."""

    mode: str = "async"
    workers: int = 2
    ps_shards: int = 1
    updates: int = 600
    batch_size: int = 8
    policy: StalenessPolicy = StalenessPolicy()
    warmup: int = WARMUP_UPDATES  # updates of linear learning-rate warm-up, then cosine decay to 5%
    augment: Augment = Augment()
    eval_every: int = 100  # updates between held-out evaluations (0: only at the end)
    checkpoint_every: int = 50
    join_after: int | None = None  # add one more trainer after this many updates
    freeze_batchnorm: bool = False  # keep the start weights' batch-norm statistics (fine-tuning)
    seed: int = 0
    target_loss: float | None = None  # report when the smoothed loss first reaches this
    timeout_s: float = 120.0  # the longest wait for any one gradient

    def __post_init__(self) -> None:
        if self.mode not in TRAINING_MODES:
            raise PedstreamError(f"mode: must be one of {TRAINING_MODES}, not {self.mode!r}")
        for name in ("workers", "ps_shards", "updates", "batch_size"):
            if getattr(self, name) < 1:
                raise PedstreamError(f"{name}: must be >= 1")
        if self.warmup < 0:
            raise PedstreamError(f"warmup: must be >= 0, not {self.warmup}")

    def lr_scale(self, update: int) -> float:
        if update < self.warmup:
            return (update + 1) / self.warmup
        progress = (update - self.warmup) / max(1, self.updates - self.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class HeldOut:
    """Frames the model never trains on, with their ground truth."""

    images: list[np.ndarray]
    truths: list[GroundTruth]
    name: str = "held-out"


@dataclass
class Progress:
    update: int
    total: int
    loss: float
    ap50: float | None
    elapsed_s: float
    restarts: int
    workers: int


@dataclass
class JobResult:
    settings: dict[str, object]
    updates: int
    samples: int
    seconds: float
    updates_per_s: float
    samples_per_s: float
    seconds_to_loss: float | None
    final_loss: float
    ap50: float | None
    recall: float | None
    trainer_restarts: int
    trainer_back_ts: list[float]  # wall-clock time of each restarted trainer's first gradient
    dropped_stale: int
    staleness: dict[str, float]
    loss_curve: list[tuple[int, float, float]]  # (update, seconds, smoothed loss)
    ap_curve: list[tuple[int, float, float]]  # (update, seconds, held-out AP50)
    shards: list[dict[str, object]]
    gradients_per_trainer: list[int]
    model_onnx: bytes = field(repr=False, default=b"")
    weights: Weights = field(repr=False, default_factory=dict)

    def metrics(self) -> dict[str, object]:
        """Everything but the model, as JSON-ready values."""
        out = {k: v for k, v in asdict(self).items() if k not in ("model_onnx", "weights")}
        return out


def evaluate_weights(weights: Weights, config: StudentConfig, held_out: HeldOut, version: str = "eval") -> tuple[float, float, bytes]:
    """(AP50, best recall, ONNX bytes) of the student with these weights, run through the edge adapter."""
    model = Student(config)
    load_weights(model, weights)
    onnx_bytes = export_onnx(model, version)
    detector = Detector.from_bytes(onnx_bytes, backend="ort", name=version, threads=1)
    found = [detector.detect([image])[0] for image in held_out.images]
    score = average_precision(found, held_out.truths)
    return score.ap50, score.recall, onnx_bytes


def with_distilled_stem(
    config: StudentConfig, examples: list[Example], cache_dir: Path | None, progress: Callable[[str], None] | None = None
) -> Weights:
    """A fresh student's weights (``config.stem == "distilled"``) with its stem distilled on the images
    of ``examples`` (``trainer.stem``; cached in ``cache_dir``): the start of a job that trains it."""
    if config.trunk is None:
        raise ValueError("a distilled stem needs a pretrained trunk (StudentConfig.trunk)")
    distilled = distill_stem(Path(config.trunk), examples, cache_dir=cache_dir, progress=progress)
    student = Student(config)
    student.load_stem(distilled.weights)
    return model_weights(student)


class TrainingJob:
    """Runs one job on a connected Ray cluster (see ``trainer.cluster``)."""

    def __init__(
        self,
        examples: list[Example],
        settings: JobSettings,
        config: StudentConfig = StudentConfig(),
        held_out: HeldOut | None = None,
        checkpoint_dir: Path | None = None,
        init_weights: Weights | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_update: Callable[[TrainingJob, int], None] | None = None,
        model_version: str | None = None,
    ) -> None:
        if len(examples) < settings.batch_size:
            raise PedstreamError(f"{len(examples)} labelled examples: need at least batch_size={settings.batch_size}")
        self.examples = examples
        self.settings = settings
        self.config = config
        self.held_out = held_out
        self.checkpoint_dir = checkpoint_dir
        self.on_progress = on_progress
        self.on_update = on_update  # called after every update (tests use it to kill a trainer)
        torch.manual_seed(settings.seed)
        self.initial = init_weights if init_weights is not None else model_weights(Student(config))
        self.param_names = {n for n, _ in Student(config).named_parameters()}
        self.trainers: list[Any] = []
        self.restarts = 0
        self.dead: set[int] = set()  # trainers whose actor died, until their replacement's first gradient
        self.back_ts: list[float] = []
        self.model_version = model_version or time.strftime("student-%Y%m%d-%H%M%S")
        self._scratch = tempfile.TemporaryDirectory(prefix="pedstream-train-")
        self.work_dir = Path(self._scratch.name)  # the trainers' example shards

    # --- actors ---------------------------------------------------------------------------------

    def _start_shards(self) -> None:
        self.shard_names = split_into_shards(self.initial, self.settings.ps_shards)
        ckpt = str(self.checkpoint_dir) if self.checkpoint_dir else None
        if self.checkpoint_dir:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.shards = []
        for i, names in enumerate(self.shard_names):
            initial = self.work_dir / f"ps-shard-{i}-initial.pkl"
            save_weights({n: self.initial[n] for n in names}, initial)
            self.shards.append(
                ParameterShard.remote(i, str(initial), self.settings.policy, ckpt)  # type: ignore[attr-defined]  # ray.remote adds .remote
            )

    def _data_shard(self, index: int, of: int) -> list[Example]:
        shard = self.examples[index::of]
        return shard if len(shard) >= self.settings.batch_size else self.examples

    def _add_trainer(self) -> None:
        index = len(self.trainers)
        total = max(self.settings.workers, index + 1)
        path = self.work_dir / f"examples-{index}-of-{total}.pkl"
        save_examples(self._data_shard(index, total), path)
        self.trainers.append(
            Trainer.remote(  # type: ignore[attr-defined]  # ray.remote adds .remote
                str(path),
                self.config,
                self.settings.batch_size,
                self.settings.augment,
                self.settings.seed * 1000 + index + 1,
                self.settings.freeze_batchnorm,
            )
        )

    def trainer_pids(self) -> list[int]:
        return ray.get([t.pid.remote() for t in self.trainers], timeout=self.settings.timeout_s)

    def _pull(self, averaged: bool = False) -> tuple[int, Weights]:
        """The weights of every shard (``averaged``: what the job ships, see ``StalenessPolicy.average_decay``)."""
        pulled = ray.get([(s.pull_averaged if averaged else s.pull).remote() for s in self.shards], timeout=self.settings.timeout_s)
        weights: Weights = {}
        for _version, part in pulled:
            weights.update(part)
        return pulled[0][0], weights

    def _apply(self, grads: Weights, buffers: Weights, based_on: int, update: int) -> tuple[bool, int, int, Weights]:
        """Push one gradient to every shard: (applied, staleness, new version, new weights)."""
        norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads.values())))
        scale = self.settings.lr_scale(update)
        calls = []
        for shard, names in zip(self.shards, self.shard_names, strict=False):
            calls.append(
                shard.push.remote(
                    {n: grads[n] for n in names if n in grads}, based_on, norm, {n: buffers[n] for n in names if n in buffers}, scale
                )
            )
        replies = ray.get(calls, timeout=self.settings.timeout_s)
        weights: Weights = {}
        for _result, _version, part in replies:
            weights.update(part)
        first = replies[0][0]
        return first.applied, first.staleness, replies[0][1], weights

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> JobResult:
        s = self.settings
        self._start_shards()
        for _ in range(s.workers):
            self._add_trainer()
        self.trainer_pids()  # wait until every trainer has started (and loaded its examples)
        self.losses: list[float] = []
        self.loss_curve: list[tuple[int, float, float]] = []
        self.ap_curve: list[tuple[int, float, float]] = []
        self.staleness: list[int] = []
        self.dropped = 0
        self.samples = 0
        self.seconds_to_loss: float | None = None
        self.smoothed: float | None = None
        self.contributions: dict[int, int] = {}
        self.t0 = time.perf_counter()
        try:
            if s.mode == "async":
                self._run_async()
            else:
                self._run_sync()
            seconds = time.perf_counter() - self.t0
            self.trainer_count = len(self.trainers)
            return self._finish(seconds)
        finally:
            self.close()

    def close(self) -> None:
        """End this job's actors so their CPUs are free for the next job on the cluster."""
        for actor in [*self.trainers, *getattr(self, "shards", [])]:
            ray.kill(actor, no_restart=True)
        self.trainers, self.shards = [], []
        self._scratch.cleanup()

    def _finish(self, seconds: float) -> JobResult:
        s = self.settings
        ray.get([shard.checkpoint.remote() for shard in self.shards], timeout=s.timeout_s)
        shard_stats = ray.get([shard.stats.remote() for shard in self.shards], timeout=s.timeout_s)
        _version, weights = self._pull(averaged=True)
        ap50 = recall = None
        onnx_bytes = b""
        if self.held_out is None:
            model = Student(self.config)
            load_weights(model, weights)
            onnx_bytes = export_onnx(model, self.model_version)
        if self.held_out is not None:
            ap50, recall, onnx_bytes = evaluate_weights(weights, self.config, self.held_out, self.model_version)
            self.ap_curve.append((self.updates, seconds, ap50))
        st = np.asarray(self.staleness or [0])
        return JobResult(
            settings={**asdict(s), "input_size": [self.config.input_width, self.config.input_height], "examples": len(self.examples)},
            updates=self.updates,
            samples=self.samples,
            seconds=round(seconds, 3),
            updates_per_s=round(self.updates / seconds, 3),
            samples_per_s=round(self.samples / seconds, 2),
            seconds_to_loss=None if self.seconds_to_loss is None else round(self.seconds_to_loss, 2),
            final_loss=round(float(self.smoothed or 0.0), 4),
            ap50=ap50,
            recall=recall,
            trainer_restarts=self.restarts,
            trainer_back_ts=self.back_ts,
            dropped_stale=self.dropped,
            staleness={"mean": round(float(st.mean()), 3), "p99": float(np.percentile(st, 99)), "max": int(st.max())},
            loss_curve=self.loss_curve,
            ap_curve=self.ap_curve,
            shards=shard_stats,
            gradients_per_trainer=[self.contributions.get(i, 0) for i in range(self.trainer_count)],
            model_onnx=onnx_bytes,
            weights=weights,
        )

    def _record(self, loss: float, samples: int, staleness: int, applied: bool) -> None:
        s = self.settings
        self.samples += samples
        self.staleness.append(staleness)
        if not applied:
            self.dropped += 1
            metrics.observe_gradient(None, samples, staleness, applied)
            return
        self.updates += 1
        self.smoothed = loss if self.smoothed is None else 0.95 * self.smoothed + 0.05 * loss
        metrics.observe_gradient(self.smoothed, samples, staleness, applied)
        elapsed = time.perf_counter() - self.t0
        self.loss_curve.append((self.updates, round(elapsed, 3), round(self.smoothed, 4)))
        if s.target_loss is not None and self.seconds_to_loss is None and self.updates >= 10 and self.smoothed <= s.target_loss:
            self.seconds_to_loss = elapsed
        ap50 = None
        if self.held_out is not None and s.eval_every and self.updates % s.eval_every == 0 and self.updates < s.updates:
            _v, weights = self._pull(averaged=True)
            ap50, _recall, _ = evaluate_weights(weights, self.config, self.held_out)
            self.ap_curve.append((self.updates, round(elapsed, 3), ap50))
            metrics.HELD_OUT_AP50.labels("held-out", "job").set(ap50)
        if s.checkpoint_every and self.updates % s.checkpoint_every == 0:
            ray.get([shard.checkpoint.remote() for shard in self.shards], timeout=s.timeout_s)
        if s.join_after is not None and self.updates == s.join_after:
            self._add_trainer()
        if self.on_progress:
            self.on_progress(Progress(self.updates, s.updates, self.smoothed, ap50, elapsed, self.restarts, len(self.trainers)))
        if self.on_update:
            self.on_update(self, self.updates)

    def _get(self, ref: ray.ObjectRef[Any], index: int) -> tuple[Any, ...] | None:
        """Trainer ``index``'s reply, or None when its actor died (Ray restarts it; the caller resubmits)."""
        try:
            reply: tuple[Any, ...] = ray.get(ref, timeout=self.settings.timeout_s)
        except (RayActorError, ActorUnavailableError):
            self.restarts += 1
            self.dead.add(index)
            return None
        if index in self.dead:
            self.dead.discard(index)
            self.back_ts.append(time.time())
        return reply

    def _run_async(self) -> None:
        s = self.settings
        self.updates = 0
        version, weights = self._pull()
        weights_ref = ray.put(weights)
        in_flight = {t.compute.remote(weights_ref, version): i for i, t in enumerate(self.trainers)}
        while self.updates < s.updates:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=s.timeout_s)
            if not ready:
                raise PedstreamError(f"no gradient in {s.timeout_s:.0f} s: are the trainers pending for CPUs? (ray status)")
            index = in_flight.pop(ready[0])
            reply = self._get(ready[0], index)
            if reply is not None:
                self.contributions[index] = self.contributions.get(index, 0) + 1
                grads, buffers, loss, based_on, samples = reply
                applied, staleness, version, weights = self._apply(grads, buffers, based_on, self.updates)
                weights_ref = ray.put(weights)
                before = len(self.trainers)
                self._record(loss, samples, staleness, applied)
                for new in range(before, len(self.trainers)):  # a trainer joined
                    in_flight[self.trainers[new].compute.remote(weights_ref, version)] = new
            if self.updates < s.updates:
                in_flight[self.trainers[index].compute.remote(weights_ref, version)] = index
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=s.timeout_s)  # no actor mid-task at the end

    def _run_sync(self) -> None:
        s = self.settings
        self.updates = 0
        while self.updates < s.updates:
            version, weights = self._pull()
            weights_ref = ray.put(weights)
            pending = {t.compute.remote(weights_ref, version): i for i, t in enumerate(self.trainers)}
            replies = []
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=s.timeout_s)
                if not ready:
                    raise PedstreamError(f"no gradient in {s.timeout_s:.0f} s: are the trainers pending for CPUs? (ray status)")
                index = pending.pop(ready[0])
                reply = self._get(ready[0], index)
                if reply is None:
                    pending[self.trainers[index].compute.remote(weights_ref, version)] = index
                else:
                    self.contributions[index] = self.contributions.get(index, 0) + 1
                    replies.append(reply)
            grads = {n: np.mean([r[0][n] for r in replies], axis=0) for n in replies[0][0]}
            buffers = {n: np.mean([r[1][n] for r in replies], axis=0).astype(replies[0][1][n].dtype) for n in replies[0][1]}
            loss = float(np.mean([r[2] for r in replies]))
            applied, staleness, _version, _weights = self._apply(grads, buffers, version, self.updates)
            self._record(loss, sum(r[4] for r in replies), staleness, applied)
