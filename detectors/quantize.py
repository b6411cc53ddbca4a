"""8-bit models for the CPU edge: ONNX Runtime static quantization (QDQ, per-channel int8 weights,
uint8 activations) calibrated on the camera's own frames.

Measured on the bundled student v1 (2 cores, ORT, PETS09-S2L1 frames 398-795 every 2nd, never
trained on, calibrated on 20 of frames 1-397): AP50 0.800 float -> 0.808 int8, 109 -> 149 fps; the
stock SSDLite 0.671 at 79 fps in the same run. The quantized model keeps the adapter, inputs and
outputs of the original and says so in its metadata (``precision``); ``pedstream quantize`` gives it
its own version (``<version>-int8``: a registry can hold both, and detection records say which served).

Weights use 7 of their 8 bits (``reduce_range``): ONNX Runtime's uint8 x int8 kernels on x86 CPUs
without VNNI (AVX2's vpmaddubsw) add pairs of products into 16 bits and saturate there. Measured on
the bundled student, PETS09-S2L1 frames 398-795 every 2nd, 1 thread: on an AMD EPYC without VNNI full
8-bit weights scored AP50 0.841 (float 0.888), 7-bit 0.878 at the same speed; on a Xeon with VNNI 8-bit
0.885, 7-bit 0.878 (on TUD-Campus, a camera it was trained on, 0.870 vs 0.873). One setting for every
CPU, because a model file moves between machines: the most a VNNI CPU loses is under a point, where
the other would lose five.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from detectors.backends.onnx_graph import load_model, without_spatial_pads
from detectors.detector import VERSION_METADATA_KEY, Detector, onnx_metadata, with_metadata
from streams.errors import PedstreamError

PRECISION_METADATA_KEY = "precision"
INT8_CALIBRATION_IMAGES = 20  # `pedstream quantize`'s default; a few dozen frames of the cameras served are plenty
INT8_REDUCE_RANGE = True  # 7-bit weights: no 16-bit saturation on CPUs without VNNI (see above)


def calibration_picks(available: int, count: int = INT8_CALIBRATION_IMAGES) -> list[int]:
    """Indices of ``count`` images spread evenly over ``available`` ones (all when fewer)."""
    return [int(i) for i in np.linspace(0, available - 1, min(count, available)).astype(int)] if available else []


def image_convolutions(model_bytes: bytes) -> list[str]:
    """The convolutions that read the image's 3 colour channels. They stay float: with 3 input
    channels int8 kernels have little to vectorise, and the student's first convolution took 18% of
    its int8 inference (0.50 of 2.71 ms, 1 thread); kept float it is 2.66 -> 2.41 ms, same AP50."""
    model = load_model(model_bytes)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = weights.get(node.input[1], ())
        if len(shape) == 4 and shape[1] * groups == 3:
            out.append(node.name)
    return out


def quantize_int8(model_bytes: bytes, calibration_images: Iterable[np.ndarray]) -> bytes:
    """The model with int8 weights and uint8 activations, their ranges calibrated on these BGR images
    (a few dozen frames of the cameras it will serve are plenty)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if onnx_metadata(model_bytes).get(PRECISION_METADATA_KEY) == "int8":
        raise PedstreamError("the model is already quantized (precision int8)")
    detector = Detector.from_bytes(model_bytes, name="calibration", threads=1)
    input_name = detector.backend.inputs[0].name
    batches = [{input_name: detector.preprocess([image])[0]} for image in calibration_images]
    if not batches:
        raise PedstreamError("quantization needs calibration images (frames of the cameras the model will serve)")

    class Frames(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="pedstream-quantize-") as tmp:
        source, prepared, quantized = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(without_spatial_pads(model_bytes))  # as ONNX Runtime serves the float model
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Frames(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=INT8_REDUCE_RANGE,
            nodes_to_exclude=image_convolutions(prepared.read_bytes()),
        )
        out = quantized.read_bytes()
    metadata = onnx_metadata(model_bytes)  # quantize_static keeps the graph, not always the metadata
    added = {PRECISION_METADATA_KEY: "int8", "calibration_frames": str(len(batches)), "weight_bits": "7" if INT8_REDUCE_RANGE else "8"}
    return with_metadata(out, **{**metadata, **added})


def with_int8_version(int8_bytes: bytes) -> bytes:
    """The int8 model under its own version, ``<version>-int8``, beside the float model it came from
    (``pedstream quantize``): a registry holds both, and detection records say which one served. A
    retraining cycle's int8 candidate has no float twin and keeps the version it was given."""
    version = onnx_metadata(int8_bytes).get(VERSION_METADATA_KEY)
    if not version or version.endswith("-int8"):
        return int8_bytes
    return with_metadata(int8_bytes, **{VERSION_METADATA_KEY: f"{version}-int8"})
