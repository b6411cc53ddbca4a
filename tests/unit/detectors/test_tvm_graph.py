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
    ("layout", "schedule"), [("NCHW", "loops-v1"), ("NHWC", "loops-v1"), ("NHWC", "blocked-v3"), ("NHWC", "blocked-serial-v3")]
)
def test_every_layout_and_schedule_gives_ort_s_outputs(layout: str, schedule: str, tmp_path: Path) -> None:
    from detectors.backends.tvm import TvmBackend

    model = mobile_block()
    backend = TvmBackend(model, cache_dir=tmp_path, layout=layout, rule_schedule=schedule)
    assert backend.describe()["layout"] == layout and backend.schedule == schedule
    feeds = sample_feeds(backend.inputs)
    np.testing.assert_allclose(backend.run(feeds)[0], OrtBackend(model).run(feeds)[0], atol=1e-4, rtol=1e-4)


def test_blocked_schedule_register_blocks_the_convolution_and_fuses_its_epilogue() -> None:
    import tvm
    from tvm import relax

    from detectors.backends.tvm import host_target, import_relax
    from detectors.backends.tvm_schedule import _blocked

    target = host_target()
    mod, weights, _, _ = import_relax(mobile_block(), "NHWC", target)
    assert weights == []  # bound as constants: their layout change is done at compile time
    with target:
        mod = tvm.transform.Sequential(
            [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
        )(mod)
    fused = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    pointwise = [name for name in fused if name.startswith("fused_conv2d") and "maximum" in name and "minimum" in name]
    assert pointwise, sorted(fused)  # ReLU6 fused into its convolution (not an opaque call of its own)
    for parallel in (False, True):
        blocked = _blocked(fused[pointwise[-1]], parallel=parallel)
        assert blocked is not None
        text = blocked.script()
        assert '"local"' not in text  # no per-tile buffer: inside a parallel loop TVM would allocate it per tile
        assert "T.vectorized" in text and "T.unroll" in text
        tile_loop = re.search(r"for \w+_0_fused in (T\.parallel|range)\(", text)
        assert tile_loop and (tile_loop.group(1) == "T.parallel") == parallel
        assert "T_maximum_intermediate = " not in text  # the epilogue is not a separate pass over memory


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
