"""``pedstream bench detector``: fps and latency of each backend and batch size on real frames, in one run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detectors.backends.selection import choose_backend
from detectors.detector import Detector
from streams.mot import MotSequence


def _frames(sequence_dir: Path, count: int) -> list[np.ndarray]:
    sequence = MotSequence.load(sequence_dir)
    return [image for _, image in sequence.frames(1, count)]


def run(
    model_bytes: bytes,
    name: str,
    sequence_dir: Path,
    backends: list[str],
    batches: list[int],
    seconds: float = 8.0,
    threads: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Time ``detector.infer`` on preprocessed PETS frames for every (backend, batch), interleaving
    rounds so that load from other processes hits all of them alike."""
    detectors: dict[str, Detector] = {}
    reasons: dict[str, str] = {}
    for kind in backends:
        choice = choose_backend(kind, model_bytes, threads=threads)
        if choice.backend.name != kind:
            reasons[kind] = choice.reason
            continue
        detectors[kind] = Detector.from_bytes(model_bytes, backend=choice.backend, name=name)
        reasons[kind] = choice.reason
    images = _frames(sequence_dir, max(batches) * 4)
    samples: dict[tuple[str, int], list[float]] = {(k, b): [] for k in detectors for b in batches}
    inputs = {(k, b): detectors[k].preprocess(images[:b])[0] for k in detectors for b in batches}
    for key, batch in inputs.items():  # warm up
        detectors[key[0]].infer(batch)
    deadline = time.monotonic() + seconds * len(samples)
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        for key, batch in inputs.items():
            t0 = time.perf_counter()
            detectors[key[0]].infer(batch)
            samples[key].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
        if progress and rounds % 10 == 0:
            progress(f"{rounds} rounds")
    results: list[dict[str, Any]] = []
    for (kind, batch_size), ms in samples.items():
        arr = np.array(ms)
        results.append(
            {
                "backend": kind,
                "batch": batch_size,
                "fps": round(batch_size * 1000.0 / float(np.median(arr)), 2),
                "p50_ms": round(float(np.percentile(arr, 50)), 2),
                "p99_ms": round(float(np.percentile(arr, 99)), 2),
                "runs": len(ms),
            }
        )
    fps = {(r["backend"], r["batch"]): r["fps"] for r in results}
    ratio = fps[("tvm", 1)] / fps[("ort", 1)] if ("tvm", 1) in fps and ("ort", 1) in fps else None
    served = max(detectors, key=lambda k: fps.get((k, 1), 0.0)) if detectors else None
    return {
        "model": name,
        "results": results,
        "tvm_over_ort": round(ratio, 3) if ratio is not None else None,
        "served": served,
        "served_reason": (f"{served} has the higher batch-1 fps here" if served else None),
        "backend_notes": reasons,
        "tvm": detectors["tvm"].backend.describe() if "tvm" in detectors else None,
        "rounds": rounds,
    }
