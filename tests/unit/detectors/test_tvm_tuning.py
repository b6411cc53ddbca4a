"""MetaSchedule tuning as a job: a database on disk that the TVM backend compiles with, outputs unchanged;
only the target's tensor intrinsics are imported."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from detectors.backends.ort import OrtBackend
from detectors.backends.selection import sample_feeds


def tiny_conv_model() -> bytes:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny",
        [x],
        [y],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_tuned_model_compiles_from_the_database_and_matches_ort(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from detectors.backends.tvm import TvmBackend
    from detectors.backends.tvm_schedule import DEFAULT_SCHEDULE
    from detectors.backends.tvm_tuning import tune

    model = tiny_conv_model()
    report = tune(model, tmp_path / "db", trials=4)
    out, err = capfd.readouterr()
    assert "Total trials" in err and "Total trials" not in out  # progress on stderr: `tune --json` prints only JSON
    assert report["database"] and list((tmp_path / "db").glob("*.json"))
    assert report["tensor_intrinsics"] == ("x86" if platform.machine() == "x86_64" else "all")  # not the 70 s import of all
    tuned = TvmBackend(model, cache_dir=tmp_path / "cache", tuning_dir=tmp_path / "db")
    untuned = TvmBackend(model, cache_dir=tmp_path / "cache")
    assert tuned.schedule == f"ms-{report['database']}+{DEFAULT_SCHEDULE}" and untuned.schedule == DEFAULT_SCHEDULE
    assert tuned.key != untuned.key  # the cache keeps both apart
    feeds = sample_feeds(tuned.inputs)
    expected = OrtBackend(model).run(feeds)[0]
    np.testing.assert_allclose(tuned.run(feeds)[0], expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(untuned.run(feeds)[0], expected, atol=1e-4, rtol=1e-4)
