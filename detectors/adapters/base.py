"""The adapter interface: frames in, model input batch out; model outputs in, person boxes in frame pixels out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from detectors.backends.base import TensorSpec
from detectors.results import BoxArray


@dataclass(frozen=True)
class ImageMeta:
    """How a frame was mapped to the model input: multiply input coordinates by ``scale`` to get pixels."""

    width: int
    height: int
    scale_x: float
    scale_y: float


class ModelAdapter(ABC):
    """One detector family. Subclasses set ``format`` and the input layout, and decode outputs."""

    format: ClassVar[str]
    # the input contract; an adapter whose models come in two contracts sets these per instance
    layout: str = "NCHW"  # or "NHWC"
    dtype: str = "float32"
    scale_to_unit: bool = True  # divide pixel values by 255
    rgb: bool = True  # False: the model takes the frame's BGR channel order as decoded

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], input_size: tuple[int, int] | None = None) -> None:
        self.input_name = inputs[0].name
        self.output_specs = outputs
        self.input_size = input_size or self._size_from_spec(inputs[0])  # (width, height)

    def _size_from_spec(self, spec: TensorSpec) -> tuple[int, int]:
        h, w = (spec.shape[2], spec.shape[3]) if self.layout == "NCHW" else (spec.shape[1], spec.shape[2])
        if not isinstance(h, int) or not isinstance(w, int):
            raise ValueError(f"{self.format}: the model's input size is symbolic; give input_size")
        return w, h

    @classmethod
    @abstractmethod
    def matches(cls, inputs: list[TensorSpec], outputs: list[TensorSpec], metadata: dict[str, str]) -> bool:
        """Whether a model with these tensors (and ONNX metadata) is of this family."""

    def preprocess_one(self, image_bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        """Resize (no letterbox) and convert one BGR frame to the model's layout, dtype and scale."""
        h, w = image_bgr.shape[:2]
        in_w, in_h = self.input_size
        resized = cv2.resize(image_bgr, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB) if self.rgb else resized
        tensor = rgb.astype(self.dtype, copy=False)  # a uint8 model (frame input) takes the resized frame as it is
        if self.scale_to_unit:
            tensor *= np.float32(1.0 / 255.0)
        if self.layout == "NCHW":
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor), ImageMeta(w, h, w / in_w, h / in_h)

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[ImageMeta]]:
        tensors, metas = zip(*(self.preprocess_one(img) for img in images), strict=False)
        batch = tensors[0][np.newaxis] if len(tensors) == 1 else np.stack(tensors)  # one frame: no copy
        return batch, list(metas)

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], index: int, meta: ImageMeta) -> BoxArray:
        """Person boxes of image ``index`` of the batch, in frame pixels."""

    def postprocess(self, outputs: list[np.ndarray], metas: list[ImageMeta]) -> list[BoxArray]:
        return [self.decode(outputs, i, meta) for i, meta in enumerate(metas)]

    def output(self, outputs: list[np.ndarray], name_part: str) -> np.ndarray:
        """The output whose name contains ``name_part``."""
        for spec, value in zip(self.output_specs, outputs, strict=False):
            if name_part in spec.name:
                return value
        raise KeyError(f"{self.format}: no output named like {name_part!r}")
