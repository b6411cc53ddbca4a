"""Scoring detections against MOT ground truth: VOC all-point AP at IoU 0.5 (ignored boxes honoured),
the kinds of error among the boxes an agent would publish, how sure a model is of people by their
height, and fps timed in interleaved rounds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from detectors.boxes import box_iou
from detectors.results import PUBLISH_THRESHOLD, BoxArray
from streams.mot import GroundTruth, MotSequence

LABELLED_SIZE_FRACTION = 0.5  # see within_labelled_sizes
ERRORS_AT_SCORE = PUBLISH_THRESHOLD  # errors are counted among the boxes a detector agent would publish
NEAR_IOU = 0.1  # a false positive overlapping a labelled person at least this much (but under the match IoU) is "misplaced"
HEIGHT_EDGES_PX = (0, 50, 100, 200, 400)  # people_by_height's ranges of a person's height in frame pixels (the last is open)


@dataclass(frozen=True)
class Score:
    ap50: float
    recall: float  # best recall over all score thresholds
    positives: int  # ground-truth boxes that count
    detections: int


@dataclass(frozen=True)
class FrameMatches:
    """One frame's detections matched to its truths at an IoU threshold: each detection's score and
    whether it is a hit (tp) or a false positive (fp; neither when it falls on an ignored box), and
    its best IoU with any truth (0 where the frame has none); all in descending score order."""

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    best_iou: np.ndarray


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
    best_iou = ious.max(axis=1)[order] if len(truth.xyxy) else np.zeros(len(order))
    return FrameMatches(found.scores[order].astype(float), tp, fp, int(truth.consider.sum()), best_iou)


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


@dataclass(frozen=True)
class ErrorCounts:
    """What a detector gets wrong among its boxes scored ``min_score`` or more, over many frames:
    ``misplaced`` overlaps a labelled person but too little to match (a part of a person, or a box
    beside one), ``duplicate`` matches a person already matched by a better box, ``background``
    overlaps no labelled person (background, or a person the labels leave out); ``missed``: labelled
    people no box of that score matches."""

    min_score: float
    hits: int
    misplaced: int
    duplicate: int
    background: int
    missed: int

    def as_dict(self) -> dict[str, float | int]:
        return {"min_score": self.min_score, "hits": self.hits, "misplaced": self.misplaced, "duplicate": self.duplicate,
                "background": self.background, "missed": self.missed}  # fmt: skip


def count_errors(
    detections: list[BoxArray], truths: list[GroundTruth], min_score: float = ERRORS_AT_SCORE, iou_threshold: float = 0.5
) -> ErrorCounts:
    """Hits and the kinds of error among the detections scored ``min_score`` or more (matched as
    ``match_frame`` does; a box on an ignored person counts as nothing)."""
    hits = misplaced = duplicate = background = missed = 0
    for found, truth in zip(detections, truths, strict=True):
        kept = found[found.scores >= min_score]
        matches = match_frame(kept, truth, iou_threshold)
        best, false = matches.best_iou, matches.fp.astype(bool)
        hits += int(matches.tp.sum())
        duplicate += int((false & (best >= iou_threshold)).sum())
        misplaced += int((false & (best >= NEAR_IOU) & (best < iou_threshold)).sum())
        background += int((false & (best < NEAR_IOU)).sum())
        missed += matches.positives - int(matches.tp.sum())
    return ErrorCounts(min_score, hits, misplaced, duplicate, background, missed)


@dataclass(frozen=True)
class HeightRange:
    """The labelled people whose height (frame pixels) is in [low, high) (``high`` None: no upper
    bound): how many, how many a box scored ``min_score`` or more overlaps at IoU 0.5 (``found``:
    counted per person, so two people one box covers both count, unlike ``ErrorCounts.hits``), and
    the median of each one's best score among the boxes overlapping them at IoU 0.5 (0 when none does)."""

    low: float
    high: float | None
    people: int
    found: int
    median_best_score: float

    def as_dict(self) -> dict[str, object]:
        return {"height_px": [self.low, self.high], "people": self.people, "found": self.found,
                "median_best_score": round(self.median_best_score, 3)}  # fmt: skip


def people_by_height(
    detections: list[BoxArray],
    truths: list[GroundTruth],
    min_score: float = ERRORS_AT_SCORE,
    iou_threshold: float = 0.5,
    edges: tuple[float, ...] = HEIGHT_EDGES_PX,
) -> tuple[HeightRange, ...]:
    """How sure a model is of the labelled people of each height range (ranges with nobody left
    out). A model that finds big people but scores them as low as its false boxes ranks them among
    those: its AP suffers though its recall does not (on TUD-Campus, never trained on, a student's
    median best score for people 200-400 px tall was 0.59, SSDLite's 0.91)."""
    heights: list[np.ndarray] = []
    best: list[np.ndarray] = []
    for found, truth in zip(detections, truths, strict=True):
        people = truth.xyxy[truth.consider]
        if len(people) == 0:
            continue
        heights.append(people[:, 3] - people[:, 1])
        overlaps = box_iou(people, found.xyxy)
        best.append(np.where(overlaps >= iou_threshold, found.scores[None, :], 0.0).max(axis=1) if len(found) else np.zeros(len(people)))
    if not heights:
        return ()
    height, best_score = np.concatenate(heights), np.concatenate(best)
    ranges = []
    for low, high in zip(edges, [*edges[1:], None], strict=True):
        inside = (height >= low) & (height < high if high is not None else True)
        if inside.any():
            scores = best_score[inside]
            ranges.append(HeightRange(float(low), float(high) if high is not None else None, int(inside.sum()),
                                      int((scores >= min_score).sum()), float(np.median(scores))))  # fmt: skip
    return tuple(ranges)


