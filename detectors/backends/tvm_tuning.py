"""MetaSchedule tuning of a model for this CPU, into a database on disk that TvmBackend then compiles with.

Tuning is a job (``pedstream tune``), meant to run once per device type on the training cluster;
the database (or the library compiled from it) ships to the edge. TVM imports every tensor
intrinsic it knows (CUDA, ARM, Hexagon, RISC-V, ROCm, x86: about 70 s on 2 cores) when a tuning
context is made and in every builder worker; for an x86 CPU target only the x86 ones can apply, so
``tune`` registers those alone (0.6 s) and its builder skips the import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.pipeline import zero_pipeline
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from detectors.backends.tvm import database_digest, host_target, import_relax
from detectors.backends.tvm_graph import DEFAULT_LAYOUT

log = logging.getLogger(__name__)


def register_intrinsics_for(target: tvm.target.Target) -> str:
    """Register the tensor intrinsics ``target`` can use before MetaSchedule imports them all:
    on an x86 CPU only the x86 ones (VNNI, AVX-512 dot products). Returns what was registered."""
    package = "tvm.s_tir.tensor_intrin"
    if package in sys.modules:
        return "already registered"
    if target.kind.name != "llvm" or platform.machine().lower() not in ("x86_64", "amd64"):
        __import__(package)
        return "all"
    import tvm.s_tir

    light = types.ModuleType(package)
    light.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    light.__package__ = package
    sys.modules[package] = light  # MetaSchedule's `import tvm.s_tir.tensor_intrin` now finds this
    __import__(f"{package}.x86")
    return "x86"


def build_without_intrinsics(mod: tvm.IRModule, target: tvm.target.Target, _params: object) -> tvm.runtime.Module:
    """MetaSchedule builder function: TVM's default build minus the slow tensor-intrinsics import."""
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.driver.build(mod, target=target)


def search_strategy(trials: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search with a population sized to the budget: the default 512
    candidates per round cost 30 s of search on 2 cores even when only a few trials are measured."""
    population = min(512, max(32, 4 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(50, population // 2))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """MetaSchedule writes its progress tables to standard output (from Python and C++): send them
    to standard error, where progress belongs, so that `--json` output stays JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def tune(
    model_bytes: bytes, work_dir: Path, trials: int, trials_per_task: int | None = None, seed: int = 0, layout: str = DEFAULT_LAYOUT
) -> dict[str, object]:
    """Tune every operator of the model (batch 1, this CPU) with ``trials`` measurements in all."""
    work_dir.mkdir(parents=True, exist_ok=True)
    target = host_target()
    mod, _, inputs, _ = import_relax(model_bytes, layout, target)
    intrinsics = register_intrinsics_for(target)
    with target:
        mod = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                zero_pipeline(),
            ]
        )(mod)
    started = time.perf_counter()
    with stdout_to_stderr():
        _tune_relax(mod, target, work_dir, trials, trials_per_task, seed)
    return {
        "work_dir": str(work_dir),
        "trials": trials,
        "seconds": round(time.perf_counter() - started, 1),
        "target": str(target),
        "tensor_intrinsics": intrinsics,
        "database": database_digest(work_dir),
        "inputs": [list(s.shape) for s in inputs],
    }


def _tune_relax(mod: tvm.IRModule, target: tvm.target.Target, work_dir: Path, trials: int, trials_per_task: int | None, seed: int) -> None:
    ms.relax_integration.tune_relax(
        mod,
        params={},
        target=target,
        work_dir=str(work_dir),
        max_trials_global=trials,
        max_trials_per_task=trials_per_task,
        num_trials_per_iter=min(64, max(4, trials // 8)),
        builder=ms.builder.LocalBuilder(f_build=build_without_intrinsics, max_workers=1),
        strategy=search_strategy(trials),
        runner=ms.runner.LocalRunner(),
        seed=seed,
    )
