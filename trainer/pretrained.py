"""Pretrained features for the student: the MobileNetV2 trunk inside the stock SSDLite ONNX model,
cut out and rebuilt as trainable torch modules with its weights.

The cut runs from ``Preprocessor/sub:0`` (the image already scaled to [-1, 1], NCHW) to
``FeatureExtractor/MobilenetV2/expanded_conv_12/add:0`` (stride 16, 96 channels): 39 Conv, 26 Clip
(ReLU6) and 8 Add nodes, 534 k parameters. The few lines below rebuild exactly those three op types
(TF's asymmetric "SAME" padding included) instead of converting with onnx2torch, which needs
torchvision, and torchvision does not import beside this project's torch 2.13.0 CPU build.
``tests/unit/trainer/test_pretrained.py`` checks the rebuilt trunk against ONNX Runtime.
Features that are never trained (the teacher the stem is distilled from) run in ONNX Runtime
itself (``FrozenTrunk``): the same numbers, several times faster than the rebuilt modules on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper, shape_inference, utils
from torch import nn

from detectors.backends.ort import OrtBackend
from streams.errors import PedstreamError

SSDLITE_INPUT = "Preprocessor/sub:0"
SSDLITE_STRIDE4 = "FeatureExtractor/MobilenetV2/expanded_conv_2/add:0"  # 24 channels
SSDLITE_STRIDE8 = "FeatureExtractor/MobilenetV2/expanded_conv_5/add:0"  # 32 channels
SSDLITE_STRIDE16 = "FeatureExtractor/MobilenetV2/expanded_conv_12/add:0"  # 96 channels
SSDLITE_STRIDE32 = "FeatureExtractor/MobilenetV2/expanded_conv_15/add:0"  # 160 channels (a larger view, for large people)


def cut_onnx(model_path: Path, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The part of an ONNX graph between ``inputs`` and ``outputs`` (shapes inferred first)."""
    try:
        model = shape_inference.infer_shapes(onnx.load(str(model_path)))
        return utils.Extractor(model).extract_model(inputs, outputs)
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise PedstreamError(f"{model_path}: cannot cut {inputs} -> {outputs} ({exc})") from None


@dataclass(frozen=True)
class _Op:
    kind: str  # conv, clip, add
    inputs: tuple[str, ...]
    output: str
    module: str = ""  # the conv's name in ``convs``
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # F.pad order: left, right, top, bottom
    low: float = 0.0
    high: float = 6.0


class OnnxTrunk(nn.Module):
    """Conv / Clip / Add nodes of an ONNX graph, run in graph order, with trainable copies of the
    weights. ``forward`` returns the requested outputs in order."""

    def __init__(self, graph: onnx.GraphProto, outputs: list[str]) -> None:
        super().__init__()
        weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.input_name = graph.input[0].name
        self.output_names = outputs
        self.convs = nn.ModuleDict()
        self.ops: list[_Op] = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Conv":
                weight = weights[node.input[1]]
                bias = weights[node.input[2]] if len(node.input) > 2 else None
                conv = nn.Conv2d(
                    weight.shape[1] * int(attrs.get("group", 1)),
                    weight.shape[0],
                    tuple(weight.shape[2:]),
                    stride=tuple(attrs.get("strides", [1, 1])),
                    dilation=tuple(attrs.get("dilations", [1, 1])),
                    groups=int(attrs.get("group", 1)),
                    bias=bias is not None,
                )
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(weight.copy()))
                    if bias is not None and conv.bias is not None:
                        conv.bias.copy_(torch.from_numpy(bias.copy()))
                name = f"conv{len(self.convs)}"
                self.convs[name] = conv
                top, left, bottom, right = (list(attrs.get("pads", [0, 0, 0, 0])) + [0, 0, 0, 0])[:4]
                self.ops.append(_Op("conv", (node.input[0],), node.output[0], name, (left, right, top, bottom)))
            elif node.op_type == "Clip":
                low = float(np.asarray(weights[node.input[1]])) if len(node.input) > 1 and node.input[1] else float(attrs.get("min", 0.0))
                high = float(np.asarray(weights[node.input[2]])) if len(node.input) > 2 and node.input[2] else float(attrs.get("max", 6.0))
                self.ops.append(_Op("clip", (node.input[0],), node.output[0], low=low, high=high))
            elif node.op_type == "Add":
                self.ops.append(_Op("add", (node.input[0], node.input[1]), node.output[0]))
            else:
                raise PedstreamError(f"unsupported op {node.op_type} ({node.name}) in the trunk: only Conv, Clip and Add")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        values = {self.input_name: images}
        for op in self.ops:
            if op.kind == "conv":
                x = values[op.inputs[0]]
                if any(op.pads):
                    x = F.pad(x, op.pads)
                values[op.output] = self.convs[op.module](x)
            elif op.kind == "clip":
                values[op.output] = torch.clamp(values[op.inputs[0]], op.low, op.high)
            else:
                values[op.output] = values[op.inputs[0]] + values[op.inputs[1]]
        return [values[name] for name in self.output_names]


def ssdlite_trunk(model_path: Path, outputs: tuple[str, ...] = (SSDLITE_STRIDE8, SSDLITE_STRIDE16)) -> OnnxTrunk:
    """The stock SSDLite's MobileNetV2 trunk up to ``outputs``, expecting RGB scaled to [-1, 1], NCHW."""
    cut = cut_onnx(model_path, [SSDLITE_INPUT], list(outputs))
    return OnnxTrunk(cut.graph, list(outputs))


class FrozenTrunk:
    """The trunk up to ``outputs`` run by ONNX Runtime, for features that are never trained: the
    teacher of the stem's distillation. Takes and gives torch tensors like ``OnnxTrunk``, for any
    batch and image size; about 5x faster than ``OnnxTrunk`` on 2 cores (16 crops of 160x120: 20 ms
    against 95), equal to 1e-4."""

    def __init__(self, model_path: Path, outputs: tuple[str, ...]) -> None:
        cut = cut_onnx(model_path, [SSDLITE_INPUT], list(outputs))
        # the cut keeps the shapes inferred for the stock input size: leave the sizes free
        del cut.graph.value_info[:]
        for value in list(cut.graph.input) + list(cut.graph.output):
            for dim in value.type.tensor_type.shape.dim[:1] + value.type.tensor_type.shape.dim[2:]:
                dim.ClearField("dim_value")
                dim.dim_param = "any"
        # the serving backend's settings: its threads do not spin-wait, which would slow the torch
        # work after each run (54 -> 98 ms per distillation step)
        self.backend = OrtBackend(cut.SerializeToString())

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        found = self.backend.run({SSDLITE_INPUT: images.detach().numpy()})
        return [torch.from_numpy(np.asarray(f)) for f in found]


def freeze_before(trunk: OnnxTrunk, output: str) -> int:
    """Stop training every conv computed before ``output`` (the generic early features); returns how many."""
    frozen = 0
    for op in trunk.ops:
        if op.output == output:
            break
        if op.kind == "conv":
            for parameter in trunk.convs[op.module].parameters():
                parameter.requires_grad_(False)
            frozen += 1
    return frozen


def to_trunk_input(rgb_01: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (the student's input) -> the trunk's [-1, 1]."""
    return rgb_01 * 2.0 - 1.0
