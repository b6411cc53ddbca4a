"""Training targets and loss for the student: Gaussian centre heatmaps, box size and offset regression."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from detectors.adapters.student import SIZE_UNIT, STRIDE

COARSE_STRIDE = 16  # the stride of a student's second head, for tall people (``StudentConfig.tall_from``)
# the coarse head's loss counts a quarter: at full weight (its few tall people each weigh as much as
# the fine head's many) it pulled the shared neck its way: the fine head lost ~5 points AP50 (session 22)
COARSE_LOSS_WEIGHT = 0.25
COARSE_PREFIX = "coarse_"  # a coarse head's targets, beside the fine head's in one batch (``trainer.data.make_batch``)


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: how far a centre may move while a box keeps IoU >= ``min_overlap``."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return float(max(0.0, min(r1, r2, r3)))


def make_targets(
    boxes: np.ndarray, input_w: int, input_h: int, stride: int = STRIDE, ignored: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Targets for one image from (N, 4) boxes in input pixels: heatmap (1, h, w), regression (4, h, w),
    mask (h, w), and background weight (h, w): 0 over ``ignored`` boxes (people the labeller was unsure
    of), so the heatmap is taught neither that they are people nor that they are background."""
    h, w = input_h // stride, input_w // stride
    heatmap = np.zeros((1, h, w), np.float32)
    regression = np.zeros((4, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    background_weight = np.ones((h, w), np.float32)
    for x1, y1, x2, y2 in ignored if ignored is not None else ():
        rows = slice(max(0, int(y1 // stride)), int(np.ceil(y2 / stride)))
        background_weight[rows, max(0, int(x1 // stride)) : int(np.ceil(x2 / stride))] = 0.0
    ys, xs = np.mgrid[0:h, 0:w]
    for x1, y1, x2, y2 in boxes:
        bw, bh = x2 - x1, y2 - y1
        if bw < 2 or bh < 2:
            continue
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        col, row = int(cx), int(cy)
        if not (0 <= col < w and 0 <= row < h):
            continue
        sigma = max(0.0, gaussian_radius(bh / stride, bw / stride)) / 3 + 0.5
        blob = np.exp(-((xs - col) ** 2 + (ys - row) ** 2) / (2 * sigma**2))
        heatmap[0] = np.maximum(heatmap[0], blob)
        heatmap[0, row, col] = 1.0
        regression[:, row, col] = [np.log(bw / SIZE_UNIT), np.log(bh / SIZE_UNIT), cx - col, cy - row]
        mask[row, col] = 1.0
    return {"heatmap": heatmap, "regression": regression, "mask": mask, "background_weight": background_weight}


def focal_loss(pred: torch.Tensor, target: torch.Tensor, background_weight: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of centres.
    ``background_weight`` (N, H, W) scales the background term per cell (0: ignored)."""
    pred = pred.clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    negative_weight = (1 - target) ** 4
    if background_weight is not None:
        negative_weight = negative_weight * background_weight.unsqueeze(1)
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * positive
    neg_loss = torch.log(1 - pred) * pred**2 * negative_weight * (1 - positive)
    count = positive.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / count


def detection_loss(heatmap: torch.Tensor, regression: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Focal loss on the heatmap plus L1 on size and offset at the centres."""
    mask = targets["mask"].unsqueeze(1)
    count = mask.sum().clamp(min=1.0)
    reg = F.l1_loss(regression * mask, targets["regression"] * mask, reduction="sum") / count
    return focal_loss(heatmap, targets["heatmap"], targets.get("background_weight")) + reg


def student_loss(levels: list[tuple[torch.Tensor, torch.Tensor]], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """``detection_loss`` of each of the student's heads (``Student.levels``) against its own targets."""
    fine = {key: value for key, value in targets.items() if not key.startswith(COARSE_PREFIX)}
    loss = detection_loss(*levels[0], fine)
    if len(levels) > 1:
        coarse = {key.removeprefix(COARSE_PREFIX): value for key, value in targets.items() if key.startswith(COARSE_PREFIX)}
        loss = loss + COARSE_LOSS_WEIGHT * detection_loss(*levels[1], coarse)
    return loss
