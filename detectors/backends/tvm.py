"""Apache TVM (Relax) backend: import ONNX, compile for this CPU, cache the library, reload without compiling.

Compiled artefacts are cached under ``cache_dir/<key>/`` where the key covers the model's sha256,
the target (with the host's ``-mcpu``), the layout, and the schedule (a rule-based one, or the
MetaSchedule tuning database). A cached library loads with the TVM runtime alone. Graph-level
choices (layout, pad folding, ReLU6 fusion) live in ``tvm_graph``; loop schedules in ``tvm_schedule``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))  # TVM reads it once, at import

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402
from tvm.relax.pipeline import zero_pipeline  # noqa: E402
from tvm.target import codegen  # noqa: E402

from detectors.backends.base import Backend, BackendError, TensorSpec  # noqa: E402
from detectors.backends.onnx_graph import fold_constants, fold_pads_into_convs, is_quantized, load_model, signature  # noqa: E402
from detectors.backends.tvm_graph import DEFAULT_LAYOUT, clip_as_relax_ops, to_layout  # noqa: E402
from detectors.backends.tvm_schedule import DEFAULT_SCHEDULE, cpu_schedule  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("PEDSTREAM_CACHE") or Path.home() / ".cache" / "pedstream") / "tvm"


# TVM 0.27's VM writes a warning line per constant each time a library is saved or loaded (a debug
# print left in its executable.cc: 196 lines for the student, weights being constants).
_TVM_CHATTER = ("Warning: Scope Loaded:", "Warning: Scope Saving:")
_native_stderr_lock = threading.RLock()


@contextlib.contextmanager
def quiet_tvm_chatter() -> Iterator[None]:
    """Keep TVM's per-constant save/load lines out of standard error; everything else written to
    it meanwhile (from C++ or Python, by any thread) is passed on when the block ends."""
    with _native_stderr_lock:  # one redirection of fd 2 at a time, or a restore could miss
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                lines = capture.read().decode(errors="replace").splitlines(keepends=True)
                kept = "".join(line for line in lines if not any(noise in line for noise in _TVM_CHATTER))
                if kept:
                    sys.stderr.write(kept)
                    sys.stderr.flush()


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """An LLVM target for this machine's CPU (``-mcpu`` detected at run time, e.g. znver4)."""
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": num_cores or os.cpu_count() or 1})


def set_threads(threads: int) -> None:
    """TVM's worker pool size for this process (every TVM model in it shares the one pool)."""
    tvm.get_global_func("runtime.config_threadpool")(0, threads)


def current_threads() -> int:
    return int(tvm.get_global_func("runtime.NumThreads")())


