"""int8 quantization of the student: same contract, nearly the same boxes, refused twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.backends.onnx_graph import load_model
from detectors.boxes import box_iou
from detectors.detector import Detector, read_model, weights_path
from detectors.quantize import image_convolutions, quantize_int8, with_int8_version
from streams.errors import PedstreamError
from streams.mot import MotSequence


def test_the_int8_student_keeps_its_contract_and_finds_the_same_people(shared_data: Path) -> None:
    pets = MotSequence.load(shared_data / "PETS09-S2L1")
    calibration = [image for _, image in pets.frames(1, 397, 50)]
    int8_bytes = quantize_int8(read_model("student-float"), calibration)
    floats = Detector.from_bytes(read_model("student-float"), name="float", threads=1)
    int8 = Detector.from_bytes(int8_bytes, name="int8", threads=1)
    assert int8.info.format == "student" and int8.version == floats.version
    # `pedstream quantize` names it apart from the float model (a retraining candidate keeps its name)
    assert Detector.from_bytes(with_int8_version(int8_bytes), name="named", threads=1).version == f"{floats.version}-int8"
    assert with_int8_version(with_int8_version(int8_bytes)) == with_int8_version(int8_bytes)
    # the bundled `--model student` is this int8 network; `--model student-float` the float one
    bundled = Detector.from_bytes(read_model("student"), name="bundled", threads=1)
    assert bundled.info.metadata["precision"] == "int8" and bundled.version == f"{floats.version}-int8"
    assert weights_path("student") == weights_path("student-float") is not None
    assert int8.info.metadata["precision"] == "int8" and int8.info.metadata["calibration_frames"] == str(len(calibration))
    # 7-bit weights (no 16-bit saturation on CPUs without VNNI), the bundled student's too
    assert int8.info.metadata["weight_bits"] == bundled.info.metadata["weight_bits"] == "7"
    # every confident box of either (score >= 0.4) has a close twin in the other (score >= 0.25: scores
    # move a little under int8), on frames it was not calibrated on (4-8 people each)
    best: list[float] = []
    for _, frame in pets.picked_frames([500, 600, 700]):
        a, b = floats.detect([frame])[0], int8.detect([frame])[0]
        for confident, other in ((a.above(0.4), b.above(0.25)), (b.above(0.4), a.above(0.25))):
            if len(confident):
                assert len(other), "a confident box with nothing near it"
                best += box_iou(confident.xyxy, other.xyxy).max(axis=1).tolist()
    assert len(best) >= 12 and float(np.mean(best)) > 0.8 and min(best) > 0.5, best
    # the convolution that reads the colour channels stays float; every other one is int8
    # (QDQ: a quantized convolution reads its weights from a DequantizeLinear node)
    graph = load_model(int8_bytes).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weights_int8 = {n.name: n.input[1] in dequantized for n in graph.node if n.op_type == "Conv"}
    [first] = image_convolutions(read_model("student-float"))
    assert first.startswith("/trunk/")  # the trunk's first convolution (v1.1: its distilled stem's)
    assert weights_int8.pop(first) is False and weights_int8 and all(weights_int8.values())
    with pytest.raises(PedstreamError, match="already quantized"):
        quantize_int8(int8_bytes, calibration)
    with pytest.raises(PedstreamError, match="needs calibration images"):
        quantize_int8(read_model("student-float"), [])


def test_tvm_refuses_an_int8_model_and_onnx_runtime_serves_it() -> None:
    pytest.importorskip("tvm")
    from detectors.backends.selection import choose_backend

    choice = choose_backend("tvm", read_model("student"), threads=1)
    assert choice.backend.name == "ort" and "int8" in choice.reason
