"""Tracker ids, alert rules (zone count, dwell, cooldown) and the hard-example budget."""

from __future__ import annotations

import pytest

from detectors.alerts import AlertEvaluator, inside
from detectors.mining import HardExampleMiner, MiningPolicy
from detectors.results import BoxArray
from detectors.tracker import IouTracker
from streams.cameras.config import AlertRule, parse_cameras
from streams.errors import ConfigError

T0 = 1_700_000_000.0


def people(*xs: float, score: float = 0.9) -> BoxArray:
    return BoxArray.of([[x, 100, x + 20, 160] for x in xs], [score] * len(xs))


def test_tracker_keeps_ids_while_people_move_and_forgets_lost_ones() -> None:
    tracker = IouTracker(max_misses=2, min_hits=2)
    first = tracker.update(people(10, 100), 0.0)
    second = tracker.update(people(12, 103), 0.1)
    assert first == second and len(set(first)) == 2
    assert len(tracker.confirmed()) == 2
    tracker.update(people(14), 0.2)
    assert tracker.just_lost() == 1  # the person at x~103 was not found again
    for t in (0.3, 0.4, 0.5):
        tracker.update(people(16), t)
    assert [t.track_id for t in tracker.tracks] == [first[0]]
    assert tracker.update(people(300), 0.6) == [max(first) + 1]


def test_point_in_polygon() -> None:
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert inside((5, 5), square) and not inside((15, 5), square) and inside((99, 99), None)


def test_count_rule_fires_in_its_zone_then_respects_the_cooldown() -> None:
    rule = AlertRule(name="gate", zone=[(0, 0), (200, 0), (200, 200), (0, 200)], count_at_least=2, cooldown_s=5)
    tracker, evaluator = IouTracker(), AlertEvaluator("cam", [rule])
    tracker.update(people(10, 50, 500), T0)
    [alert] = evaluator.evaluate(tracker.tracks, seq=0, capture_ts=T0, model_version="v1")
    assert alert.kind == "count" and alert.count == 2 and alert.rule == "gate" and len(alert.track_ids) == 2
    tracker.update(people(11, 51, 500), T0 + 1)
    assert evaluator.evaluate(tracker.tracks, 1, T0 + 1, "v1") == []  # cooldown
    tracker.update(people(12, 52, 500), T0 + 6)
    assert len(evaluator.evaluate(tracker.tracks, 2, T0 + 6, "v1")) == 1
    tracker.update(people(500), T0 + 20)
    assert evaluator.evaluate(tracker.tracks, 3, T0 + 20, "v1") == []  # only one person left in the zone


def test_dwell_rule_fires_after_the_person_stayed_long_enough() -> None:
    rule = AlertRule(name="loiter", dwell_at_least_s=3.0)
    tracker, evaluator = IouTracker(), AlertEvaluator("cam", [rule])
    fired = []
    for i in range(8):
        tracker.update(people(10 + i), T0 + i)
        fired += evaluator.evaluate(tracker.tracks, i, T0 + i, "v1")
    assert len(fired) == 1 and fired[0].kind == "dwell" and fired[0].seq == 3


def test_rule_validation_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="exactly one of count_at_least or dwell_at_least_s"):
        parse_cameras({"cameras": [{"id": "a", "source": "x", "detect": {"alerts": [{"name": "r"}]}}]})
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.detect\.alerts\[0\]\.zone"):
        parse_cameras(
            {"cameras": [{"id": "a", "source": "x", "detect": {"alerts": [{"name": "r", "zone": [[0, 0]], "count_at_least": 1}]}}]}
        )


def test_miner_reasons_and_budget() -> None:
    miner = HardExampleMiner(MiningPolicy(threshold=0.5, band=0.1, random_rate=0.0, per_minute=6), seed=0)
    assert miner.reasons(people(10, score=0.95), lost_tracks=0) == []
    assert miner.reasons(people(10, score=0.55), lost_tracks=0) == ["uncertain"]
    assert miner.reasons(people(10, score=0.95), lost_tracks=1) == ["flicker"]
    # a night-dark frame is hard even when the blinded model finds nothing at all
    assert miner.reasons(people(0), lost_tracks=0, brightness=28.0) == ["dark"]
    assert miner.reasons(people(0), lost_tracks=0, brightness=110.0) == []
    mined = sum(bool(miner.decide(people(10, score=0.45), 0, ts=i * 0.1)) for i in range(600))  # 60 s of hard frames
    assert 6 <= mined <= 7 and miner.skipped_budget == 600 - mined


def test_a_camera_without_a_model_of_its_own_is_sampled_at_the_onboarding_rate() -> None:
    miner = HardExampleMiner(MiningPolicy(random_rate=0.01, onboarding_rate=0.25, per_minute=10**6), seed=1)
    sure = people(5, score=0.95)  # a general model that does well: never unsure
    onboarding = sum(bool(miner.decide(sure, 0, ts=i * 0.2, onboarding=True)) for i in range(2000))
    own = sum(bool(miner.decide(sure, 0, ts=400 + i * 0.2)) for i in range(2000))
    assert 400 <= onboarding <= 600 and own <= 50  # ~25% vs ~1% of the frames
