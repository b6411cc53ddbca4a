"""Scoring detections against MOT ground truth: VOC all-point AP at IoU 0.5, ignored boxes honoured."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detectors.boxes import box_iou
from detectors.results import BoxArray
from streams.mot import GroundTruth, MotSequence


@dataclass(frozen=True)
class Score:
    ap50: float
    recall: float  # best recall over all score thresholds
    positives: int  # ground-truth boxes that count
    detections: int


@dataclass(frozen=True)
class FrameMatches:
    """One frame's detections matched to its truths at an IoU threshold: each detection's score and
    whether it is a hit (tp) or a false positive (fp; neither when it falls on an ignored box)."""

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int


def match_frame(found: BoxArray, truth: GroundTruth, iou_threshold: float = 0.5) -> FrameMatches:
    """Greedy matching by descending score, as VOC does (matching never crosses frames, so a
    frame's matches are the same whatever frames are scored with it)."""
    order = np.argsort(-found.scores, kind="stable")
    ious = box_iou(found.xyxy, truth.xyxy)
    matched = np.zeros(len(truth.xyxy), bool)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for k, i in enumerate(order):
        overlaps = ious[i] if len(truth.xyxy) else np.empty(0)
        if overlaps.size == 0 or overlaps.max() < iou_threshold:
            fp[k] = 1
            continue
        j = int(overlaps.argmax())
        if not truth.consider[j]:
            continue  # ignored region
        if matched[j]:
            fp[k] = 1
        else:
            matched[j] = True
            tp[k] = 1
    return FrameMatches(found.scores[order].astype(float), tp, fp, int(truth.consider.sum()))


def score_matches(frames: list[FrameMatches]) -> Score:
    """VOC all-point AP of these frames' matches together."""
    positives = sum(f.positives for f in frames)
    scores = np.concatenate([f.scores for f in frames]) if frames else np.empty(0)
    if positives == 0:
        return Score(0.0, 0.0, 0, len(scores))
    order = np.argsort(-scores, kind="stable")
    tp_cum = np.cumsum(np.concatenate([f.tp for f in frames])[order])
    fp_cum = np.cumsum(np.concatenate([f.fp for f in frames])[order])
    recall = tp_cum / positives
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(float).eps)
    return Score(_all_point_ap(recall, precision), float(recall.max()) if recall.size else 0.0, positives, len(scores))


def average_precision(detections: list[BoxArray], truths: list[GroundTruth], iou_threshold: float = 0.5) -> Score:
    """VOC all-point AP over frames. A detection whose best-overlapping truth is flagged not to be
    considered is neither a hit nor a false positive (as VOC treats 'difficult' boxes)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} frames")
    return score_matches([match_frame(d, t, iou_threshold) for d, t in zip(detections, truths, strict=True)])


def _all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


@dataclass(frozen=True)
class EvalResult:
    ap50: float
    recall: float
    fps: float
    frames: int
    positives: int
    detections: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ap50": round(self.ap50, 4),
            "recall": round(self.recall, 4),
            "fps": round(self.fps, 2),
            "frames": self.frames,
            "positives": self.positives,
            "detections": self.detections,
        }


def evaluate_sequence(
    detect: Callable[[list[np.ndarray]], list[BoxArray]],
    sequence: MotSequence,
    start: int = 1,
    stop: int | None = None,
    every: int = 1,
    progress: Callable[[int], None] | None = None,
    warmup: int = 3,
) -> EvalResult:
    """Run ``detect`` one frame at a time over a range of a sequence and score it; fps counts detection
    only, in steady state: the first frame is detected ``warmup`` times, untimed, before anything is
    timed (a fresh ONNX Runtime session's first runs are several times slower, which on a short
    sequence such as TUD-Campus's 71 frames halved the measured fps)."""
    found: list[BoxArray] = []
    truths: list[GroundTruth] = []
    spent = 0.0
    for number, image in sequence.frames(start, stop, every):
        if not found:
            for _ in range(warmup):
                detect([image])
        t0 = time.perf_counter()
        [boxes] = detect([image])
        spent += time.perf_counter() - t0
        found.append(boxes)
        truths.append(sequence.gt(number))
        if progress is not None:
            progress(len(found))
    score = average_precision(found, truths)
    return EvalResult(score.ap50, score.recall, len(found) / spent if spent else 0.0, len(found), score.positives, score.detections)
