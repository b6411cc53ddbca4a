"""Graph-level preparation of an ONNX model for TVM: what the importer is given and which layout it compiles in.

Three changes, each measured on the bundled student (``pedstream bench tvm-levers``):

* **Zero ``Pad`` folded into the ``Conv`` after it** (``onnx_graph.fold_pads_into_convs``, which
  ONNX Runtime gets too): TVM's importer turns a ``Pad`` into an opaque TIR function that neither
  fuses with the convolution nor follows a layout change.
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

LAYOUTS = ("NCHW", "NHWC")
DEFAULT_LAYOUT = "NHWC"


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