def average_precision(detections: list[BoxArray], truths: list[GroundTruth], iou_threshold: float = 0.5) -> Score:
    """VOC all-point AP over frames. A detection whose best-overlapping truth is flagged not to be
    considered is neither a hit nor a false positive (as VOC treats 'difficult' boxes)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} frames")
    return score_matches([match_frame(d, t, iou_threshold) for d, t in zip(detections, truths, strict=True)])


def within_labelled_sizes(detections: list[BoxArray], truths: list[GroundTruth]) -> list[BoxArray]:
    """The detections less those under half the height of the smallest labelled person in these frames.

    Such a box cannot reach IoU 0.5 with any labelled person (its height alone keeps the overlap
    under 0.5), so dropping it removes no hit. What it removes is what a camera's labels leave out:
    TUD-Campus labels only the people on its square (129 px and taller), not the smaller ones seen
    through the building's windows. Like the height range of Caltech's "reasonable" protocol, a
    diagnostic beside AP50, never instead of it."""
    heights = [t.xyxy[t.consider, 3] - t.xyxy[t.consider, 1] for t in truths]
    labelled = np.concatenate(heights) if heights else np.empty(0)
    if labelled.size == 0:
        return detections
    floor = float(labelled.min()) * LABELLED_SIZE_FRACTION
    return [found[(found.xyxy[:, 3] - found.xyxy[:, 1]) >= floor] for found in detections]


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
    ap50_labelled_sizes: float  # detections that cannot match a labelled person by height left out
    errors: ErrorCounts  # among the boxes the detector agent would publish
    by_height: tuple[HeightRange, ...] = ()  # how sure the model is of people, by their height
    # each frame's detections matched at IoU 0.5 (for paired comparisons of models on the same frames)
    matches: tuple[FrameMatches, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "ap50": round(self.ap50, 4),
            "ap50_labelled_sizes": round(self.ap50_labelled_sizes, 4),
            "recall": round(self.recall, 4),
            "fps": round(self.fps, 2),
            "frames": self.frames,
            "positives": self.positives,
            "detections": self.detections,
            "errors": self.errors.as_dict(),
            "people_by_height": [r.as_dict() for r in self.by_height],
        }


def evaluate_sequence(
    detect: Callable[[list[np.ndarray]], list[BoxArray]],
    sequence: MotSequence,
    start: int = 1,
    stop: int | None = None,
    every: int = 1,
    progress: Callable[[int], None] | None = None,
    warmup: int = 3,
    frames: Iterable[tuple[int, np.ndarray]] | None = None,
) -> EvalResult:
    """Run ``detect`` one frame at a time over a range of a sequence and score it; fps counts detection
    only, in steady state: the first frame is detected ``warmup`` times, untimed, before anything is
    timed (a fresh ONNX Runtime session's first runs are several times slower, which on a short
    sequence such as TUD-Campus's 71 frames halved the measured fps). ``frames``: those
    ``(number, image)`` pairs of the range, already read (to score several models on frames read once)."""
    found: list[BoxArray] = []
    truths: list[GroundTruth] = []
    spent = 0.0
    for number, image in sequence.frames(start, stop, every) if frames is None else frames:
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
    matches = tuple(match_frame(boxes, truth) for boxes, truth in zip(found, truths, strict=True))
    score = score_matches(list(matches))
    sized = average_precision(within_labelled_sizes(found, truths), truths)
    fps = len(found) / spent if spent else 0.0
    errors = count_errors(found, truths)
    by_height = people_by_height(found, truths)
    return EvalResult(score.ap50, score.recall, fps, len(found), score.positives, score.detections, sized.ap50, errors, by_height, matches)


def interleaved_fps(
    detectors: Mapping[str, Callable[[list[np.ndarray]], list[BoxArray]]], frames: list[np.ndarray], rounds: int = 3, warmup: int = 3
) -> dict[str, float]:
    """Frames per second of each detector over the same frames (one at a time), timed in ``rounds``
    interleaved rounds: every detector once per round, the order rotating, and each one's fps taken
    from its median round. On a shared machine a burst of load then slows one round of every detector
    instead of all of one detector's timing, so the ratios between them hold within a run."""
    if not frames or not detectors or rounds < 1:
        raise ValueError("interleaved_fps needs frames, detectors and at least one round")
    names = list(detectors)
    for name in names:
        for _ in range(warmup):
            detectors[name]([frames[0]])
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            detect = detectors[name]
            t0 = time.perf_counter()
            for frame in frames:
                detect([frame])
            seconds[name].append(time.perf_counter() - t0)
    return {name: len(frames) / float(np.median(spent)) for name, spent in seconds.items()}
