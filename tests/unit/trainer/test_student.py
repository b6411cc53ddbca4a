"""The student through the edge adapters, its targets, and teacher box fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors.adapters.student import SIZE_UNIT, STRIDE, heatmap_peaks
from detectors.detector import Detector
from detectors.results import BoxArray
from trainer.labels import weighted_box_fusion
from trainer.student import Student, count_parameters, export_onnx, gflops
from trainer.targets import make_targets


def test_exported_student_runs_through_the_edge_adapter_with_matching_outputs() -> None:
    torch.manual_seed(0)
    model = Student()
    detector = Detector.from_bytes(export_onnx(model, "student-t1"), name="student")
    assert detector.info.format == "student" and detector.version == "student-t1"
    assert detector.info.metadata["input_width"] == "384" and detector.adapter.input_size == (384, 288)
    image = (np.random.default_rng(0).random((576, 768, 3)) * 255).astype(np.uint8)
    batch, metas = detector.preprocess([image, image[:, ::-1].copy()])
    model.eval()
    with torch.no_grad():
        heatmap, regression = model(torch.from_numpy(batch))
    ours = detector.infer(batch)
    np.testing.assert_allclose(ours[0], heatmap.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours[1], regression.numpy(), atol=1e-5)
    assert len(detector.postprocess(ours, metas)) == 2
    assert 100_000 < count_parameters(model) < 2_000_000 and gflops(model) < 1.0


def test_targets_decode_back_to_the_boxes() -> None:
    boxes = np.array([[100, 40, 130, 120], [250, 150, 270, 200]], np.float32)
    t = make_targets(boxes, 384, 288)
    assert t["mask"].sum() == 2 and t["heatmap"].max() == 1.0
    rows, cols, scores = heatmap_peaks(t["heatmap"][0], min_score=0.5)
    assert len(rows) == 2
    decoded = []
    for r, c in zip(rows, cols, strict=False):
        lw, lh, ox, oy = t["regression"][:, r, c]
        cx, cy, w, h = (c + ox) * STRIDE, (r + oy) * STRIDE, np.exp(lw) * SIZE_UNIT, np.exp(lh) * SIZE_UNIT
        decoded.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    decoded = np.array(sorted(decoded))
    np.testing.assert_allclose(decoded, boxes[np.argsort(boxes[:, 0])], atol=1e-3)


def test_box_fusion_rewards_agreement() -> None:
    a = BoxArray.of([[0, 0, 10, 20], [50, 50, 60, 70]], [0.9, 0.8])
    b = BoxArray.of([[1, 0, 11, 20]], [0.7])
    fused = weighted_box_fusion([a, b])
    assert len(fused) == 2
    both = fused.scores.argmax()
    assert fused.scores[both] == pytest.approx((0.9 + 0.7) / 2)
    np.testing.assert_allclose(fused.xyxy[both], [(0 * 0.9 + 1 * 0.7) / 1.6, 0, (10 * 0.9 + 11 * 0.7) / 1.6, 20], rtol=1e-5)
    assert min(fused.scores) == pytest.approx(0.4)  # found by one model of two
    assert len(weighted_box_fusion([BoxArray.empty(), BoxArray.empty()])) == 0


def test_dark_frames_are_normalised_for_the_teachers_only() -> None:
    from trainer.labels import DARK_MEAN, normalize_exposure

    day = np.full((40, 60, 3), 120, np.uint8)
    assert normalize_exposure(day) is day
    night = np.full((40, 60, 3), 30, np.uint8)
    night[10:20, 10:20] = 10
    brightened = normalize_exposure(night)
    assert brightened.mean() > DARK_MEAN and brightened[15, 15, 0] < brightened[35, 50, 0]  # contrast kept
