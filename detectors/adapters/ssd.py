"""TensorFlow Object Detection API SSD exports (the SSDLite pedestrian model): NMS is inside the graph."""

from __future__ import annotations

import numpy as np

from detectors.adapters.base import ImageMeta, ModelAdapter
from detectors.backends.base import TensorSpec
from detectors.boxes import clip_boxes
from detectors.results import BoxArray


class TfSsdAdapter(ModelAdapter):
    """Input uint8 [N, H, W, 3] RGB at 300x300; boxes come normalised as [y0, x0, y1, x1]."""

    format = "tf-ssd"
    layout = "NHWC"
    dtype = "uint8"
    scale_to_unit = False
    default_size = (300, 300)

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], input_size: tuple[int, int] | None = None) -> None:
        spec = inputs[0]
        symbolic = not all(isinstance(d, int) for d in spec.shape[1:3])
        super().__init__(inputs, outputs, input_size or (self.default_size if symbolic else None))

    @classmethod
    def matches(cls, inputs: list[TensorSpec], outputs: list[TensorSpec], metadata: dict[str, str]) -> bool:
        names = {o.name.split(":")[0] for o in outputs}
        return inputs[0].dtype == "uint8" and {"detection_boxes", "detection_scores"} <= names

    def decode(self, outputs: list[np.ndarray], index: int, meta: ImageMeta) -> BoxArray:
        count = int(self.output(outputs, "num_detections")[index])
        boxes = self.output(outputs, "detection_boxes")[index, :count]
        scores = self.output(outputs, "detection_scores")[index, :count]
        xyxy = np.stack([boxes[:, 1] * meta.width, boxes[:, 0] * meta.height, boxes[:, 3] * meta.width, boxes[:, 2] * meta.height], axis=1)
        return BoxArray.of(clip_boxes(xyxy, meta.width, meta.height), scores)
