"""Frame input: the student's ONNX graph takes the decoded frame (uint8 BGR NHWC) and gives what the
float RGB / 255 NCHW graph gave, through the adapter and without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detectors.backends.ort import OrtBackend
from detectors.detector import Detector, read_model
from detectors.frame_input import has_frame_input, with_frame_input

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BUNDLED = Path(__file__).resolve().parents[3] / "detectors" / "models"


def _float_conv_model() -> bytes:
    """float [N, 3, 6, 8] -> a 3x3 conv whose output depends on each channel differently."""
    weight = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["out"], pads=[1, 1, 1, 1])],
        "t",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 6, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2, 6, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_the_frame_input_prefix_does_the_channel_swap_scaling_and_layout() -> None:
    float_model = _float_conv_model()
    framed = with_frame_input(float_model)
    assert has_frame_input(onnx.load_model_from_string(framed)) and with_frame_input(framed) == framed
    frames = np.random.default_rng(1).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)  # BGR, NHWC
    expected = OrtBackend(float_model).run({"images": frames[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255})[0]
    ours = OrtBackend(framed).run({"images": frames})[0]
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_a_model_that_is_not_float_nchw_rgb_is_refused() -> None:
    nhwc = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 3])],
    )
    with pytest.raises(ValueError, match="expected a float \\[N, 3, H, W\\] input"):
        with_frame_input(helper.make_model(nhwc).SerializeToString())


def test_a_student_gives_the_same_boxes_with_either_input_contract() -> None:
    """student v0 (exported before frame input: float) against the same network with frame input."""
    float_student = read_model(FIXTURES / "student-v0.onnx")
    assert not has_frame_input(onnx.load_model_from_string(float_student))
    old = Detector.from_bytes(float_student, name="old", threads=1)
    new = Detector.from_bytes(with_frame_input(float_student), name="new", threads=1)
    assert (old.adapter.dtype, old.adapter.layout) == ("float32", "NCHW") and (new.adapter.dtype, new.adapter.layout) == ("uint8", "NHWC")
    rng = np.random.default_rng(2)
    frame = _frame_with_bright_people(rng)
    [a], [b] = old.detect([frame]), new.detect([frame])
    assert len(a) > 0 and len(a) == len(b)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-2)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_the_bundled_students_take_frames() -> None:
    for name in ("student.onnx", "student-float.onnx"):
        assert has_frame_input(onnx.load(str(BUNDLED / name))), name


def _frame_with_bright_people(rng: np.random.Generator) -> np.ndarray:
    """A 576x768 BGR frame of noise with a few bright upright rectangles, so the student finds something."""
    frame = rng.integers(0, 80, (576, 768, 3), dtype=np.uint8)
    for x in (100, 300, 500):
        frame[200:380, x : x + 60] = rng.integers(150, 255, 3, dtype=np.uint8)
    return frame
