"""The parameter server and the trainer's gradient step, as plain classes (Ray wraps them at start-up).

Asynchronous updates: a trainer computes a gradient on weights of some version; by the time it
arrives the server may have moved on. The staleness (server version minus the gradient's) scales
the learning rate down (lr / (1 + staleness)); gradients staler than the bound are dropped.
Weights travel as numpy arrays keyed by parameter name; a server may hold one shard of them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.data import Augment, Example, make_batch
from trainer.student import Student, StudentConfig
from trainer.targets import student_loss

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class StalenessPolicy:
    """How the server treats gradients: the optimiser (Adam, or SGD with momentum), clipping by global
    norm, a staleness-scaled learning rate and a staleness bound."""

    lr: float = 0.002
    momentum: float = 0.5  # SGD only
    clip_norm: float = 5.0
    staleness_bound: int = 8
    optimizer: str = "adam"  # or "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    # the server also keeps an exponential moving average of the weights (YOLOX's "EMA"), updated after
    # every applied gradient with this decay (bias-corrected, see _update_average); the job ships the
    # average. 0: no average, the job ships the last weights
    average_decay: float = 0.0
    # learning-rate multipliers by weight-name prefix, first match wins (("trunk.", 0.1): the
    # pretrained trunk moves a tenth as fast as the head trained from scratch); others get 1
    lr_scale_by_prefix: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for prefix, scale in self.lr_scale_by_prefix:
            if not prefix or not 0.0 <= scale <= 1.0:
                raise ValueError(f"lr_scale_by_prefix needs a prefix and a scale in [0, 1], not {prefix!r}: {scale}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, not {self.optimizer!r}")
        if not 0.0 <= self.average_decay < 1.0:
            raise ValueError(f"average_decay must be in [0, 1), not {self.average_decay}")

    def rate(self, staleness: int) -> float:
        """The learning rate for a gradient ``staleness`` versions old."""
        return self.lr / (1 + max(0, staleness))

    def scale_of(self, name: str) -> float:
        """The learning-rate multiplier of the weight called ``name``."""
        return next((scale for prefix, scale in self.lr_scale_by_prefix if name.startswith(prefix)), 1.0)


@dataclass
class PushResult:
    applied: bool
    staleness: int
    lr: float
    version: int


@dataclass
class ParameterServer:
    """Holds (a shard of) the weights and applies gradients on arrival, one at a time."""

    weights: Weights
    policy: StalenessPolicy = StalenessPolicy()
    version: int = 0
    velocity: Weights = field(default_factory=dict)  # SGD momentum, or Adam's first moment
    second_moment: Weights = field(default_factory=dict)  # Adam only
    applied: int = 0
    dropped: int = 0
    staleness_seen: list[int] = field(default_factory=list)
    averaged: Weights = field(default_factory=dict)  # the moving average of the weights (policy.average_decay)

    def pull(self) -> tuple[int, Weights]:
        return self.version, self.weights

    def pull_averaged(self) -> tuple[int, Weights]:
        """The weights to ship: their moving average when the policy keeps one, else the weights."""
        return self.version, self.averaged or self.weights

    def _update_average(self) -> None:
        # the bias-corrected average (as Adam corrects its moments): after n updates each weight
        # w_k counts in proportion to decay**(n - k), so the average spans about 1 / (1 - decay)
        # updates from the first ones on. (TensorFlow's num_updates ramp, min(decay, (1+n)/(10+n)),
        # capped any decay above 0.995 at about 0.9955 over a 2000-update job, so 0.998 averaged
        # no longer than 0.995 did.)
        target = self.policy.average_decay
        decay = 1.0 - (1.0 - target) / (1.0 - target**self.applied)
        for name, value in self.weights.items():
            previous = self.averaged.get(name)
            if previous is None or not np.issubdtype(value.dtype, np.floating):
                self.averaged[name] = value.copy()  # counters (batch-norm's num_batches_tracked) are taken as they are
            else:
                self.averaged[name] = (decay * previous + (1 - decay) * value).astype(value.dtype)

    def push(
        self, grads: Weights, based_on: int, grad_norm: float | None = None, buffers: Weights | None = None, lr_scale: float = 1.0
    ) -> PushResult:
        """Apply one gradient computed on weights of version ``based_on``.

        ``grad_norm`` is the gradient's global norm over every shard (for clipping across shards);
        by default this shard's own norm. ``buffers`` are the trainer's batch-norm statistics after
        its forward pass (one running-average step from the weights it was given); they replace
        this shard's when the gradient is applied.
        """
        staleness = self.version - based_on
        self.staleness_seen.append(staleness)
        if staleness > self.policy.staleness_bound:
            self.dropped += 1
            return PushResult(False, staleness, 0.0, self.version)
        norm = grad_norm if grad_norm is not None else float(np.sqrt(sum(float((g * g).sum()) for g in grads.values())))
        scale = min(1.0, self.policy.clip_norm / max(norm, 1e-12))
        lr = self.policy.rate(staleness) * lr_scale
        step = self.applied + 1
        for name, grad in grads.items():
            grad = grad * scale
            name_lr = lr * self.policy.scale_of(name)
            if self.policy.optimizer == "sgd":
                v = self.velocity.get(name)
                v = grad if v is None else self.policy.momentum * v + grad
                self.velocity[name] = v
                self.weights[name] = self.weights[name] - name_lr * v
            else:
                b1, b2 = self.policy.betas
                m = b1 * self.velocity.get(name, 0.0) + (1 - b1) * grad
                v = b2 * self.second_moment.get(name, 0.0) + (1 - b2) * grad * grad
                self.velocity[name], self.second_moment[name] = m, v
                update = (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + 1e-8)
                self.weights[name] = (self.weights[name] - name_lr * update).astype(self.weights[name].dtype)
        for name, value in (buffers or {}).items():
            if name in self.weights:
                self.weights[name] = value
        self.version += 1
        self.applied += 1
        if self.policy.average_decay:
            self._update_average()
        return PushResult(True, staleness, lr, self.version)

    def checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(
            pickle.dumps(
                {
                    "weights": self.weights,
                    "velocity": self.velocity,
                    "second_moment": self.second_moment,
                    "version": self.version,
                    "applied": self.applied,
                    "averaged": self.averaged,
                }
            )
        )
        tmp.replace(path)

    @classmethod
    def restore(cls, path: Path, policy: StalenessPolicy) -> ParameterServer:
        state = pickle.loads(path.read_bytes())
        return cls(
            state["weights"], policy, state["version"], state["velocity"], state["second_moment"], state["applied"],
            averaged=state.get("averaged", {}),
        )  # fmt: skip


def model_weights(model: torch.nn.Module) -> Weights:
    """Every trainable parameter and buffer (batch-norm statistics) as numpy arrays."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def load_weights(model: torch.nn.Module, weights: Weights) -> None:
    model.load_state_dict({name: torch.from_numpy(np.array(w)) for name, w in weights.items()}, strict=False)


