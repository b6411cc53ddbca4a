"""The Ray actors of a training job: parameter-server shards and trainers (wrapping ``trainer.ps``).

A shard holds some of the parameters and applies every gradient to them on arrival (Ray runs an
actor's methods one at a time, so no lock); it checkpoints to disk and reloads its checkpoint when
Ray restarts it. A trainer holds one data-parallel shard of the examples and turns weights into a
gradient; Ray restarts a crashed trainer (``max_restarts=-1``) and the driver hands it work again.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import ray

from trainer.data import Augment, Example
from trainer.ps import GradientWorker, ParameterServer, PushResult, StalenessPolicy, Weights
from trainer.student import StudentConfig


def save_weights(weights: Weights, path: Path) -> None:
    path.write_bytes(pickle.dumps(dict(weights), protocol=pickle.HIGHEST_PROTOCOL))


def load_weights_file(path: Path) -> Weights:
    weights: Weights = pickle.loads(path.read_bytes())
    return weights


def save_examples(examples: list[Example], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(examples, protocol=pickle.HIGHEST_PROTOCOL))
    tmp.replace(path)


def load_examples(path: Path) -> list[Example]:
    examples: list[Example] = pickle.loads(path.read_bytes())
    return examples


def split_into_shards(weights: Weights, shards: int) -> list[list[str]]:
    """Parameter names per shard, balanced by size (largest first onto the lightest shard)."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    groups: list[list[str]] = [[] for _ in range(shards)]
    sizes = [0] * shards
    for name in sorted(weights, key=lambda n: -weights[n].size):
        lightest = sizes.index(min(sizes))
        groups[lightest].append(name)
        sizes[lightest] += weights[name].size
    return groups


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ParameterShard:
    """One shard of the parameter server. Its starting weights come from a file (``save_weights``),
    as the trainers' examples do: Ray keeps an actor's constructor arguments to restart it, and
    large ones live in the object store, where a restart cannot count on them."""

    def __init__(self, index: int, weights_path: str, policy: StalenessPolicy, checkpoint_dir: str | None) -> None:
        self.index = index
        self.path = Path(checkpoint_dir) / f"ps-shard-{index}.ckpt" if checkpoint_dir else None
        if self.path is not None and self.path.is_file():
            self.server = ParameterServer.restore(self.path, policy)
            self.restored_from: int | None = self.server.version
        else:
            self.server = ParameterServer(load_weights_file(Path(weights_path)), policy)
            self.restored_from = None

    def push(self, grads: Weights, based_on: int, grad_norm: float, buffers: Weights, lr_scale: float) -> tuple[PushResult, int, Weights]:
        """Apply one gradient; return the result and the shard's new (version, weights)."""
        result = self.server.push(grads, based_on, grad_norm, buffers, lr_scale)
        return result, self.server.version, self.server.weights

    def pull(self) -> tuple[int, Weights]:
        return self.server.pull()

    def pull_averaged(self) -> tuple[int, Weights]:
        return self.server.pull_averaged()

    def checkpoint(self) -> int:
        if self.path is not None:
            self.server.checkpoint(self.path)
        return self.server.version

    def stats(self) -> dict[str, object]:
        s = self.server
        return {
            "shard": self.index,
            "version": s.version,
            "applied": s.applied,
            "dropped": s.dropped,
            "parameters": int(sum(w.size for w in s.weights.values())),
            "restored_from": self.restored_from,
            "pid": os.getpid(),
        }


@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)
class Trainer:
    """A data-parallel trainer on its shard of the examples, read from a file: Ray keeps an actor's
    constructor arguments to restart it, and large in-memory arguments do not survive a restart."""

    def __init__(
        self, examples_path: str, config: StudentConfig, batch_size: int, augment: Augment, seed: int, freeze_batchnorm: bool = False
    ) -> None:
        examples = load_examples(Path(examples_path))
        self.worker = GradientWorker(examples, config, batch_size, augment, seed, freeze_batchnorm)
        self.batch_size = min(batch_size, len(examples))

    def compute(self, weights: Weights, version: int) -> tuple[Weights, Weights, float, int, int]:
        """(gradients, batch-norm buffers, loss, version used, samples in the batch)."""
        grads, buffers, loss, based_on = self.worker.compute({k: np.array(v) for k, v in weights.items()}, version)
        return grads, buffers, loss, based_on, self.batch_size

    def pid(self) -> int:
        return os.getpid()
