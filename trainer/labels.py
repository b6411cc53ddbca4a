"""Labelling frames for training: a teacher ensemble (NanoDet + CenterNet by default, boxes fused) or an oracle.

The oracle reads MOT ground truth and stands in for human annotators in experiments; every label it
makes says so in ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from detectors.boxes import box_iou
from detectors.detector import Detector, read_model
from detectors.results import BoxArray
from streams.mot import GroundTruth

# the models a teacher ensemble may hold, by name: their files in the shared models folder
TEACHER_FILES = {"nanodet": "nanodet.onnx", "centernet": "centernet.onnx", "ssdlite": "ssdlite_pedestrian.onnx"}
TEACHERS = ("nanodet", "centernet")  # the default ensemble (and the retraining loop's)
# a fused box's confidence is the mean of its two best teachers' scores: with two teachers, both vote
# (a box one found keeps half its score); with three, one teacher's miss does not sink a box the other
# two agree on. Measured against human labels (sure boxes, fused >= 0.3, AP50; session 12): TUD-Campus
# 0.701 nanodet + centernet, 0.728 with ssdlite when all three vote, 0.748 with the best two;
# PETS09-S2L1 398-795 0.879, 0.858, 0.888.
TEACHER_VOTES = 2


def teacher_source(teachers: tuple[str, ...] = TEACHERS) -> str:
    """What labels made by this ensemble say they are (and the label cache's key)."""
    votes = "" if len(teachers) <= TEACHER_VOTES else f" (best {TEACHER_VOTES} of {len(teachers)})"
    return f"teacher: {' + '.join(teachers)}, weighted box fusion{votes}"


TEACHER_SOURCE = teacher_source()
ORACLE_SOURCE = "oracle: MOT ground truth standing in for human annotators"
# training labels also keep the teachers' unsure boxes (fused confidence from here up to 0.3): training
# ignores their area instead of teaching the student that a half-seen person is background
UNSURE_FROM = 0.1


def with_unsure_source(teachers: tuple[str, ...] = TEACHERS) -> str:
    """The source of training labels that keep the ensemble's unsure boxes."""
    return f"{teacher_source(teachers)}, unsure boxes from {UNSURE_FROM}"


def parse_teachers(text: str) -> tuple[str, ...]:
    """``"nanodet,centernet,ssdlite"`` -> the ensemble; a name not in ``TEACHER_FILES`` is refused."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in TEACHER_FILES]
    if unknown or not names:
        raise ValueError(f"teachers: {', '.join(unknown) or 'none given'}: choose from {', '.join(TEACHER_FILES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"teachers: {text!r} names a model twice")
    return names


@dataclass(frozen=True)
class Labels:
    """Boxes (frame pixels) with a confidence each, and who made them."""

    boxes: BoxArray
    source: str


def weighted_box_fusion(per_model: list[BoxArray], iou_threshold: float = 0.55, votes: int | None = None) -> BoxArray:
    """Fuse the boxes of several models: clusters of overlapping boxes become one box, the
    score-weighted mean of the cluster, scored by the mean of the ``votes`` best models' scores for
    it (a model's score: the sum of its boxes' in the cluster, capped at 1 after the mean; a model
    that found nothing there counts 0; ``None``: every model votes, so a box only one of two models
    found keeps half its score)."""
    models = len(per_model)
    votes = models if votes is None else min(votes, models)
    every = BoxArray.concat(per_model)
    if not len(every):
        return every
    owner = np.concatenate([np.full(len(boxes), i) for i, boxes in enumerate(per_model)])
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
    scores = np.zeros(len(clusters), np.float32)
    for c, members in enumerate(clusters):
        by_model = np.zeros(models, np.float32)
        np.add.at(by_model, owner[members], every.scores[members])
        scores[c] = min(float(np.sort(by_model)[::-1][:votes].sum()) / votes, 1.0)
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


class Labeller(Protocol):
    """What labels images for training: ``source`` says who did (and keys the label cache)."""

    source: str

    def label(self, image_bgr: np.ndarray) -> Labels: ...


class TeacherLabeler:
    """The ensemble's models (``TEACHER_FILES`` in the shared models folder) on ONNX Runtime, fused
    (dark frames are normalised for the teachers first, see ``normalize_exposure``)."""

    def __init__(self, models_dir: Path, min_score: float = 0.3, threads: int = 0, teachers: tuple[str, ...] = TEACHERS) -> None:
        self.teachers = [
            Detector.from_bytes(read_model(models_dir / TEACHER_FILES[name]), backend="ort", name=name, threads=threads)
            for name in teachers
        ]
        self.source = teacher_source(teachers)
        self.min_score = min_score

    def label(self, image_bgr: np.ndarray) -> Labels:
        seen = normalize_exposure(image_bgr)
        per_model = [teacher.detect([seen])[0].above(0.1) for teacher in self.teachers]
        return Labels(weighted_box_fusion(per_model, votes=TEACHER_VOTES).above(self.min_score), self.source)


class OracleLabeler:
    """Ground truth as labels (boxes flagged not to be considered are left out)."""

    def label(self, truth: GroundTruth) -> Labels:
        keep = truth.consider
        return Labels(BoxArray.of(truth.xyxy[keep], np.ones(int(keep.sum()), np.float32)), ORACLE_SOURCE)
