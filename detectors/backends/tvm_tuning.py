"""MetaSchedule tuning of a model for this CPU, into a database on disk that TvmBackend then compiles with.

Tuning is a job (``pedstream tune``), meant to run once per device type on the training cluster;
the database (or the library compiled from it) ships to the edge. The builder skips the 40-50 s
import of tensor intrinsics that TVM's default builder does in every worker.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.pipeline import zero_pipeline
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from detectors.backends.tvm import database_digest, host_target, import_relax

log = logging.getLogger(__name__)


def build_without_intrinsics(mod: tvm.IRModule, target: tvm.target.Target, _params: object) -> tvm.runtime.Module:
    """MetaSchedule builder function: TVM's default build minus the slow tensor-intrinsics import."""
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.driver.build(mod, target=target)


def tune(model_bytes: bytes, work_dir: Path, trials: int, trials_per_task: int | None = None, seed: int = 0) -> dict[str, object]:
    """Tune every operator of the model (batch 1, this CPU) with ``trials`` measurements in all."""
    work_dir.mkdir(parents=True, exist_ok=True)
    target = host_target()
    mod, _, inputs, _ = import_relax(model_bytes)
    with target:
        mod = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                zero_pipeline(),
            ]
        )(mod)
    started = time.perf_counter()
    ms.relax_integration.tune_relax(
        mod,
        params={},
        target=target,
        work_dir=str(work_dir),
        max_trials_global=trials,
        max_trials_per_task=trials_per_task,
        num_trials_per_iter=min(64, max(4, trials // 8)),
        builder=ms.builder.LocalBuilder(f_build=build_without_intrinsics, max_workers=1),
        runner=ms.runner.LocalRunner(),
        seed=seed,
    )
    return {
        "work_dir": str(work_dir),
        "trials": trials,
        "seconds": round(time.perf_counter() - started, 1),
        "target": str(target),
        "database": database_digest(work_dir),
        "inputs": [list(s.shape) for s in inputs],
    }
