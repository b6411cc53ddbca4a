"""Box maths, tiling plans and seam merging."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.boxes import box_iou, clip_boxes, nms, scale_boxes
from detectors.results import BoxArray
from detectors.tiling import merge, plan_tiles, split
from streams.cameras.config import Tiling


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([[0, 0, 2, 2]], [[1, 0, 3, 2]], [[1 / 3]]),
        ([[0, 0, 2, 2]], [[5, 5, 6, 6]], [[0.0]]),
        ([[0, 0, 2, 2]], [[0, 0, 2, 2]], [[1.0]]),
        (np.empty((0, 4)), [[0, 0, 1, 1]], np.empty((0, 1))),
    ],
)
def test_box_iou(a, b, expected) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(box_iou(np.asarray(a, float), np.asarray(b, float)), np.asarray(expected), atol=1e-6)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert nms(xyxy, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    assert nms(np.empty((0, 4)), np.empty(0), 0.5).tolist() == []


def test_clip_and_scale() -> None:
    boxes = np.array([[-5, -5, 50, 50]], np.float32)
    assert clip_boxes(boxes, 40, 30).tolist() == [[0, 0, 40, 30]]
    assert scale_boxes(boxes, 2, 0.5, 1, 1).tolist() == [[-9, -1.5, 101, 26]]


def test_tiles_cover_the_frame_with_the_overlap() -> None:
    tiles = plan_tiles(768, 576, Tiling(rows=2, cols=2, overlap=100))
    assert len(tiles) == 4
    assert min(t.x0 for t in tiles) == 0 and max(t.x1 for t in tiles) == 768
    assert min(t.y0 for t in tiles) == 0 and max(t.y1 for t in tiles) == 576
    left, right = tiles[0], tiles[1]
    assert left.x1 - right.x0 >= 100  # neighbours share at least the overlap
    assert len(plan_tiles(768, 576, Tiling(rows=1, cols=3, overlap=50, include_full_frame=True))) == 4
    crops = split(np.zeros((576, 768, 3), np.uint8), tiles)
    assert crops[0].shape == (tiles[0].y1 - tiles[0].y0, tiles[0].x1 - tiles[0].x0, 3)


def test_merge_moves_boxes_to_the_frame_and_removes_seam_duplicates() -> None:
    tiles = plan_tiles(200, 100, Tiling(rows=1, cols=2, overlap=40))
    x_right = tiles[1].x0
    person_on_seam_left = BoxArray.of([[100, 10, 115, 60]], [0.9])
    person_on_seam_right = BoxArray.of([[100 - x_right, 10, 115 - x_right, 60]], [0.8])
    merged = merge([person_on_seam_left, person_on_seam_right], tiles)
    assert len(merged) == 1 and merged.scores[0] == pytest.approx(0.9)
    assert merged.xyxy[0].tolist() == [100, 10, 115, 60]
    assert len(merge([BoxArray.empty(), BoxArray.empty()], tiles)) == 0


def _greedy_nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        order = [i for i in order if box_iou(xyxy[best : best + 1], xyxy[i : i + 1])[0, 0] <= iou_threshold]
    return keep


def test_nms_is_the_greedy_algorithm_ties_zero_and_negative_scores_included() -> None:
    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 60))
        corner = rng.uniform(0, 300, (n, 2))
        xyxy = np.column_stack([corner, corner + rng.uniform(0, 80, (n, 2))]).astype(np.float32)
        scores = np.round(rng.uniform(-0.2, 1, n), 1 if trial % 2 else 6).astype(np.float32)  # ties on odd trials
        for threshold in (0.3, 0.5, 0.7):
            assert nms(xyxy, scores, threshold).tolist() == _greedy_nms(xyxy, scores, threshold)


def test_heatmap_cells_are_the_best_cells_above_the_threshold_best_first() -> None:
    from detectors.adapters.student import heatmap_cells

    heatmap = np.full((6, 8), 0.01, np.float32)
    heatmap[0, 0] = 0.9
    heatmap[3, 4], heatmap[3, 5] = 0.7, 0.6  # neighbours both count: side-by-side people have neighbouring centres
    heatmap[5, 7] = 0.04  # under the threshold
    rows, cols, scores = heatmap_cells(heatmap, min_score=0.05)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0), (3, 4), (3, 5)]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert heatmap_cells(heatmap, min_score=0.05, top_k=2)[0].tolist() == [0, 3]
