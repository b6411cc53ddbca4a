"""Compiling approved versions for the edge: TVM libraries per device target, published signed.

Tuning and compiling take seconds to minutes of CPU: they belong here, beside training, not on an
edge node while it serves. Which targets: the ones edge agents declare in their status
(``tvm_target``), plus any named by the operator (``host``: this machine's CPU). This trainer builds
for targets it can also run (its own CPU type); any other declared target is reported as skipped,
with the reason, and its agents stay on ONNX Runtime.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from detectors.backends.onnx_graph import is_quantized
from trainer.registry import Registry

log = logging.getLogger(__name__)


def declared_targets(registry: Registry) -> dict[str, str]:
    """Target id -> target JSON, for every target an edge agent declared."""
    out = {}
    for status in registry.agents().values():
        declared = status.get("tvm_target") or {}
        if "id" in declared and "target" in declared:
            out[str(declared["id"])] = str(declared["target"])
    return out


def compile_version(registry: Registry, version: str, targets: dict[str, str] | None = None, trials: int = 0) -> dict[str, Any]:
    """Compile ``version`` (approved) for ``targets`` (id -> target JSON; default: the declared ones
    and this host's), tuning with MetaSchedule first when ``trials`` > 0, and publish each library.
    Returns what was published and what was skipped, with times and sizes."""
    from detectors.backends import tvm_artifacts
    from detectors.backends.tvm import TvmBackend, host_target
    from detectors.backends.tvm_tuning import tune

    host_id = tvm_artifacts.target_id()
    wanted = dict(targets) if targets is not None else {**declared_targets(registry), host_id: str(host_target())}
    published, skipped = [], {}
    model = registry.onnx(version)
    if is_quantized(model):  # ONNX Runtime's int8 kernels serve it; TVM here compiles float graphs
        return {"version": version, "published": [], "skipped": dict.fromkeys(wanted, "an int8 model: ONNX Runtime serves it")}
    for target_id, target_json in sorted(wanted.items()):
        if registry.client.hexists(registry.keys.artifacts(version), target_id):
            skipped[target_id] = "already published"
            continue
        if target_id != host_id:
            skipped[target_id] = f"this trainer builds for its own CPU target ({host_id}) only: {target_json[:120]}"
            log.warning("not compiling %s for target %s: %s", version, target_id, skipped[target_id])
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pedstream-compile-") as tmp:
            tuning_dir = None
            if trials > 0:
                tuning_dir = Path(tmp) / "tuning"
                tune(model, tuning_dir, trials)
            backend = TvmBackend(
                model, cache_dir=Path(tmp) / "cache", tuning_dir=tuning_dir, target=tvm_artifacts.target_from_json(target_json)
            )
            data = tvm_artifacts.pack(backend, tuning_dir)
            settings = {
                "layout": backend.layout,
                "schedule": backend.schedule,
                "trials": str(trials),
                "tuning_records": str(len(tvm_artifacts.tuning_records(data))),
            }
        artifact = registry.store_artifact(version, target_json, target_id, data, settings, time.perf_counter() - started)
        log.info(
            "compiled %s for target %s in %.1f s (%d bytes); published %.1f s after approval",
            version,
            target_id,
            artifact.compile_s,
            artifact.size_bytes,
            artifact.published_ts - artifact.approved_ts,
        )
        published.append(
            {
                "target_id": target_id,
                "size_bytes": artifact.size_bytes,
                "compile_s": artifact.compile_s,
                "approval_to_published_s": round(artifact.published_ts - artifact.approved_ts, 2),
                **settings,
            }
        )
    return {"version": version, "published": published, "skipped": skipped}
