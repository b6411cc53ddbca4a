"""Reading and preparing ONNX graphs: their tensor signature, and constant folding before other compilers.

TVM's ONNX importer cannot follow shape computations that ONNX Runtime folds away (NanoDet's
``Reshape`` to a computed shape), so models are passed through ONNX Runtime's basic graph
optimisations (constant folding, redundant node elimination; no fused custom ops) first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

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
