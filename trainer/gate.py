"""The shipping gate: does a candidate beat the model a camera serves, with confidence?

A camera's gate frames are its held-out time blocks (``trainer.store``), labelled by the teacher
(or by people, where the operator supplied labels). The candidate and the served model are scored
on the same frames; a paired bootstrap over frames gives a confidence interval of the AP50 gain.
The candidate ships on a camera only with at least ``min_frames`` gate frames and when the
interval's lower end is above ``margin``; with fewer frames it waits for more examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from detectors.evaluation import FrameMatches, match_frame, score_matches
from detectors.results import BoxArray
from streams.mot import GroundTruth

Verdict = Literal["ship", "wait", "reject"]


@dataclass(frozen=True)
class GatePolicy:
    min_frames: int = 30
    margin: float = 0.0  # the lower end of the gain's interval must be above this (AP50 points / 100)
    confidence: float = 0.9  # two-sided: the lower end is the 5th percentile of the bootstrap gains
    resamples: int = 1000


@dataclass(frozen=True)
class CameraGate:
    """One camera's gate result, as the registry and ``models list`` show it."""

    camera: str
    verdict: Verdict
    reason: str
    frames: int
    labels: str  # what labelled the gate frames: teacher or human
    served_version: str
    served_ap50: float
    candidate_ap50: float
    gain: float
    gain_low: float
    gain_high: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(served: list[FrameMatches], candidate: list[FrameMatches], policy: GatePolicy, seed: int = 0) -> tuple[float, float]:
    """The ``policy.confidence`` interval of the AP50 gain, resampling frames (the same frames for
    both models in each resample)."""
    n = len(served)
    rng = np.random.default_rng(seed)
    gains = np.empty(policy.resamples)
    for r in range(policy.resamples):
        picks = rng.integers(0, n, n)
        gains[r] = score_matches([candidate[i] for i in picks]).ap50 - score_matches([served[i] for i in picks]).ap50
    tail = (1.0 - policy.confidence) / 2.0
    return float(np.quantile(gains, tail)), float(np.quantile(gains, 1.0 - tail))


def judge(
    camera: str,
    served_version: str,
    served_found: list[BoxArray],
    candidate_found: list[BoxArray],
    truths: list[GroundTruth],
    labels: str,
    policy: GatePolicy,
) -> CameraGate:
    """Gate one camera: the served model's and the candidate's detections on its gate frames."""
    frames = len(truths)
    if frames < policy.min_frames:
        reason = f"{frames} gate frames on {camera}, fewer than {policy.min_frames}: waiting for more examples"
        return CameraGate(camera, "wait", reason, frames, labels, served_version, 0.0, 0.0, 0.0, 0.0, 0.0)
    served = [match_frame(f, t) for f, t in zip(served_found, truths, strict=True)]
    candidate = [match_frame(f, t) for f, t in zip(candidate_found, truths, strict=True)]
    served_ap, candidate_ap = score_matches(served).ap50, score_matches(candidate).ap50
    low, high = paired_bootstrap(served, candidate, policy, seed=frames)
    gain = candidate_ap - served_ap
    interval = f"AP50 {served_ap:.3f} -> {candidate_ap:.3f}, gain {gain:+.3f} ({policy.confidence:.0%} interval {low:+.3f} to {high:+.3f})"
    if low > policy.margin:
        verdict: Verdict = "ship"
        reason = f"{camera}: {interval} on {frames} {labels}-labelled gate frames"
    else:
        verdict = "reject"
        reason = f"{camera}: {interval} on {frames} {labels}-labelled gate frames; the lower end is not above {policy.margin:+.3f}"
    r = 4
    return CameraGate(
        camera,
        verdict,
        reason,
        frames,
        labels,
        served_version,
        round(served_ap, r),
        round(candidate_ap, r),
        round(gain, r),
        round(low, r),
        round(high, r),
    )


def combine(results: list[CameraGate]) -> tuple[Verdict, str]:
    """A candidate for several cameras ships only if it ships on each; it waits if any camera waits."""
    if not results:
        return "wait", "no gate frames yet for the cameras it is for"
    for verdict in ("wait", "reject"):
        blocking = [g for g in results if g.verdict == verdict]
        if blocking:
            return verdict, "; ".join(g.reason for g in blocking)
    return "ship", "; ".join(g.reason for g in results)