def database_digest(work_dir: Path | None) -> str | None:
    """A digest of a MetaSchedule database folder's JSON files, or None when there is none."""
    if work_dir is None:
        return None
    files = sorted(work_dir.glob("*.json"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def static_shapes(inputs: list[TensorSpec]) -> dict[str, list[int]]:
    """Input shapes with batch 1; other symbolic dimensions are refused (TVM needs static shapes here)."""
    shapes = {}
    for spec in inputs:
        dims = [1 if (i == 0 and d is None) else d for i, d in enumerate(spec.shape)]
        if any(d is None for d in dims):
            raise BackendError(f"input {spec.name} has symbolic dimensions {spec.shape}; TVM needs a static shape")
        shapes[spec.name] = [int(d) for d in dims if d is not None]
    return shapes


def import_relax(
    model_bytes: bytes, layout: str = DEFAULT_LAYOUT, target: tvm.target.Target | None = None
) -> tuple[tvm.IRModule, list[np.ndarray], list[TensorSpec], list[TensorSpec]]:
    """The model as a Relax module in ``layout`` with its weights bound as constants (so layout
    changes of weights happen at compile time), plus its static signature. The weights list is
    empty: they are compiled into the library."""
    folded = fold_constants(model_bytes)
    fold_pads_into_convs(folded)
    inputs, outputs = signature(load_model(model_bytes))
    shapes = static_shapes(inputs)
    try:
        with clip_as_relax_ops():
            mod = from_onnx(folded, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:  # the importer raises many kinds (OpNotImplemented, TypeError, ...)
        raise BackendError(f"TVM cannot import the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    try:
        mod = to_layout(mod, layout, target or host_target())
    except Exception as exc:
        raise BackendError(f"TVM cannot convert the model to {layout}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    static_inputs = [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) for s in inputs]
    return mod, [], static_inputs, outputs


def _pipeline(target: tvm.target.Target, legalize: bool, schedule: str = DEFAULT_SCHEDULE) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="PedstreamCpuPipeline")
    def run(mod: tvm.IRModule, _ctx: object) -> tvm.IRModule:
        with target:
            passes = cpu_pipeline.library_dispatch_passes(target)
            if legalize:
                passes += cpu_pipeline.legalize_passes(target)
            passes += [cpu_schedule(schedule, target)]
            passes += cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return run


def compile_module(
    mod: tvm.IRModule, target: tvm.target.Target, tuning_dir: Path | None, schedule: str = DEFAULT_SCHEDULE
) -> relax.Executable:
    """Compile with the tuned schedules when a database is given, the rule-based ``schedule`` for the rest."""
    if tuning_dir is not None and database_digest(tuning_dir):
        with target:
            mod = tvm.transform.Sequential(
                [
                    relax.transform.DecomposeOpsForInference(),
                    relax.transform.CanonicalizeBindings(),
                    zero_pipeline(),
                    relax.transform.MetaScheduleApplyDatabase(str(tuning_dir)),
                ]
            )(mod)
        return tvm.compile(mod, target=target, relax_pipeline=_pipeline(target, legalize=False, schedule=schedule))
    return tvm.compile(mod, target=target, relax_pipeline=_pipeline(target, legalize=True, schedule=schedule))


class TvmBackend(Backend):
    """A model compiled by TVM for this CPU, batch 1, from the cache when it is there.

    ``layout`` and ``rule_schedule`` are the graph- and loop-level choices (``pedstream bench
    tvm-levers`` compares them); a tuning database, when given, schedules what it covers."""

    name = "tvm"

    def __init__(
        self,
        model_bytes: bytes,
        cache_dir: Path | None = None,
        tuning_dir: Path | None = None,
        target: tvm.target.Target | None = None,
        layout: str = DEFAULT_LAYOUT,
        rule_schedule: str = DEFAULT_SCHEDULE,
        threads: int = 0,
    ) -> None:
        super().__init__(model_bytes)
        if is_quantized(model_bytes):
            raise BackendError("an int8 (quantized) model: pedstream compiles float graphs with TVM; ONNX Runtime serves int8")
        if threads > 0:
            set_threads(threads)
        self.target = target or host_target()
        self.tuning_dir = tuning_dir
        self.cache_dir = cache_dir or DEFAULT_CACHE
        self.layout = layout
        self.rule_schedule = rule_schedule
        sha = hashlib.sha256(model_bytes).hexdigest()
        schedule = f"ms-{database_digest(tuning_dir)}+{rule_schedule}" if database_digest(tuning_dir) else rule_schedule
        key_source = json.dumps({"sha": sha, "target": str(self.target), "layout": layout, "schedule": schedule, "tvm": tvm.__version__})
        self.key = hashlib.sha256(key_source.encode()).hexdigest()[:24]
        self.schedule = schedule
        self.artifact_dir = self.cache_dir / self.key
        self.compile_s: float | None = None
        self.from_cache = (self.artifact_dir / "model.so").is_file()
        if not self.from_cache:
            self._compile_into_cache()
        self._load()

    @classmethod
    def from_artifact_dir(cls, model_bytes: bytes, artifact_dir: Path, threads: int = 0) -> TvmBackend:
        """A backend on a library compiled elsewhere (``tvm_artifacts``): loaded, never compiled."""
        if threads > 0:
            set_threads(threads)
        backend = cls.__new__(cls)
        Backend.__init__(backend, model_bytes)
        sig = json.loads((artifact_dir / "signature.json").read_text())
        backend.target = tvm.target.Target(json.loads(sig["target"]))
        backend.tuning_dir = None
        backend.cache_dir = artifact_dir.parent
        backend.layout = sig.get("layout", "NCHW")
        backend.schedule = backend.rule_schedule = sig.get("schedule", "?")
        backend.key = artifact_dir.name
        backend.artifact_dir = artifact_dir
        backend.compile_s = None
        backend.from_cache = True
        backend._load()
        return backend

    def _compile_into_cache(self) -> None:
        started = time.perf_counter()
        mod, weights, inputs, outputs = import_relax(self.model_bytes, self.layout, self.target)
        try:
            executable = compile_module(mod, self.target, self.tuning_dir, self.rule_schedule)
        except Exception as exc:
            raise BackendError(f"TVM cannot compile the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
        outputs = self._concrete_outputs(executable, inputs, weights, outputs)
        tmp = self.artifact_dir.with_name(self.artifact_dir.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        with quiet_tvm_chatter():
            executable.export_library(str(tmp / "model.so"))
        tvm.runtime.save_param_dict_to_file({f"p{i}": tvm.runtime.tensor(w) for i, w in enumerate(weights)}, str(tmp / "params.bin"))
        (tmp / "signature.json").write_text(
            json.dumps(
                {
                    "inputs": [[s.name, list(s.shape), s.dtype] for s in inputs],
                    "outputs": [[s.name, list(s.shape), s.dtype] for s in outputs],
                    "weights": len(weights),
                    "target": str(self.target),
                    "layout": self.layout,
                    "schedule": self.schedule,
                }
            )
        )
        try:
            tmp.rename(self.artifact_dir)
        except OSError:  # another process cached it first
            pass
        self.compile_s = time.perf_counter() - started
        log.info("TVM compiled %s in %.1fs into %s", self.key, self.compile_s, self.artifact_dir)

    @staticmethod
    def _concrete_outputs(
        executable: relax.Executable, inputs: list[TensorSpec], weights: list[np.ndarray], outputs: list[TensorSpec]
    ) -> list[TensorSpec]:
        """Output shapes by running the compiled model once on zeros (ONNX files often leave them unknown)."""
        vm = relax.VirtualMachine(executable, tvm.cpu())
        args = [tvm.runtime.tensor(np.zeros(tuple(int(d or 1) for d in s.shape), s.dtype)) for s in inputs] + [
            tvm.runtime.tensor(w) for w in weights
        ]
        result = vm["main"](*args)
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return [TensorSpec(spec.name, tuple(int(d) for d in value.shape), spec.dtype) for spec, value in zip(outputs, values, strict=False)]

    def _load(self) -> None:
        sig = json.loads((self.artifact_dir / "signature.json").read_text())
        self.inputs = [TensorSpec(n, tuple(s), d) for n, s, d in sig["inputs"]]
        self.outputs = [TensorSpec(n, tuple(s), d) for n, s, d in sig["outputs"]]
        params = tvm.runtime.load_param_dict_from_file(str(self.artifact_dir / "params.bin"))
        self._weights = [params[f"p{i}"] for i in range(sig["weights"])]
        self.device = tvm.cpu()
        self.vm = self._new_vm()
        self._main = self.vm["main"]

    def _new_vm(self) -> relax.VirtualMachine:
        """A VM on the cached library (TVM's per-constant load lines kept off stderr)."""
        with quiet_tvm_chatter():
            return relax.VirtualMachine(tvm.runtime.load_module(str(self.artifact_dir / "model.so")), self.device)

    def profile(self, feeds: dict[str, np.ndarray], runs: int) -> dict[str, tuple[float, int, str]]:
        """Seconds spent in each compiled function over ``runs`` runs: name -> (seconds, calls,
        argument shapes), timed around every call of a separate, instrumented VM."""
        vm = self._new_vm()
        spent: dict[str, list[float]] = {}
        shapes: dict[str, str] = {}
        started: dict[str, float] = {}

        def instrument(_func: object, symbol: str, before: bool, _ret: object, *args: object) -> int:
            if before:
                shapes.setdefault(symbol, " ".join("x".join(map(str, a.shape)) for a in args if hasattr(a, "shape")))
                started[symbol] = time.perf_counter()
            else:
                spent.setdefault(symbol, []).append(time.perf_counter() - started[symbol])
            return 0

        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name]), self.device) for s in self.inputs]
        vm["main"](*args, *self._weights)  # warm up
        vm.set_instrument(instrument)
        for _ in range(runs):
            vm["main"](*args, *self._weights)
        return {name: (sum(times), len(times), shapes.get(name, "")) for name, times in spent.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name]), self.device) for s in self.inputs]
        result = self._main(*args, *self._weights)
        if isinstance(result, tvm.runtime.Tensor):
            return [result.numpy()]
        return [r.numpy() for r in result]

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "target": str(self.target),
            "layout": self.layout,
            "schedule": self.schedule,
            "cache_key": self.key,
            "from_cache": self.from_cache,
            "compile_s": self.compile_s,
            "threads": current_threads(),
        }
