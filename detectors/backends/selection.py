"""Choosing a backend: ONNX Runtime, TVM, or whichever measures faster on this device, always with a reason."""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detectors.backends.base import Backend, BackendError, TensorSpec
from detectors.backends.ort import OrtBackend

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("ort", "tvm", "auto")


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    reason: str
    measured_ms: dict[str, float]


def sample_feeds(inputs: list[TensorSpec], fallback_hw: tuple[int, int] = (320, 320), seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching a signature (batch 1; symbolic sizes filled from ``fallback_hw``)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        dims = list(spec.shape)
        unknown = iter(fallback_hw)
        shape = [1 if i == 0 and d is None else (d if d is not None else next(unknown, 3)) for i, d in enumerate(dims)]
        if spec.dtype == "uint8":
            feeds[spec.name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def time_backend(backend: Backend, feeds: dict[str, np.ndarray], runs: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of ``backend.run`` on ``feeds``."""
    for _ in range(warmup):
        backend.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.run(feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def tvm_module(name: str = "tvm") -> Any:
    """``detectors.backends.<name>`` (a TVM module). TVM is imported only through here: it is
    optional and slow to import (seconds); without it pedstream serves with ONNX Runtime and says so."""
    try:
        return importlib.import_module(f"detectors.backends.{name}")
    except ImportError as exc:
        raise BackendError(f"TVM is not installed ({exc})") from None


def make_tvm(model_bytes: bytes, cache_dir: Path | None = None, tuning_dir: Path | None = None, threads: int = 0) -> Backend:
    """A TVM backend compiled here (or loaded from this machine's cache)."""
    backend: Backend = tvm_module().TvmBackend(model_bytes, cache_dir=cache_dir, tuning_dir=tuning_dir, threads=threads)
    return backend


def faster_of(ort_backend: Backend, tvm_backend: Backend, runs: int = 5) -> BackendChoice:
    """Measure both on this device (same random input) and choose the faster, saying why."""
    feeds = sample_feeds(tvm_backend.inputs)
    measured = {"ort": time_backend(ort_backend, feeds, runs), "tvm": time_backend(tvm_backend, feeds, runs)}
    faster = min(measured, key=lambda k: measured[k])
    reason = (
        f"{faster} is faster on this device: ort {measured['ort']:.1f} ms vs tvm {measured['tvm']:.1f} ms "
        f"per image ({tvm_backend.describe()['schedule']} schedule)"
    )
    log.info(reason)
    return BackendChoice(ort_backend if faster == "ort" else tvm_backend, reason, measured)


def choose_from_artifact(kind: str, model_bytes: bytes, artifact: bytes | None, missing_reason: str, threads: int = 0) -> BackendChoice:
    """The edge's choice on a hot swap: TVM only from a library compiled elsewhere (``artifact``,
    verified by the caller), never compiled here; ``auto`` measures it against ONNX Runtime."""
    ort_backend = OrtBackend(model_bytes, intra_threads=threads)
    if kind == "ort":
        return BackendChoice(ort_backend, "ONNX Runtime requested", {})
    if artifact is None:
        return BackendChoice(ort_backend, f"serving with ONNX Runtime: {missing_reason}", {})
    try:
        tvm_backend: Backend = tvm_module("tvm_artifacts").load(artifact, model_bytes, threads)
    except BackendError as exc:
        return BackendChoice(ort_backend, f"serving with ONNX Runtime: the compiled TVM library does not load here: {exc}", {})
    if kind == "tvm":
        return BackendChoice(tvm_backend, "TVM requested (compiled library loaded)", {})
    return faster_of(ort_backend, tvm_backend)


def choose_backend(
    kind: str,
    model_bytes: bytes,
    threads: int = 0,
    cache_dir: Path | None = None,
    tuning_dir: Path | None = None,
    runs: int = 5,
) -> BackendChoice:
    """Build the backend ``kind`` asks for. ``tvm`` falls back to ONNX Runtime with the reason when TVM
    cannot import or compile the model; ``auto`` measures both here and serves with the faster."""
    if kind not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {kind!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if kind == "ort":
        return BackendChoice(OrtBackend(model_bytes, intra_threads=threads), "ONNX Runtime requested", {})
    try:
        tvm_backend = make_tvm(model_bytes, cache_dir, tuning_dir, threads)
    except BackendError as exc:
        reason = f"TVM unavailable for this model, serving with ONNX Runtime: {exc}"
        log.warning(reason)
        return BackendChoice(OrtBackend(model_bytes, intra_threads=threads), reason, {})
    if kind == "tvm":
        return BackendChoice(tvm_backend, "TVM requested", {})
    return faster_of(OrtBackend(model_bytes, intra_threads=threads), tvm_backend, runs)
