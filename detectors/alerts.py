"""Alert rules per camera: people counted in a polygon zone, or a person dwelling in it, with a cooldown."""

from __future__ import annotations

import uuid

import numpy as np

from detectors.tracker import Track
from streams.cameras.config import AlertRule
from streams.records import Alert


def inside(point: tuple[float, float], polygon: list[tuple[float, float]] | None) -> bool:
    """Whether ``point`` lies in ``polygon`` (ray casting); no polygon means the whole frame."""
    if polygon is None:
        return True
    x, y = point
    result = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1:
            result = not result
    return result


class AlertEvaluator:
    """Evaluates one camera's rules after each frame's tracker update."""

    def __init__(self, camera_id: str, rules: list[AlertRule]) -> None:
        self.camera_id = camera_id
        self.rules = rules
        self._last_fired: dict[str, float] = {}

    def evaluate(self, tracks: list[Track], seq: int, capture_ts: float, model_version: str) -> list[Alert]:
        alerts = []
        for rule in self.rules:
            present = [t for t in tracks if t.misses == 0 and t.score >= rule.min_score and inside(t.foot, rule.zone)]
            for t in tracks:  # remember when each person entered the zone, forget when they left
                if t in present:
                    t.zone_entered_ts.setdefault(rule.name, capture_ts)
                elif t.misses == 0:
                    t.zone_entered_ts.pop(rule.name, None)
            if capture_ts - self._last_fired.get(rule.name, -np.inf) < rule.cooldown_s:
                continue
            if rule.count_at_least is not None:
                fired = present if len(present) >= rule.count_at_least else []
                message = f"{len(present)} people in {rule.name} (threshold {rule.count_at_least})"
            else:
                assert rule.dwell_at_least_s is not None
                fired = [t for t in present if capture_ts - t.zone_entered_ts[rule.name] >= rule.dwell_at_least_s]
                longest = max((capture_ts - t.zone_entered_ts[rule.name] for t in fired), default=0.0)
                message = f"{len(fired)} people stayed in {rule.name} for up to {longest:.1f}s (threshold {rule.dwell_at_least_s}s)"
            if not fired:
                continue
            self._last_fired[rule.name] = capture_ts
            alerts.append(
                Alert(
                    camera_id=self.camera_id,
                    alert_id=uuid.uuid4().hex,
                    rule=rule.name,
                    kind=rule.kind,
                    zone=rule.name if rule.zone is not None else None,
                    seq=seq,
                    capture_ts=capture_ts,
                    count=len(present) if rule.kind == "count" else len(fired),
                    track_ids=sorted(t.track_id for t in fired),
                    message=message,
                    model_version=model_version,
                )
            )
        return alerts
