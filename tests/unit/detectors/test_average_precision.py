"""AP50 (VOC all-point, ignored boxes honoured) against cases computed by hand."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detectors.evaluation import average_precision, count_errors, interleaved_fps, people_by_height, within_labelled_sizes
from detectors.results import BoxArray
from streams.mot import GroundTruth

A = [0.0, 0.0, 100.0, 100.0]
B = [200.0, 0.0, 300.0, 100.0]
NOWHERE = [500.0, 500.0, 550.0, 550.0]


def truth(*boxes: list[float], ignored: tuple[int, ...] = ()) -> GroundTruth:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    consider = np.array([i not in ignored for i in range(len(xyxy))], bool)
    return GroundTruth(xyxy, np.arange(len(xyxy)), consider)


def found(*scored: tuple[list[float], float]) -> BoxArray:
    return BoxArray.of(np.array([b for b, _ in scored], np.float32), np.array([s for _, s in scored], np.float32))


def test_every_person_found_once_scores_one() -> None:
    score = average_precision([found((A, 0.9), (B, 0.8))], [truth(A, B)])
    assert score.ap50 == pytest.approx(1.0) and score.recall == pytest.approx(1.0)
    assert score.positives == 2 and score.detections == 2


def test_a_second_detection_of_the_same_person_is_a_false_positive() -> None:
    # ranked: A (tp), A again (fp: A is taken), B (tp) -> recall .5 .5 1, precision 1 .5 .667
    # all-point AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333
    score = average_precision([found((A, 0.9), (A, 0.8), (B, 0.7))], [truth(A, B)])
    assert score.ap50 == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert score.recall == pytest.approx(1.0)


def test_a_duplicate_ranked_last_costs_nothing() -> None:
    # recall reaches 1.0 at precision 1.0 before the duplicate: the envelope keeps AP at 1
    score = average_precision([found((A, 0.9), (B, 0.8), (A, 0.1))], [truth(A, B)])
    assert score.ap50 == pytest.approx(1.0)


def test_a_detection_on_an_ignored_box_is_neither_hit_nor_miss() -> None:
    # with B ignored: B's detection is skipped, NOWHERE is a fp, A a tp -> precision 0, .5 at recall 0, 1
    # AP = 1.0 * 0.5; positives counts only A
    ignored = average_precision([found((B, 0.95), (NOWHERE, 0.9), (A, 0.8))], [truth(A, B, ignored=(1,))])
    assert ignored.ap50 == pytest.approx(0.5) and ignored.positives == 1
    # the same detections with B considered: tp, fp, tp -> 0.5 * 1 + 0.5 * 2/3
    considered = average_precision([found((B, 0.95), (NOWHERE, 0.9), (A, 0.8))], [truth(A, B)])
    assert considered.ap50 == pytest.approx(0.5 + 0.5 * 2 / 3) and considered.positives == 2


def test_an_ignored_person_left_undetected_is_not_a_miss() -> None:
    score = average_precision([found((A, 0.9))], [truth(A, B, ignored=(1,))])
    assert score.ap50 == pytest.approx(1.0) and score.recall == pytest.approx(1.0) and score.positives == 1


def test_iou_must_reach_one_half() -> None:
    below = [0.0, 0.0, 100.0, 49.0]  # IoU with A = 0.49
    above = [0.0, 0.0, 100.0, 51.0]  # IoU with A = 0.51
    assert average_precision([found((below, 0.9))], [truth(A)]).ap50 == pytest.approx(0.0)
    assert average_precision([found((above, 0.9))], [truth(A)]).ap50 == pytest.approx(1.0)


def test_frames_are_pooled_and_ranked_together() -> None:
    # frame 1: A found at 0.6; frame 2: a false positive at 0.9 and B missed.
    # ranked: fp (0.9), tp (0.6) -> recall 0, .5 precision 0, .5 -> AP = 0.5 * 0.5
    score = average_precision([found((A, 0.6)), found((NOWHERE, 0.9))], [truth(A), truth(B)])
    assert score.ap50 == pytest.approx(0.25) and score.recall == pytest.approx(0.5)


def test_nothing_found_or_nobody_there() -> None:
    assert average_precision([BoxArray.empty()], [truth(A)]).ap50 == 0.0
    empty = average_precision([found((A, 0.9))], [truth()])
    assert empty.ap50 == 0.0 and empty.positives == 0 and empty.detections == 1


def test_one_detection_list_per_frame() -> None:
    with pytest.raises(ValueError, match="2 detection lists for 1 frames"):
        average_precision([BoxArray.empty(), BoxArray.empty()], [truth(A)])


def test_labelled_sizes_drop_only_boxes_too_short_to_match_a_labelled_person() -> None:
    """Labelled people are 100 px tall: a 40 px box (an unlabelled person far away) goes, a 60 px box
    stays (it could still match at IoU 0.5 by height), and the hits are the same."""
    far_away = [400.0, 400.0, 420.0, 440.0]  # 40 px
    half_height = [200.0, 0.0, 300.0, 60.0]  # 60 px, overlaps B by 0.6
    detections = [found((A, 0.9), (far_away, 0.95), (half_height, 0.85))]
    truths = [truth(A, B)]
    [kept] = within_labelled_sizes(detections, truths)
    assert sorted((kept.xyxy[:, 3] - kept.xyxy[:, 1]).tolist()) == [60.0, 100.0]
    plain, sized = average_precision(detections, truths), average_precision([kept], truths)
    assert sized.ap50 > plain.ap50 and sized.recall == plain.recall
    assert within_labelled_sizes(detections, [truth()]) == detections  # nothing labelled: nothing to go by


def test_interleaved_fps_keeps_the_ratio_through_a_burst_of_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import detectors.evaluation as evaluation

    clock = {"now": 0.0, "detect_calls": 0}
    monkeypatch.setattr(evaluation.time, "perf_counter", lambda: clock["now"])
    frames = [np.zeros((4, 4, 3), np.uint8)] * 10
    warmup_calls = 2 * 3

    def model(seconds_per_frame: float) -> Callable[[list[np.ndarray]], list[BoxArray]]:
        def detect(images: list[np.ndarray]) -> list[BoxArray]:
            clock["detect_calls"] += 1
            timed = clock["detect_calls"] - warmup_calls  # 1-based among the timed calls
            burst = 21 <= timed <= 30  # the machine is busy for the third timed pass (slow, in its second round)
            clock["now"] += seconds_per_frame * (5 if burst else 1)
            return [BoxArray.empty()]

        return detect

    fps = interleaved_fps({"fast": model(0.001), "slow": model(0.004)}, frames, rounds=3)
    assert fps == pytest.approx({"fast": 1000.0, "slow": 250.0})  # the burst hit one round of one model only
    with pytest.raises(ValueError):
        interleaved_fps({"fast": model(0.001)}, [], rounds=3)


def test_errors_are_told_apart_among_the_boxes_a_detector_would_publish() -> None:
    upper_half_of_a = [0.0, 0.0, 100.0, 40.0]  # IoU 0.4 with A: a part of a person
    frame_1 = found((A, 0.9), (A, 0.8), (upper_half_of_a, 0.5), (NOWHERE, 0.4), (B, 0.2))  # B's box under 0.3
    frame_2 = found((B, 0.7), (NOWHERE, 0.6))
    errors = count_errors([frame_1, frame_2], [truth(A, B), truth(A, B, ignored=(0,))])
    assert (errors.hits, errors.duplicate, errors.misplaced, errors.background) == (2, 1, 1, 2)
    assert errors.missed == 1  # frame 1's B, found only at 0.2; frame 2's A is ignored, not missed
    assert errors.min_score == 0.3


def test_a_box_on_an_ignored_person_is_no_error() -> None:
    errors = count_errors([found((A, 0.9))], [truth(A, ignored=(0,))])
    assert (errors.hits, errors.duplicate, errors.misplaced, errors.background, errors.missed) == (0, 0, 0, 0, 0)


def test_people_by_height_say_how_sure_the_model_is_of_each_size() -> None:
    tall = [400.0, 0.0, 450.0, 250.0]  # 250 px: the 200-400 range
    short = [600.0, 0.0, 620.0, 40.0]  # 40 px: the 0-50 range
    ignored_tall = [700.0, 0.0, 750.0, 300.0]
    frame_1 = found((A, 0.9), (tall, 0.35), ([0.0, 0.0, 100.0, 40.0], 0.8))  # the 0.8 part box (IoU 0.4) is no one's best
    frame_2 = found((B, 0.2), (short, 0.6), (ignored_tall, 0.95))
    ranges = people_by_height([frame_1, frame_2], [truth(A, tall), truth(B, short, ignored_tall, ignored=(2,))])
    by_range = {(r.low, r.high): (r.people, r.found, r.median_best_score) for r in ranges}
    # A and B are 100 px tall; B's only box scores 0.2, under the publish threshold; the ignored person counts nowhere
    assert by_range == {(0.0, 50.0): (1, 1, pytest.approx(0.6)), (100.0, 200.0): (2, 1, pytest.approx(0.55)),
                        (200.0, 400.0): (1, 1, pytest.approx(0.35))}  # fmt: skip
    assert [r.as_dict()["height_px"] for r in ranges] == [[0.0, 50.0], [100.0, 200.0], [200.0, 400.0]]
    giant = [0.0, 0.0, 100.0, 500.0]
    [open_ended] = people_by_height([found()], [truth(giant)])  # nothing found at all: best score 0
    assert (open_ended.low, open_ended.high, open_ended.people, open_ended.found, open_ended.median_best_score) == (400.0, None, 1, 0, 0.0)
    assert people_by_height([found((A, 0.9))], [truth()]) == ()
