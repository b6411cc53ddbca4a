"""Models that take the camera's frame as decoded: uint8 BGR pixels, NHWC, resized to the input size.

A model trained on RGB / 255 in NCHW (the student) needs each frame turned into that layout:
channel swap, float conversion, scaling, transpose, each into a fresh float buffer. ``with_frame_input``
prepends those steps to the ONNX graph itself (Transpose, Gather of the channels, Cast, Mul), where
ONNX Runtime runs them from its own memory arena; the edge then only resizes the frame, and queued
batches are uint8, a quarter of the size (docs/detectors.md has the measurement). The network after the prefix is unchanged, so a
float or int8 model gives the same boxes either way (``tests/unit/detectors/test_frame_input.py``).
Adapters tell the two contracts apart by the input's dtype (uint8: frame input).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FRAME_INPUT_DTYPE = "uint8"
_PREFIX = "frame_input/"


def has_frame_input(model: onnx.ModelProto) -> bool:
    return bool(model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8)


def with_frame_input(model_bytes: bytes) -> bytes:
    """The model with its float NCHW RGB/255 input replaced by a uint8 NHWC BGR input of the same
    name and size; a model that already takes frames is returned as it is."""
    model = onnx.load_model_from_string(model_bytes)
    if has_frame_input(model):
        return model_bytes
    graph = model.graph
    source = graph.input[0]
    dims = source.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != 3 or source.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"with_frame_input: expected a float [N, 3, H, W] input, got {source}")
    name = source.name
    batch = dims[0].dim_param or dims[0].dim_value
    height, width = dims[2].dim_value, dims[3].dim_value
    rgb_scaled = _PREFIX + "rgb_scaled"
    for node in graph.node:  # the network now reads the prefix's output
        node.input[:] = [rgb_scaled if value == name else value for value in node.input]
    prefix = [
        helper.make_node("Transpose", [name], [_PREFIX + "bgr_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Gather", [_PREFIX + "bgr_nchw", _PREFIX + "rgb_order"], [_PREFIX + "rgb_nchw"], axis=1),
        helper.make_node("Cast", [_PREFIX + "rgb_nchw"], [_PREFIX + "rgb_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [_PREFIX + "rgb_float", _PREFIX + "one_over_255"], [rgb_scaled]),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2, 1, 0], np.int64), _PREFIX + "rgb_order"),
            numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), _PREFIX + "one_over_255"),
        ]
    )
    nodes = prefix + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(source)
    graph.input.insert(0, helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, height, width, 3]))
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
