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


def average_precision(detections: list[BoxArray], truths: list[GroundTruth], iou_threshold: float = 0.5) -> Score:
    """VOC all-point AP over frames. A detection whose best-overlapping truth is flagged not to be
    considered is neither a hit nor a false positive (as VOC treats 'difficult' boxes)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} frames")
    positives = int(sum(int(t.consider.sum()) for t in truths))
    entries = [(float(s), f, i) for f, d in enumerate(detections) for i, s in enumerate(d.scores)]
    entries.sort(key=lambda e: -e[0])
    matched = [np.zeros(len(t.xyxy), bool) for t in truths]
    ious = [box_iou(d.xyxy, t.xyxy) for d, t in zip(detections, truths, strict=False)]
    tp = np.zeros(len(entries))
    fp = np.zeros(len(entries))
    for k, (_, f, i) in enumerate(entries):
        overlaps = ious[f][i] if len(truths[f].xyxy) else np.empty(0)
        if overlaps.size == 0 or overlaps.max() < iou_threshold:
            fp[k] = 1
            continue
        j = int(overlaps.argmax())
        if not truths[f].consider[j]:
            continue  # ignored region
        if matched[f][j]:
            fp[k] = 1
        else:
            matched[f][j] = True
            tp[k] = 1
    if positives == 0:
        return Score(0.0, 0.0, 0, len(entries))
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_cum / positives
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(float).eps)
    return Score(_all_point_ap(recall, precision), float(recall.max()) if recall.size else 0.0, positives, len(entries))


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
