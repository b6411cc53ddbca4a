"""Labelling frames for training: a teacher ensemble (NanoDet + CenterNet, boxes fused) or an oracle.

The oracle reads MOT ground truth and stands in for human annotators in experiments; every label it
makes says so in ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detectors.boxes import box_iou
from detectors.detector import Detector, read_model
from detectors.results import BoxArray
from streams.mot import GroundTruth

TEACHER_SOURCE = "teacher: nanodet + centernet, weighted box fusion"
ORACLE_SOURCE = "oracle: MOT ground truth standing in for human annotators"
# training labels also keep the teachers' unsure boxes (fused confidence from here up to 0.3): training
# ignores their area instead of teaching the student that a half-seen person is background
UNSURE_FROM = 0.1
TEACHER_WITH_UNSURE_SOURCE = f"{TEACHER_SOURCE}, unsure boxes from {UNSURE_FROM}"


@dataclass(frozen=True)
class Labels:
    """Boxes (frame pixels) with a confidence each, and who made them."""

    boxes: BoxArray
    source: str


def weighted_box_fusion(per_model: list[BoxArray], iou_threshold: float = 0.55) -> BoxArray:
    """Fuse the boxes of several models: clusters of overlapping boxes become one box, the
    score-weighted mean of the cluster, scored by the mean over *all* models (a box only one model
    found keeps half its score with two models)."""
    models = len(per_model)
    every = BoxArray.concat(per_model)
    if not len(every):
        return every
    order = np.argsort(-every.scores)
    clusters: list[list[int]] = []
    fused_boxes: list[np.ndarray] = []
    for i in order:
        if fused_boxes:
            ious = box_iou(every.xyxy[i : i + 1], np.stack(fused_boxes))[0]
            best = int(ious.argmax())
            if ious[best] > iou_threshold:
                clusters[best].append(int(i))
                members = clusters[best]
                weights = every.scores[members]
                fused_boxes[best] = (every.xyxy[members] * weights[:, None]).sum(0) / weights.sum()
                continue
        clusters.append([int(i)])
        fused_boxes.append(every.xyxy[i].copy())
    scores = np.array([min(every.scores[c].sum() / models, 1.0) for c in clusters], np.float32)
    return BoxArray.of(np.stack(fused_boxes), scores)


DARK_MEAN = 70.0  # a frame darker than this on average (0-255) is brightened before the teachers see it
TARGET_MEAN = 110.0


def normalize_exposure(image_bgr: np.ndarray) -> np.ndarray:
    """A dark (night) frame scaled to a daylight mean brightness and lightly blurred against sensor
    noise; other frames unchanged. Only the teachers see this: the student trains on the raw frame.
    Measured on PETS09-S2L1 398-795 made night-like (brightness 0.25, noise 12): NanoDet AP50
    0.35 raw -> 0.85 normalised."""
    mean = float(image_bgr.mean())
    if mean >= DARK_MEAN:
        return image_bgr
    gained = np.clip(image_bgr.astype(np.float32) * (TARGET_MEAN / max(mean, 1.0)), 0, 255).astype(np.uint8)
    smoothed: np.ndarray = cv2.GaussianBlur(gained, (5, 5), 0)
    return smoothed


class TeacherLabeler:
    """NanoDet and CenterNet from the shared models folder on ONNX Runtime, fused (dark frames are
    normalised for the teachers first, see ``normalize_exposure``)."""

    def __init__(self, models_dir: Path, min_score: float = 0.3, threads: int = 0) -> None:
        self.teachers = [
            Detector.from_bytes(read_model(models_dir / f"{name}.onnx"), backend="ort", name=name, threads=threads)
            for name in ("nanodet", "centernet")
        ]
        self.min_score = min_score

    def label(self, image_bgr: np.ndarray) -> Labels:
        seen = normalize_exposure(image_bgr)
        per_model = [teacher.detect([seen])[0].above(0.1) for teacher in self.teachers]
        return Labels(weighted_box_fusion(per_model).above(self.min_score), TEACHER_SOURCE)


class OracleLabeler:
    """Ground truth as labels (boxes flagged not to be considered are left out)."""

    def label(self, truth: GroundTruth) -> Labels:
        keep = truth.consider
        return Labels(BoxArray.of(truth.xyxy[keep], np.ones(int(keep.sum()), np.float32)), ORACLE_SOURCE)
