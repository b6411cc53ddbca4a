"""YOLOv8-style exports: one output [N, 4 + classes, anchors] of (cx, cy, w, h) in input pixels and class scores."""

from __future__ import annotations

import numpy as np

from detectors.adapters.base import ImageMeta, ModelAdapter
from detectors.backends.base import TensorSpec
from detectors.boxes import clip_boxes, nms, scale_boxes
from detectors.results import PERSON, BoxArray


class YoloV8Adapter(ModelAdapter):
    """Input float [N, 3, S, S] RGB / 255 (plain resize); person = class 0; scores above 0.05, NMS 0.5."""

    format = "yolov8"
    min_score = 0.05
    nms_iou = 0.5

    @classmethod
    def matches(cls, inputs: list[TensorSpec], outputs: list[TensorSpec], metadata: dict[str, str]) -> bool:
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, channels, anchors = outputs[0].shape
        return isinstance(channels, int) and channels >= 5 and (not isinstance(anchors, int) or anchors > channels)

    def decode(self, outputs: list[np.ndarray], index: int, meta: ImageMeta) -> BoxArray:
        pred = outputs[0][index].T  # (anchors, 4 + classes)
        scores = pred[:, 4 + PERSON]
        chosen = scores > self.min_score
        cx, cy, w, h = pred[chosen, :4].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy = clip_boxes(scale_boxes(xyxy, meta.scale_x, meta.scale_y), meta.width, meta.height)
        keep = nms(xyxy, scores[chosen], self.nms_iou)
        return BoxArray.of(xyxy[keep], scores[chosen][keep])
