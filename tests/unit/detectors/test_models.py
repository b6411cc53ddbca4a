"""The three shared detectors through their adapters: format detection, the AP table, TVM vs ORT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from detectors.backends.base import BackendError
from detectors.backends.ort import OrtBackend
from detectors.backends.selection import choose_backend, sample_feeds
from detectors.detector import Detector, read_model
from detectors.evaluation import evaluate_sequence
from streams.mot import MotSequence

# AP50 / best recall from ../shared/models/README.md (PETS09-S2L1, every 4th frame, 199 frames)
README_TABLE = {"ssdlite_pedestrian": (0.655, 0.863), "nanodet": (0.888, 0.952), "centernet": (0.887, 0.932)}
FORMATS = {"ssdlite_pedestrian": "tf-ssd", "nanodet": "nanodet", "centernet": "centernet"}


@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_eval_reproduces_the_shared_ap_table(name: str, shared_models: Path, shared_data: Path) -> None:
    detector = Detector.from_bytes(read_model(shared_models / f"{name}.onnx"), name=name)
    assert detector.info.format == FORMATS[name]
    result = evaluate_sequence(detector.detect, MotSequence.load(shared_data / "PETS09-S2L1"), every=4)
    ap, recall = README_TABLE[name]
    assert result.frames == 199
    assert result.ap50 == pytest.approx(ap, abs=0.02) and result.recall == pytest.approx(recall, abs=0.02)


def _yolo_model(tmp_path: Path) -> bytes:
    """A tiny YOLOv8-shaped graph: a constant [1, 4+2, 8] prediction whatever the image."""
    pred = np.zeros((1, 6, 8), np.float32)
    pred[0, :4, 0] = [32, 32, 16, 32]  # cx, cy, w, h in input pixels
    pred[0, 4, 0] = 0.9  # class 0 (person)
    pred[0, :4, 1] = [10, 10, 4, 4]
    pred[0, 5, 1] = 0.8  # class 1: not a person
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 8])
    const = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, pred.shape, pred.ravel()))
    mean = helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0)
    zero = helper.make_node("Mul", ["m", "zero"], ["z"])
    add = helper.make_node("Add", ["c", "z"], ["output0"])
    graph = helper.make_graph(
        [const, mean, zero, add], "yolo", [images], [output], initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def test_yolov8_export_is_recognised_and_decoded(tmp_path: Path) -> None:
    detector = Detector.from_bytes(_yolo_model(tmp_path), name="yolo")
    assert detector.info.format == "yolov8"
    [boxes] = detector.detect([np.zeros((128, 256, 3), np.uint8)])  # frame is 4x wider, 2x taller than input
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes.xyxy[0], [24 * 4, 16 * 2, 40 * 4, 48 * 2])


def test_unknown_signature_asks_for_a_format() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    with pytest.raises(BackendError, match="pass --format"):
        Detector.from_bytes(model.SerializeToString())
    with pytest.raises(BackendError, match="not an ONNX model"):
        Detector.from_bytes(b"garbage")


def test_tvm_matches_ort_and_reloads_from_its_cache(shared_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detectors.backends.tvm import TvmBackend

    model = read_model(shared_models / "nanodet.onnx")
    tvm_backend = TvmBackend(model, cache_dir=tmp_path)
    assert not tvm_backend.from_cache  # a fresh cache folder: compiled here
    from tvm.target import codegen

    target = json.loads(str(tvm_backend.describe()["target"]))
    assert target["kind"] == "llvm" and target["mcpu"] == codegen.llvm_get_system_cpu()  # for this machine's CPU
    feeds = sample_feeds(tvm_backend.inputs)
    for ours, theirs in zip(tvm_backend.run(feeds), OrtBackend(model).run(feeds), strict=False):
        np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=1e-3)
    again = TvmBackend(model, cache_dir=tmp_path)
    assert again.from_cache and again.compile_s is None
    np.testing.assert_allclose(again.run(feeds)[0], tvm_backend.run(feeds)[0])


def test_tvm_falls_back_to_ort_with_the_reason(shared_models: Path, tmp_path: Path) -> None:
    choice = choose_backend("tvm", read_model(shared_models / "ssdlite_pedestrian.onnx"), cache_dir=tmp_path)
    assert choice.backend.name == "ort"
    assert choice.reason.startswith("TVM unavailable for this model, serving with ONNX Runtime: ")
    assert "symbolic dimensions" in choice.reason  # SSDLite takes any image size; TVM here needs static shapes
