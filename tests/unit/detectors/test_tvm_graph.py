"""TVM graph preparation and rule-based schedules: zero pads folded into convolutions, ReLU6 kept
fusible, channels-last, register-blocked reductions; every choice exact against ONNX Runtime."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from detectors.backends.onnx_graph import load_model, without_spatial_pads
from detectors.backends.ort import OrtBackend
from detectors.backends.selection import sample_feeds


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def mobile_block(pad_value: float = 0.0, pad_reader: str = "Conv") -> bytes:
    """Pad -> depthwise 3x3 stride 2 -> Clip(0, 6) -> pointwise 1x1 -> Clip -> + residual pointwise: the
    student's building blocks, in the shapes PyTorch exports them."""
    rng = np.random.default_rng(0)
    inits = [
        _const("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)),
        _const("pad_value", np.array(pad_value, np.float32)),
        _const("dw", rng.standard_normal((16, 1, 3, 3)).astype(np.float32)),
        _const("pw", rng.standard_normal((32, 16, 1, 1)).astype(np.float32) * 0.3),
        _const("pw_b", rng.standard_normal(32).astype(np.float32)),
        _const("proj", rng.standard_normal((32, 32, 1, 1)).astype(np.float32) * 0.3),
        _const("lo", np.array(0.0, np.float32)),
        _const("hi", np.array(6.0, np.float32)),
    ]
    padded_reader = (
        helper.make_node("Conv", ["p", "dw"], ["d"], group=16, strides=[2, 2])
        if pad_reader == "Conv"
        else helper.make_node("Relu", ["p"], ["d"])
    )
    nodes = [
        helper.make_node("Pad", ["x", "pads", "pad_value"], ["p"], mode="constant"),
        padded_reader,
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
        helper.make_node("Conv", ["d6", "pw", "pw_b"], ["e"]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
        helper.make_node("Conv", ["e6", "proj"], ["f"]),
        helper.make_node("Add", ["f", "e6"], ["y"]),
    ]
    out_hw = 16 if pad_reader == "Conv" else 33
    out_c = 32 if pad_reader == "Conv" else 16
    graph = helper.make_graph(
        nodes if pad_reader == "Conv" else nodes[:3],
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
        [helper.make_tensor_value_info("y" if pad_reader == "Conv" else "d6", TensorProto.FLOAT, [1, out_c, out_hw, out_hw])],
        initializer=inits if pad_reader == "Conv" else inits[:2] + inits[6:],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_zero_pads_fold_into_the_convolutions_that_read_them() -> None:
    from detectors.backends.onnx_graph import fold_pads_into_convs

    model = load_model(mobile_block())
    assert fold_pads_into_convs(model) == 1
    assert "Pad" not in [n.op_type for n in model.graph.node]
    depthwise = next(n for n in model.graph.node if n.op_type == "Conv")
    assert list(next(a for a in depthwise.attribute if a.name == "pads").ints) == [0, 0, 1, 1]  # asymmetric, as exported
    feeds = sample_feeds(OrtBackend(mobile_block()).inputs)
    np.testing.assert_array_equal(OrtBackend(model.SerializeToString()).run(feeds)[0], OrtBackend(mobile_block()).run(feeds)[0])
    for kept in (mobile_block(pad_value=1.0), mobile_block(pad_reader="Relu")):  # not zero / not read by a Conv
        assert fold_pads_into_convs(load_model(kept)) == 0


def test_onnx_runtime_serves_the_graph_without_pads() -> None:
    served = without_spatial_pads(mobile_block())
    assert "Pad" not in [n.op_type for n in load_model(served).graph.node]
    kept = mobile_block(pad_reader="Relu")
    assert without_spatial_pads(kept) is kept  # nothing to fold: the very same bytes
    feeds = sample_feeds(OrtBackend(mobile_block()).inputs)
    session = ort.InferenceSession(mobile_block(), providers=["CPUExecutionProvider"])  # the graph as exported
    np.testing.assert_array_equal(OrtBackend(mobile_block()).run(feeds)[0], session.run(None, feeds)[0])


@pytest.mark.parametrize(
    ("layout", "schedule"),
    [("NCHW", "loops-v1"), ("NHWC", "loops-v1"), ("NHWC", "blocked-v3"), ("NHWC", "blocked-v4"), ("NHWC", "blocked-serial-v4")],
)
def test_every_layout_and_schedule_gives_ort_s_outputs(layout: str, schedule: str, tmp_path: Path) -> None:
    from detectors.backends.tvm import TvmBackend

    model = mobile_block()
    backend = TvmBackend(model, cache_dir=tmp_path, layout=layout, rule_schedule=schedule)
    assert backend.describe()["layout"] == layout and backend.schedule == schedule
    feeds = sample_feeds(backend.inputs)
    np.testing.assert_allclose(backend.run(feeds)[0], OrtBackend(model).run(feeds)[0], atol=1e-4, rtol=1e-4)


def _fused_functions(model: bytes) -> dict[str, object]:
    import tvm
    from tvm import relax

    from detectors.backends.tvm import host_target, import_relax

    target = host_target()
    mod, weights, _, _ = import_relax(model, "NHWC", target)
    assert weights == []  # bound as constants: their layout change is done at compile time
    with target:
        mod = tvm.transform.Sequential(
            [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
        )(mod)
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_blocked_schedule_register_blocks_the_convolution_and_fuses_its_epilogue() -> None:
    from detectors.backends.tvm_schedule import RULES, _blocked

    fused = _fused_functions(mobile_block())
    pointwise = [name for name in fused if name.startswith("fused_conv2d") and "maximum" in name and "minimum" in name]
    assert pointwise, sorted(fused)  # ReLU6 fused into its convolution (not an opaque call of its own)
    for schedule in ("blocked-serial-v4", "blocked-v4", "blocked-v3"):
        blocked = _blocked(fused[pointwise[-1]], RULES[schedule])  # type: ignore[arg-type]
        assert blocked is not None
        text = blocked.script()
        assert '"local"' not in text  # no per-tile buffer: inside a parallel loop TVM would allocate it per tile
        assert "T.vectorized" in text and "T.unroll" in text
        tile_loop = re.search(r"for \w+_0_fused in (T\.parallel|range)\(", text)
        assert tile_loop and (tile_loop.group(1) == "T.parallel") == RULES[schedule].parallel
        assert "T_maximum_intermediate = " not in text  # the epilogue is not a separate pass over memory


def test_blocked_v4_reads_the_input_under_the_bounds_condition_instead_of_a_padded_copy() -> None:
    from detectors.backends.tvm_schedule import RULES, _blocked

    fused = _fused_functions(mobile_block())
    depthwise = [name for name, f in fused.items() if "if_then_else" in f.script()]  # type: ignore[attr-defined]
    assert depthwise, sorted(fused)
    padded_copy = _blocked(fused[depthwise[0]], RULES["blocked-v3"])  # type: ignore[arg-type]
    inlined = _blocked(fused[depthwise[0]], RULES["blocked-v4"])  # type: ignore[arg-type]
    assert padded_copy is not None and inlined is not None
    assert "pad_temp = T.sblock_alloc_buffer" in padded_copy.script()
    assert "pad_temp" not in inlined.script() and "T.if_then_else" in inlined.script()


def test_the_register_tile_follows_the_target_s_vector_registers() -> None:
    import tvm

    from detectors.backends.tvm_schedule import NARROW_TILE, RULES, WIDE_TILE, register_tile

    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    assert register_tile(RULES["blocked-v4"], avx512) == WIDE_TILE
    assert register_tile(RULES["blocked-v4"], avx2) == NARROW_TILE
    assert register_tile(RULES["blocked-v3"], avx512) == NARROW_TILE  # v3 as it was measured
    assert register_tile(RULES["blocked-v4"], tvm.target.Target("llvm")) == NARROW_TILE  # generic x86-64: no AVX-512
    with avx512:
        assert register_tile(RULES["blocked-v4"], None) == WIDE_TILE  # the target in scope


@pytest.mark.parametrize("mcpu", ["znver3", "znver4"])
def test_blocked_v4_for_either_tile_gives_ort_s_outputs(mcpu: str, tmp_path: Path) -> None:
    import tvm
    from tvm.target import codegen

    from detectors.backends.tvm import TvmBackend, host_target
    from detectors.backends.tvm_schedule import NARROW_TILE, RULES, WIDE_TILE, register_tile

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    if mcpu == "znver4" and not codegen.target_has_features("avx512f", host_target()):
        pytest.skip("this CPU cannot run AVX-512 code")
    assert register_tile(RULES["blocked-v4"], target) == (WIDE_TILE if mcpu == "znver4" else NARROW_TILE)
    model = mobile_block()
    backend = TvmBackend(model, cache_dir=tmp_path, target=target)
    feeds = sample_feeds(backend.inputs)
    np.testing.assert_allclose(backend.run(feeds)[0], OrtBackend(model).run(feeds)[0], atol=1e-4, rtol=1e-4)


def test_bench_tvm_levers_times_every_lever_against_ort_and_profiles_both(tmp_path: Path) -> None:
    model = tmp_path / "block.onnx"
    model.write_bytes(mobile_block())
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "bench", "tvm-levers", "--model", str(model), "--threads", "1,2", "--seconds", "0.1"]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    levers = {row["lever"] for row in result["rows"]}
    assert levers == {"ort", "ort-spinning", "ort-exported-graph"} | {
        "tvm-nchw-loops",
        "tvm-nhwc-loops",
        "tvm-nhwc-blocked-v3",
        "tvm-nhwc-blocked",
        "tvm-nhwc-blocked-serial",
    }
    assert {row["threads"] for row in result["rows"]} == {1, 2}
    for row in result["rows"]:
        assert row["max_abs_diff_vs_ort"] < 1e-4 and row["p50_ms"] > 0  # every lever computes the same thing
        if row["lever"] == "ort":
            assert row["speed_vs_ort"] == 1.0
    for runtime in ("ort", "tvm"):
        profile = result["profile"][runtime]
        assert profile["top"] and profile["total_ms"] > 0
        assert abs(sum(k["share"] for k in profile["by_kind"]) - 1.0) < 0.02
    assert any(layer["kind"].startswith("conv2d") for layer in result["profile"]["tvm"]["top"])
    assert any(layer["kind"] in ("Conv", "FusedConv") for layer in result["profile"]["ort"]["top"])


def test_an_artifact_carries_its_tuning_records_and_refuses_anything_else(tmp_path: Path) -> None:
    import io
    import tarfile

    from detectors.backends import tvm_artifacts
    from detectors.backends.base import BackendError
    from detectors.backends.tvm import TvmBackend

    model = mobile_block()
    backend = TvmBackend(model, cache_dir=tmp_path / "build")
    database = tmp_path / "db"
    database.mkdir()
    (database / "database_workload.json").write_text('["workload"]\n')
    (database / "database_tuning_record.json").write_text('["record"]\n')
    untuned, tuned = tvm_artifacts.pack(backend), tvm_artifacts.pack(backend, database)
    assert tvm_artifacts.tuning_records(untuned) == []
    assert tvm_artifacts.tuning_records(tuned) == ["tuning/database_tuning_record.json", "tuning/database_workload.json"]
    loaded = tvm_artifacts.load(tuned, model, cache_dir=tmp_path / "edge")
    assert (loaded.artifact_dir / "tuning" / "database_workload.json").read_text() == '["workload"]\n'
    feeds = sample_feeds(loaded.inputs)
    np.testing.assert_allclose(loaded.run(feeds)[0], OrtBackend(model).run(feeds)[0], atol=1e-4, rtol=1e-4)

    buffer = io.BytesIO()  # an artifact with a stray member (here: a path out of its folder) is refused
    with tarfile.open(fileobj=io.BytesIO(tuned), mode="r:gz") as source, tarfile.open(fileobj=buffer, mode="w:gz") as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        stray = tarfile.TarInfo("tuning/../../evil.json")
        stray.size = 2
        out.addfile(stray, io.BytesIO(b"{}"))
    with pytest.raises(BackendError, match="not a pedstream TVM artifact"):
        tvm_artifacts.load(buffer.getvalue(), model, cache_dir=tmp_path / "edge2")


def test_tvm_s_per_constant_load_lines_are_dropped_and_other_errors_kept(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import os

    from detectors.backends.tvm import TvmBackend, quiet_tvm_chatter

    with quiet_tvm_chatter():
        os.write(2, b"[04:34:45] /project/src/runtime/vm/executable.cc:340: Warning: Scope Loaded:\n")
        os.write(2, b"a real problem\n")
    TvmBackend(mobile_block(), cache_dir=tmp_path)  # compiles, saves and loads a library with constants
    TvmBackend(mobile_block(), cache_dir=tmp_path)  # loads it from the cache
    err = capfd.readouterr().err
    assert "a real problem" in err and "Scope Loaded" not in err and "Scope Saving" not in err
