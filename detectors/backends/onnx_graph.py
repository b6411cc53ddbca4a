"""Reading and preparing ONNX graphs: their tensor signature, constant folding, zero pads folded into convolutions.

TVM's ONNX importer cannot follow shape computations that ONNX Runtime folds away (NanoDet's
``Reshape`` to a computed shape), so models are passed through ONNX Runtime's basic graph
optimisations (constant folding, redundant node elimination; no fused custom ops) first.

PyTorch exports TensorFlow-style asymmetric padding (MobileNet trunks converted from TensorFlow,
like the student's) as a ``Pad`` before each strided convolution. ONNX ``Conv`` takes asymmetric
pads itself, so the ``Pad`` can go: outputs are bit-identical, and both runtimes gain. Measured on
the student at 2 threads: ONNX Runtime 14-15 ms -> 8.1-8.5 ms per image (each ``Pad`` broke its
Conv+activation fusion and blocked-layout chain); TVM could not fuse or re-layout them at all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from detectors.backends.base import BackendError, TensorSpec

_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value_info.name, shape, _ONNX_TYPES.get(tensor.elem_type, str(tensor.elem_type)))


def load_model(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # onnx raises protobuf's DecodeError and friends
        raise BackendError(f"not an ONNX model: {exc}") from exc


def signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's real inputs (initialisers excluded) and outputs."""
    initialisers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initialisers]
    return inputs, [_spec(v) for v in model.graph.output]


def fold_constants(model_bytes: bytes) -> onnx.ModelProto:
    """The model after ONNX Runtime's basic (portable) graph optimisations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="pedstream-fold-") as tmp:
        out = Path(tmp) / "folded.onnx"
        options.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot read the model to fold it: {exc}") from exc
        return onnx.load(str(out))


def _initialiser(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    return None


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _zero_spatial_pad(model: onnx.ModelProto, pad: onnx.NodeProto) -> list[int] | None:
    """The [top, left, bottom, right] of a constant-zero ``Pad`` on H and W only, or None."""
    if _attribute(pad, "mode", b"constant") != b"constant" or len(pad.input) < 2:
        return None
    pads = _initialiser(model, pad.input[1])
    value = _initialiser(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
    if pads is None or pads.size != 8 or pads[[0, 1, 4, 5]].any() or value is None or np.asarray(value).any():
        return None
    return [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])]


def _reads_as_data(node: onnx.NodeProto, name: str) -> bool:
    return node.op_type == "Conv" and node.input[0] == name and _attribute(node, "auto_pad", b"NOTSET") == b"NOTSET"


def fold_pads_into_convs(model: onnx.ModelProto) -> int:
    """Remove each zero ``Pad`` whose every reader is a ``Conv`` (as its data input), adding the
    padding to those convolutions. Changes ``model`` in place; returns how many were folded."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for node in graph.node:
        if node.op_type != "Pad" or node.output[0] in outputs:
            continue
        extra = _zero_spatial_pad(model, node)
        convs = readers.get(node.output[0], [])
        if extra is None or not convs:
            continue
        if not all(_reads_as_data(conv, node.output[0]) for conv in convs):
            continue
        for conv in convs:
            pads = [a + b for a, b in zip(_attribute(conv, "pads", [0, 0, 0, 0]), extra, strict=True)]
            for attr in [a for a in conv.attribute if a.name == "pads"]:
                conv.attribute.remove(attr)
            conv.attribute.append(helper.make_attribute("pads", pads))
            conv.input[0] = node.input[0]
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    return len(folded)


_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}


def is_quantized(model_bytes: bytes) -> bool:
    """Whether the model holds int8 (quantized) operators."""
    return any(node.op_type in _QUANTIZED_OPS for node in load_model(model_bytes).graph.node)


def without_spatial_pads(model_bytes: bytes) -> bytes:
    """The model with its zero ``Pad`` nodes folded into the convolutions that read them, or the
    same bytes when there is nothing to fold. Quantized models are left as they are (constant
    folding could turn their int8 weights back into floats)."""
    model = load_model(model_bytes)
    ops = {node.op_type for node in model.graph.node}
    if "Pad" not in ops or ops & _QUANTIZED_OPS:  # (is_quantized, on the graph already parsed)
        return model_bytes
    folded = fold_constants(model_bytes)  # ORT's own pad fusion may take some here, once their sizes are constants
    fold_pads_into_convs(folded)
    if sum(node.op_type == "Pad" for node in folded.graph.node) == sum(node.op_type == "Pad" for node in model.graph.node):
        return model_bytes
    return bytes(folded.SerializeToString())
