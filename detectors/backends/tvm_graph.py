"""Graph-level preparation of an ONNX model for TVM: what the importer is given and which layout it compiles in.

Three changes, each measured on the bundled student (``pedstream bench tvm-levers``):

* **Zero ``Pad`` folded into the ``Conv`` after it.** PyTorch exports TensorFlow-style asymmetric
  padding as a separate ``Pad``; TVM's importer turns it into an opaque TIR function that neither
  fuses with the convolution nor follows a layout change. ONNX ``Conv`` takes asymmetric pads
  itself, so the ``Pad`` goes away. Outputs are identical.
* **``Clip`` with constant bounds imported as Relax ``maximum``/``minimum``** instead of the
  importer's opaque TIR calls, so ReLU6 fuses into the convolution before it and follows layouts.
* **Channels-last (``NHWC``, weights ``HWIO``).** TVM's CPU code vectorises the innermost loop;
  in NHWC that is the channel loop, contiguous in memory for activations and weights, where NCHW
  offers only image columns. Weights are bound as constants so their layout change happens once,
  at compile time (they then live inside the compiled library).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

LAYOUTS = ("NCHW", "NHWC")
DEFAULT_LAYOUT = "NHWC"


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


@contextlib.contextmanager
def clip_as_relax_ops() -> Iterator[None]:
    """While importing: ONNX ``Clip`` with constant bounds becomes Relax ``maximum``/``minimum``
    (layout-aware, fusible) rather than the importer's opaque TIR functions. Other ``Clip`` nodes
    (bounds computed at run time) keep the importer's own conversion."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend.Clip.__dict__["_impl_v13"]  # the classmethod object, restored as it was

    def convert(cls: type, bb: Any, inputs: list[Any], attr: dict[str, Any], params: Any) -> Any:
        bounds = [(inputs[1], relax.op.maximum), (inputs[2], relax.op.minimum)]
        if not all(b is None or isinstance(b, tvm.ir.expr.Constant) for b, _ in bounds):
            return original.__func__(cls, bb, inputs, attr, params)
        result = inputs[0]
        for bound, op in bounds:
            if bound is not None:
                result = bb.emit(op(result, bound))
        return result

    onnx_frontend.Clip._impl_v13 = classmethod(convert)
    try:
        yield
    finally:
        onnx_frontend.Clip._impl_v13 = original


def to_layout(mod: Any, layout: str, target: Any) -> Any:
    """The Relax module with its convolutions in ``layout`` (constants' layout changes folded)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "NCHW":
        return mod
    import tvm
    from tvm import relax

    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
                relax.transform.Normalize(),
                relax.transform.LegalizeOps(),  # layout_transform of the (constant) weights ...
                relax.transform.FoldConstant(),  # ... done here, once
            ]
        )(mod)
