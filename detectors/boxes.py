"""Box maths as small functions: intersection, IoU, non-maximum suppression (OpenCV's), clipping, scaling."""

from __future__ import annotations

import cv2
import numpy as np


def box_area(xyxy: np.ndarray) -> np.ndarray:
    """Areas of (N, 4) boxes; degenerate boxes have area 0."""
    area: np.ndarray = np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)
    return area


def box_intersection(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Overlap area of every box in ``boxes_a`` (N, 4) with every box in ``boxes_b`` (M, 4): (N, M)."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter: np.ndarray = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    return inter


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``boxes_a`` (N, 4) with every box in ``boxes_b`` (M, 4): an (N, M) matrix.

    Examples:
        >>> print(box_iou(np.array([[0, 0, 2, 2.]]), np.array([[1, 0, 3, 2.], [5, 5, 6, 6.]])).round(3))
        [[0.333 0.   ]]
    """
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)), np.float32)
    inter = box_intersection(boxes_a, boxes_b)
    union = box_area(boxes_a)[:, None] + box_area(boxes_b)[None, :] - inter
    iou: np.ndarray = (inter / np.maximum(union, 1e-9)).astype(np.float32)
    return iou


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first (a box is
    dropped when its IoU with a kept, better box is above ``iou_threshold``; equal scores keep their
    order). OpenCV's, 15-20x faster than a numpy loop on 300 boxes (0.5 vs 9 ms)."""
    n = len(xyxy)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    # OpenCV keeps only scores above a threshold >= 0: rank them instead (n .. 1, exact in float32)
    ranks = np.empty(n, np.float32)
    ranks[order] = np.arange(n, 0, -1, dtype=np.float32)
    xywh = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]).astype(np.float64)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), ranks.tolist(), 0.0, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def clip_boxes(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes clipped to a ``width`` x ``height`` frame (a new array)."""
    out = xyxy.astype(np.float32, copy=True)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def scale_boxes(xyxy: np.ndarray, scale_x: float, scale_y: float, offset_x: float = 0.0, offset_y: float = 0.0) -> np.ndarray:
    """Boxes multiplied by (scale_x, scale_y) then shifted by (offset_x, offset_y) (a new array)."""
    out = xyxy.astype(np.float32, copy=True)
    out[:, [0, 2]] = out[:, [0, 2]] * scale_x + offset_x
    out[:, [1, 3]] = out[:, [1, 3]] * scale_y + offset_y
    return out
