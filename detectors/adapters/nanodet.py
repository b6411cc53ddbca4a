"""NanoDet exports: per stride, class probabilities [N, g*g, C] and side distributions [N, g*g, 4*bins]."""

from __future__ import annotations

import numpy as np

from detectors.adapters.base import ImageMeta, ModelAdapter
from detectors.backends.base import TensorSpec
from detectors.boxes import clip_boxes, nms, scale_boxes
from detectors.results import PERSON, BoxArray


class NanoDetAdapter(ModelAdapter):
    """Input float [N, 3, 416, 416] RGB / 255. Each side is a softmax over bins; expected bin x stride is
    the distance from the cell centre to the left/top/right/bottom edge. Person cells above 0.05, NMS 0.5."""

    format = "nanodet"
    min_score = 0.05
    nms_iou = 0.5

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], input_size: tuple[int, int] | None = None) -> None:
        super().__init__(inputs, outputs, input_size)
        self.levels = _pair_levels(outputs)

    @classmethod
    def matches(cls, inputs: list[TensorSpec], outputs: list[TensorSpec], metadata: dict[str, str]) -> bool:
        try:
            return len(_pair_levels(outputs)) >= 2
        except ValueError:
            return False

    def decode(self, outputs: list[np.ndarray], index: int, meta: ImageMeta) -> BoxArray:
        in_w, _ = self.input_size
        parts = []
        for cells, score_i, reg_i in self.levels:
            grid = int(round(np.sqrt(cells)))
            stride = in_w / grid
            scores = outputs[score_i][index, :, PERSON]
            chosen = np.flatnonzero(scores > self.min_score)
            if chosen.size == 0:
                continue
            reg = outputs[reg_i][index, chosen].reshape(len(chosen), 4, -1)
            bins = reg.shape[2]
            prob = np.exp(reg - reg.max(axis=2, keepdims=True))
            prob /= prob.sum(axis=2, keepdims=True)
            dist = (prob * np.arange(bins, dtype=np.float32)).sum(axis=2) * stride
            cx = (chosen % grid + 0.5) * stride
            cy = (chosen // grid + 0.5) * stride
            xyxy = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)
            parts.append(BoxArray.of(xyxy, scores[chosen]))
        found = BoxArray.concat(parts)
        if not len(found):
            return found
        xyxy = clip_boxes(scale_boxes(found.xyxy, meta.scale_x, meta.scale_y), meta.width, meta.height)
        keep = nms(xyxy, found.scores, self.nms_iou)
        return BoxArray.of(xyxy[keep], found.scores[keep])


def _pair_levels(outputs: list[TensorSpec]) -> list[tuple[int, int, int]]:
    """(cells, score output index, regression output index) per pyramid level, finest first.

    Outputs pair up by cell count. In a pair, the regression output is the one whose last
    dimension is a multiple of 4 (4 sides x bins); when both are, the COCO 80-class score output
    is the score, and otherwise the smaller one is the regression.
    """
    by_cells: dict[int, list[tuple[int, int]]] = {}
    for i, o in enumerate(outputs):
        if len(o.shape) != 3 or not isinstance(o.shape[1], int) or not isinstance(o.shape[2], int):
            raise ValueError("not a NanoDet output")
        by_cells.setdefault(o.shape[1], []).append((i, o.shape[2]))
    levels = []
    for cells, pair in sorted(by_cells.items(), reverse=True):
        if len(pair) != 2:
            raise ValueError("NanoDet outputs come in pairs per level")
        (a, dim_a), (b, dim_b) = pair
        if dim_a % 4 == 0 and dim_b % 4 == 0:
            reg_first = dim_b == 80 or (dim_a != 80 and dim_a < dim_b)
        else:
            reg_first = dim_a % 4 == 0
        levels.append((cells, b, a) if reg_first else (cells, a, b))
    return levels
