"""A simple IoU tracker per camera: stable track ids, first-seen times and zone entry times for dwell rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detectors.boxes import box_iou
from detectors.results import BoxArray


@dataclass
class Track:
    track_id: int
    box: np.ndarray
    score: float
    first_seen_ts: float
    last_seen_ts: float
    hits: int = 1
    misses: int = 0
    zone_entered_ts: dict[str, float] = field(default_factory=dict)

    @property
    def foot(self) -> tuple[float, float]:
        """Bottom centre of the box: where the person stands."""
        return float((self.box[0] + self.box[2]) / 2), float(self.box[3])


class IouTracker:
    """Greedy IoU matching of detections to tracks, frame by frame, in capture order.

    A track is confirmed after ``min_hits`` matches and dropped after ``max_misses`` frames unseen.
    """

    def __init__(self, iou_threshold: float = 0.3, max_misses: int = 5, min_hits: int = 2) -> None:
        self.iou_threshold = iou_threshold
        self.max_misses = max_misses
        self.min_hits = min_hits
        self.tracks: list[Track] = []
        self._next_id = 1
        self.last_ts = 0.0

    def update(self, detections: BoxArray, ts: float) -> list[int]:
        """Match ``detections`` (already thresholded) at time ``ts``; return the track id of each detection."""
        self.last_ts = ts
        ids = [-1] * len(detections)
        if self.tracks and len(detections):
            ious = box_iou(detections.xyxy, np.stack([t.box for t in self.tracks]))
            pairs = sorted(((ious[d, t], d, t) for d in range(ious.shape[0]) for t in range(ious.shape[1])), reverse=True)
            used_d: set[int] = set()
            used_t: set[int] = set()
            for iou, d, t in pairs:
                if iou < self.iou_threshold:
                    break
                if d in used_d or t in used_t:
                    continue
                used_d.add(d)
                used_t.add(t)
                track = self.tracks[t]
                track.box, track.score, track.last_seen_ts = detections.xyxy[d], float(detections.scores[d]), ts
                track.hits += 1
                track.misses = 0
                ids[d] = track.track_id
        matched = set(ids)
        for track in self.tracks:
            if track.track_id not in matched:
                track.misses += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]
        for d, track_id in enumerate(ids):
            if track_id == -1:
                track = Track(self._next_id, detections.xyxy[d], float(detections.scores[d]), ts, ts)
                self._next_id += 1
                self.tracks.append(track)
                ids[d] = track.track_id
        return ids

    def confirmed(self) -> list[Track]:
        """Tracks seen at least ``min_hits`` times, whether or not they were seen in the last frame."""
        return [t for t in self.tracks if t.hits >= self.min_hits]

    def visible(self) -> list[Track]:
        return [t for t in self.tracks if t.misses == 0]

    def just_lost(self) -> int:
        """Confirmed tracks that the last update did not find again."""
        return sum(1 for t in self.tracks if t.misses == 1 and t.hits >= self.min_hits)