class GradientWorker:
    """A trainer: takes weights, computes the loss gradient on a mini-batch of its data shard."""

    def __init__(
        self, examples: list[Example], config: StudentConfig, batch_size: int, augment: Augment, seed: int, freeze_batchnorm: bool = False
    ) -> None:
        torch.set_num_threads(1)
        self.freeze_batchnorm = freeze_batchnorm  # fine-tuning: normalise with the start model's statistics
        self.examples = examples
        # channels-last: 8-10% less time per forward and backward pass on a CPU (same numbers)
        self.model = Student(config)
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.batch_size = batch_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.param_names = [n for n, _ in self.model.named_parameters()]

    def compute(self, weights: Weights, version: int) -> tuple[Weights, Weights, float, int]:
        """(gradients, updated batch-norm buffers, loss, version the gradient is based on)."""
        load_weights(self.model, weights)
        self.model.train()
        if self.freeze_batchnorm:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        picks = self.rng.choice(len(self.examples), size=min(self.batch_size, len(self.examples)), replace=False)
        images, targets = make_batch(
            [self.examples[i] for i in picks],
            self.model.config.input_width,
            self.model.config.input_height,
            self.augment,
            self.rng,
            stride=self.model.config.head_stride,
            tall_from=self.model.config.tall_from,
        )
        self.model.zero_grad()
        loss = student_loss(self.model.levels(images.contiguous(memory_format=torch.channels_last)), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        grads = {n: p.grad.detach().numpy().copy() for n, p in self.model.named_parameters() if p.grad is not None}
        buffers = {n: b.detach().numpy().copy() for n, b in self.model.named_buffers()}
        return grads, buffers, float(loss.item()), version
