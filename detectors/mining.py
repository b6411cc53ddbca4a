"""Hard-example mining: pick the frames the edge model is unsure about, within a per-camera budget."""

from __future__ import annotations

import random
from dataclasses import dataclass

from detectors.results import BoxArray
from streams.records import HardExampleReason


@dataclass(frozen=True)
class MiningPolicy:
    """Scores in [threshold - band, threshold + band] are uncertain; ``random_rate`` of frames are
    sampled (``onboarding_rate`` while the camera has no model of its own: the trainer needs a fair
    sample of a new camera, gate frames included, to build it one, and a general model that does
    well there is rarely unsure); frames darker than ``dark_below`` (mean pixel value, 0-255) are
    hard whatever the model says, since a model blinded by the dark finds nothing it could be unsure
    about. The per-minute budget bounds them all."""

    threshold: float = 0.5
    band: float = 0.15
    min_uncertain: int = 1
    random_rate: float = 0.01
    onboarding_rate: float = 0.25
    per_minute: float = 6.0
    dark_below: float = 50.0


class HardExampleMiner:
    """Decides per frame whether it is hard; a token bucket enforces the examples-per-minute budget."""

    def __init__(self, policy: MiningPolicy, seed: int | None = None) -> None:
        self.policy = policy
        self._tokens = min(policy.per_minute, 1.0)
        self._last_ts: float | None = None
        self._rng = random.Random(seed)
        self._last_count: int | None = None
        self.mined = 0
        self.skipped_budget = 0

    def reasons(
        self, boxes: BoxArray, lost_tracks: int, brightness: float | None = None, onboarding: bool = False
    ) -> list[HardExampleReason]:
        """Why this frame is hard (possibly several reasons), before the budget is applied.

        ``lost_tracks`` is how many confirmed tracks the detector just failed to find again: the
        detection count flickers against what the tracker expects.
        """
        p = self.policy
        reasons: list[HardExampleReason] = []
        uncertain = (boxes.scores >= p.threshold - p.band) & (boxes.scores < p.threshold + p.band)
        if int(uncertain.sum()) >= p.min_uncertain:
            reasons.append("uncertain")
        if lost_tracks > 0:
            reasons.append("flicker")
        if brightness is not None and brightness < p.dark_below:
            reasons.append("dark")
        if self._rng.random() < (p.onboarding_rate if onboarding else p.random_rate):
            reasons.append("random")
        return reasons

    def decide(
        self, boxes: BoxArray, lost_tracks: int, ts: float, brightness: float | None = None, onboarding: bool = False
    ) -> list[HardExampleReason]:
        """The reasons to publish this frame as a hard example, or [] (not hard, or over budget).
        ``onboarding``: the camera has no model of its own yet."""
        if self._last_ts is not None:
            self._tokens = min(max(1.0, self.policy.per_minute), self._tokens + (ts - self._last_ts) * self.policy.per_minute / 60.0)
        self._last_ts = ts
        reasons = self.reasons(boxes, lost_tracks, brightness, onboarding)
        if not reasons:
            return []
        if self._tokens < 1.0:
            self.skipped_budget += 1
            return []
        self._tokens -= 1.0
        self.mined += 1
        return reasons
