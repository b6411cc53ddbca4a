"""Where inference time goes: a per-layer profile of ONNX Runtime and of TVM on the same input.

ONNX Runtime's own profiler times every kernel (``enable_profiling``); TVM's VM calls an
instrument around every compiled function. Both are reduced to the same rows: a layer (ORT node or
TVM fused function), its kind, milliseconds per inference and share of the total, largest first.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from detectors.backends.base import Backend
from detectors.backends.ort import OrtBackend

TOP_LAYERS = 12


def _rows(per_layer: dict[str, tuple[float, str, str]], runs: int, top: int) -> dict[str, Any]:
    """``per_layer``: name -> (seconds over all runs, kind, detail)."""
    total = sum(seconds for seconds, _, _ in per_layer.values()) / runs * 1000.0
    ranked = sorted(per_layer.items(), key=lambda kv: -kv[1][0])
    by_kind: dict[str, float] = {}
    for seconds, kind, _ in per_layer.values():
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds / runs * 1000.0
    return {
        "total_ms": round(total, 3),
        "layers": len(per_layer),
        "by_kind": [
            {"kind": k, "ms": round(v, 3), "share": round(v / total, 3)} for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        ],
        "top": [
            {
                "layer": name,
                "kind": kind,
                "detail": detail,
                "ms": round(seconds / runs * 1000.0, 3),
                "share": round(seconds / runs * 1000.0 / total, 3),
            }
            for name, (seconds, kind, detail) in ranked[:top]
        ],
    }


def profile_ort(model_bytes: bytes, feeds: dict[str, np.ndarray], threads: int, runs: int = 20, top: int = TOP_LAYERS) -> dict[str, Any]:
    """ONNX Runtime's kernel times (served settings) per node."""
    backend = OrtBackend(model_bytes, intra_threads=threads, profile=True)
    backend.run(feeds)
    for _ in range(runs):
        backend.run(feeds)
    trace = Path(backend.session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        os.unlink(trace)
    per_node: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        per_node.setdefault(name, []).append(event["dur"] / 1e6)
        kinds[name] = event.get("args", {}).get("op_name", "?")
    # the first (warm-up) run is in the trace too: keep the last `runs` calls of each node
    return _rows({n: (sum(t[-runs:]), kinds[n], "") for n, t in per_node.items()}, runs, top)


def _tvm_kind(name: str) -> str:
    """A compiled function's kind from its name: ``fused_conv2d3_add2_maximum1`` -> ``conv2d+add+maximum``."""
    if not name.startswith("fused_"):
        return name.split(".")[-1]
    return "+".join(re.sub(r"\d+$", "", part) for part in name[len("fused_") :].split("_") if part and not part.isdigit())


def profile_tvm(backend: Backend, feeds: dict[str, np.ndarray], runs: int = 20, top: int = TOP_LAYERS) -> dict[str, Any]:
    """TVM's time per compiled (fused) function, with its argument shapes."""
    measured = backend.profile(feeds, runs)  # type: ignore[attr-defined]
    return _rows({name: (seconds, _tvm_kind(name), shapes) for name, (seconds, _, shapes) in measured.items()}, runs, top)
