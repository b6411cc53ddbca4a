"""``pedstream bench tvm-levers``: every TVM lever against ONNX Runtime on one model, in one run.

Rows: ONNX Runtime as served (zero pads folded, worker threads not spinning), with spinning, and
on the graph as exported; TVM before this work's graph changes (NCHW, ``loops-v1``), channels-last
alone, channels-last with the register-blocked schedule (the default), and that plus MetaSchedule
at each trial budget. Every row is timed at every thread count, rounds interleaved so that load
from other processes hits all alike; each row's outputs are compared with ONNX Runtime's. The
default configuration is then profiled layer by layer on both runtimes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectors.backends.base import Backend
from detectors.backends.ort import OrtBackend
from detectors.backends.profiling import profile_ort, profile_tvm
from detectors.backends.selection import sample_feeds


@dataclass
class Lever:
    name: str
    runtime: str
    settings: str
    make: Callable[[int], Backend]  # threads -> backend (ORT: one session per thread count)
    compile_s: float = 0.0
    tune_s: float | None = None
    backends: dict[int, Backend] = field(default_factory=dict)
    samples: dict[int, list[float]] = field(default_factory=dict)
    max_abs_diff: float = 0.0


def _tvm_levers(model_bytes: bytes, trials: list[int], cache_dir: Path, progress: Callable[[str], None]) -> list[Lever]:
    from detectors.backends.tvm import TvmBackend, set_threads
    from detectors.backends.tvm_tuning import tune

    def compiled(**kwargs: Any) -> Callable[[int], Backend]:
        backend: TvmBackend | None = None

        def make(threads: int) -> Backend:
            nonlocal backend
            if backend is None:
                backend = TvmBackend(model_bytes, cache_dir=cache_dir, **kwargs)
            set_threads(threads)  # one pool per process: switched before each timed call
            return backend

        return make

    levers = [
        Lever("tvm-nchw-loops", "tvm", "NCHW, loops-v1 schedule (the previous default)", compiled(layout="NCHW", rule_schedule="loops-v1")),
        Lever("tvm-nhwc-loops", "tvm", "channels-last, loops-v1 schedule", compiled(layout="NHWC", rule_schedule="loops-v1")),
        Lever(
            "tvm-nhwc-blocked-v3",
            "tvm",
            "channels-last, register-blocked, padding a separate pass, AVX2 tile (the previous default)",
            compiled(rule_schedule="blocked-v3"),
        ),
        Lever(
            "tvm-nhwc-blocked",
            "tvm",
            "channels-last, padding inlined, register tiles sized to the CPU, over the thread pool (default)",
            compiled(),
        ),
        Lever(
            "tvm-nhwc-blocked-serial",
            "tvm",
            "channels-last, register-blocked tiles on one core",
            compiled(rule_schedule="blocked-serial-v4"),
        ),
    ]
    for budget in trials:
        if budget <= 0:
            continue
        work_dir = cache_dir / f"tuning-{budget}"
        progress(f"MetaSchedule, {budget} trials")
        started = time.perf_counter()
        tune(model_bytes, work_dir, budget)
        lever = Lever(
            f"tvm-nhwc-ms{budget}",
            "tvm",
            f"channels-last, MetaSchedule {budget} trials + blocked for the rest",
            compiled(tuning_dir=work_dir),
        )
        lever.tune_s = round(time.perf_counter() - started, 1)
        levers.append(lever)
    return levers


def run(
    model_bytes: bytes,
    name: str,
    threads: list[int],
    trials: list[int],
    seconds: float = 3.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    cache_dir = Path(tempfile.mkdtemp(prefix="pedstream-levers-"))
    levers = [
        Lever("ort", "ort", "as served: zero pads folded, threads not spinning", lambda t: OrtBackend(model_bytes, intra_threads=t)),
        Lever(
            "ort-spinning", "ort", "threads spinning between operators", lambda t: OrtBackend(model_bytes, intra_threads=t, spinning=True)
        ),
        Lever(
            "ort-exported-graph",
            "ort",
            "the graph as exported (pads not folded)",
            lambda t: OrtBackend(model_bytes, intra_threads=t, fold_pads=False),
        ),
    ]
    levers += _tvm_levers(model_bytes, trials, cache_dir, progress)
    feeds: dict[str, np.ndarray] | None = None
    reference: list[np.ndarray] = []
    for lever in levers:
        progress(f"building {lever.name}")
        started = time.perf_counter()
        for t in threads:
            lever.backends[t] = lever.make(t)
            lever.samples[t] = []
        lever.compile_s = round(time.perf_counter() - started, 2)
        backend = lever.make(threads[-1])
        if feeds is None:
            feeds = sample_feeds(backend.inputs)
            reference = backend.run(feeds)
        lever.max_abs_diff = max(float(np.abs(a - b).max()) for a, b in zip(backend.run(feeds), reference, strict=False))
    assert feeds is not None
    deadline = time.monotonic() + seconds * len(levers) * len(threads)
    rounds = 0
    while time.monotonic() < deadline or rounds < 3:
        for lever in levers:
            for t in threads:
                backend = lever.make(t) if lever.runtime == "tvm" else lever.backends[t]
                t0 = time.perf_counter()
                backend.run(feeds)
                lever.samples[t].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
    ort_ms = {t: float(np.median(levers[0].samples[t])) for t in threads}
    rows: list[dict[str, Any]] = []
    for lever in levers:
        for t in threads:
            ms = float(np.median(lever.samples[t]))
            rows.append(
                {
                    "lever": lever.name,
                    "runtime": lever.runtime,
                    "settings": lever.settings,
                    "threads": t,
                    "p50_ms": round(ms, 2),
                    "fps": round(1000.0 / ms, 1),
                    "speed_vs_ort": round(ort_ms[t] / ms, 3),
                    "build_s": lever.compile_s,
                    "tune_s": lever.tune_s,
                    "max_abs_diff_vs_ort": lever.max_abs_diff,
                }
            )
    default = next(lv for lv in levers if lv.name == "tvm-nhwc-blocked")
    progress("profiling")
    profile = {
        "threads": threads[-1],
        "ort": profile_ort(model_bytes, feeds, threads[-1]),
        "tvm": profile_tvm(default.make(threads[-1]), feeds),
    }
    best_tvm = min((r for r in rows if r["runtime"] == "tvm"), key=lambda r: r["p50_ms"])
    return {
        "model": name,
        "input": {k: list(v.shape) for k, v in feeds.items()},
        "rounds": rounds,
        "rows": rows,
        "best_tvm": {k: best_tvm[k] for k in ("lever", "threads", "p50_ms", "speed_vs_ort")},
        "ort_ms": {str(t): round(v, 2) for t, v in ort_ms.items()},
        "profile": profile,
        "not_tried": {"int8": "TVM imports a QDQ model as float ops around quantize/dequantize: no int8 kernels on this path yet"},
    }
