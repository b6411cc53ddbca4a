"""CenterNet exports with a [N, 100, 6] detections output (x1, y1, x2, y2 in input pixels, score, class)."""

from __future__ import annotations

import numpy as np

from detectors.adapters.base import ImageMeta, ModelAdapter
from detectors.backends.base import TensorSpec
from detectors.boxes import clip_boxes, nms, scale_boxes
from detectors.results import PERSON, BoxArray


class CenterNetAdapter(ModelAdapter):
    """Input float [N, 512, 512, 3] RGB 0-255; person = COCO class 0; NMS at IoU 0.4."""

    format = "centernet"
    layout = "NHWC"
    scale_to_unit = False
    nms_iou = 0.4

    @classmethod
    def matches(cls, inputs: list[TensorSpec], outputs: list[TensorSpec], metadata: dict[str, str]) -> bool:
        return any(o.name.endswith("detections") and len(o.shape) == 3 and o.shape[2] == 6 for o in outputs)

    def decode(self, outputs: list[np.ndarray], index: int, meta: ImageMeta) -> BoxArray:
        det = self.output(outputs, "detections")[index]
        det = det[(det[:, 5].round() == PERSON) & (det[:, 4] > 0)]
        xyxy = clip_boxes(scale_boxes(det[:, :4], meta.scale_x, meta.scale_y), meta.width, meta.height)
        keep = nms(xyxy, det[:, 4], self.nms_iou)
        return BoxArray.of(xyxy[keep], det[keep, 4])
