"""The student through the edge adapters, its targets, and teacher box fusion."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detectors.adapters.student import SIZE_UNIT, STRIDE
from detectors.detector import Detector
from detectors.results import BoxArray
from streams.errors import PedstreamError
from trainer.data import Augment, Example, make_batch, prepare, unsure_regions
from trainer.labels import weighted_box_fusion
from trainer.student import Student, StudentConfig, config_of, count_parameters, export_onnx, gflops, merge_levels
from trainer.targets import detection_loss, focal_loss, make_targets, student_loss


def network_input(frames: np.ndarray) -> torch.Tensor:
    """What the torch student takes (RGB / 255, NCHW) for the exported model's frame input (uint8 BGR, NHWC)."""
    assert frames.dtype == np.uint8 and frames.shape[-1] == 3
    return torch.from_numpy(frames[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255)


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
        heatmap, regression = model(network_input(batch))
    ours = detector.infer(batch)
    np.testing.assert_allclose(ours[0], heatmap.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours[1], regression.numpy(), atol=1e-5)
    assert len(detector.postprocess(ours, metas)) == 2
    assert 100_000 < count_parameters(model) < 2_000_000 and gflops(model) < 1.0


def test_targets_decode_back_to_the_boxes() -> None:
    boxes = np.array([[100, 40, 130, 120], [250, 150, 270, 200]], np.float32)
    t = make_targets(boxes, 384, 288)
    assert t["mask"].sum() == 2 and t["heatmap"].max() == 1.0
    rows, cols = np.nonzero(t["heatmap"][0] == 1.0)  # each person's centre cell
    assert len(rows) == 2
    decoded = []
    for r, c in zip(rows, cols, strict=False):
        lw, lh, ox, oy = t["regression"][:, r, c]
        cx, cy, w, h = (c + ox) * STRIDE, (r + oy) * STRIDE, np.exp(lw) * SIZE_UNIT, np.exp(lh) * SIZE_UNIT
        decoded.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    decoded = np.array(sorted(decoded))
    np.testing.assert_allclose(decoded, boxes[np.argsort(boxes[:, 0])], atol=1e-3)


def test_unsure_boxes_are_neither_people_nor_background() -> None:
    image = np.full((288, 384, 3), 90, np.uint8)
    sure, unsure = [40, 40, 80, 160], [200, 60, 240, 180]
    example = Example(image, np.array([sure, unsure], np.float32), np.array([0.8, 0.2], np.float32), "teacher", "t#1")
    images, targets = make_batch([example], 384, 288, Augment(enabled=False), np.random.default_rng(0), min_score=0.3)
    assert images.shape == (1, 3, 288, 384) and targets["mask"].sum() == 1  # only the sure box is a person
    weight = targets["background_weight"][0]
    assert weight[60 // STRIDE, 220 // STRIDE] == 0 and weight[60 // STRIDE, 280 // STRIDE] == 1  # inside the unsure box / beside it
    assert targets["heatmap"][0, 0, 60 // STRIDE, 220 // STRIDE] == 0
    # a confident detection on the unsure person costs nothing; the same detection on empty ground does
    heatmap = targets["heatmap"].clone()
    on_unsure, on_empty = heatmap.clone(), heatmap.clone()
    on_unsure[0, 0, 120 // STRIDE, 220 // STRIDE] = 0.9
    on_empty[0, 0, 120 // STRIDE, 320 // STRIDE] = 0.9
    baseline = float(focal_loss(heatmap, targets["heatmap"], targets["background_weight"]))
    assert float(focal_loss(on_unsure, targets["heatmap"], targets["background_weight"])) == pytest.approx(baseline)
    assert float(focal_loss(on_empty, targets["heatmap"], targets["background_weight"])) > baseline + 1
    assert float(focal_loss(on_unsure, targets["heatmap"])) > baseline + 1  # without the weight it is background
    regression = torch.zeros(1, 4, 288 // STRIDE, 384 // STRIDE)
    assert torch.isfinite(detection_loss(on_unsure, regression, targets))


def test_an_unsure_box_inside_a_labelled_person_stays_background() -> None:
    person = np.array([[100, 50, 140, 170]], np.float32)
    head = [110, 50, 130, 75]  # a part of that person
    neighbour = [125, 60, 165, 180]  # someone half behind them
    kept = unsure_regions(np.array([head, neighbour], np.float32), person)
    np.testing.assert_array_equal(kept, [neighbour])
    assert len(unsure_regions(np.array([head], np.float32), np.empty((0, 4), np.float32))) == 1


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
    # three models, the best two vote: a box two agree on keeps their mean, one found by one model half its score
    c = BoxArray.of([[50, 50, 60, 70], [100, 100, 120, 140]], [0.6, 0.9])
    three = weighted_box_fusion([a, b, c], votes=2)
    by_x = {round(float(box[0])): float(score) for box, score in zip(three.xyxy, three.scores, strict=True)}
    assert by_x[0] == pytest.approx((0.9 + 0.7) / 2) and by_x[50] == pytest.approx((0.8 + 0.6) / 2) and by_x[100] == pytest.approx(0.45)
    assert weighted_box_fusion([a, b, c]).scores.max() == pytest.approx((0.9 + 0.7) / 3)  # every model votes


def test_a_teacher_ensemble_is_named_in_its_labels_source_and_checked() -> None:
    from trainer.labels import TEACHER_SOURCE, parse_teachers, teacher_source, with_unsure_source

    assert teacher_source() == TEACHER_SOURCE == "teacher: nanodet + centernet, weighted box fusion"  # cached labels stay valid
    three = parse_teachers(" nanodet, centernet,ssdlite ")
    assert three == ("nanodet", "centernet", "ssdlite")
    assert with_unsure_source(three) != with_unsure_source() and "ssdlite" in with_unsure_source(three)  # a separate cache key
    with pytest.raises(ValueError, match="yolo"):
        parse_teachers("nanodet,yolo")
    with pytest.raises(ValueError, match="twice"):
        parse_teachers("nanodet,nanodet")
    with pytest.raises(ValueError, match="none given"):
        parse_teachers(" , ")


def test_dark_frames_are_normalised_for_the_teachers_only() -> None:
    from trainer.labels import DARK_MEAN, normalize_exposure

    day = np.full((40, 60, 3), 120, np.uint8)
    assert normalize_exposure(day) is day
    night = np.full((40, 60, 3), 30, np.uint8)
    night[10:20, 10:20] = 10
    brightened = normalize_exposure(night)
    assert brightened.mean() > DARK_MEAN and brightened[15, 15, 0] < brightened[35, 50, 0]  # contrast kept


def test_student_v1_on_the_pretrained_trunk_exports_the_same_contract(shared_models: Path) -> None:
    torch.manual_seed(0)
    model = Student(StudentConfig(input_width=256, input_height=192, trunk=str(shared_models / "ssdlite_pedestrian.onnx")))
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(name.startswith("trunk.") for name in frozen)  # only early trunk convs are frozen
    detector = Detector.from_bytes(export_onnx(model, "student-v1-t"), name="student")
    assert detector.info.format == "student" and detector.info.metadata["backbone"].startswith("mobilenetv2")
    image = (np.random.default_rng(1).random((480, 640, 3)) * 255).astype(np.uint8)
    batch, _ = detector.preprocess([image])
    model.eval()
    with torch.no_grad():
        heatmap, regression = model(network_input(batch))
    assert heatmap.shape == (1, 1, 192 // STRIDE, 256 // STRIDE) and regression.shape == (1, 4, 192 // STRIDE, 256 // STRIDE)
    ours = detector.infer(batch)
    np.testing.assert_allclose(ours[0], heatmap.numpy(), atol=1e-4)


def test_fine_tuning_rebuilds_the_network_a_model_was_exported_with(shared_models: Path, tmp_path: Path) -> None:
    v1 = StudentConfig(input_width=320, input_height=240, trunk=str(shared_models / "ssdlite_pedestrian.onnx"), head_stride=8)
    assert config_of(export_onnx(Student(v1), "v1"), shared_models) == v1
    v0 = StudentConfig(widths=(16, 32, 64, 96), neck=24)
    assert config_of(export_onnx(Student(v0), "v0"), tmp_path) == v0  # no trunk: no models folder needed
    with pytest.raises(PedstreamError, match="ssdlite_pedestrian.onnx is not in the models folder"):
        config_of(export_onnx(Student(v1), "v1"), tmp_path)


def test_a_student_with_the_trunk_s_stride_32_features_exports_and_rebuilds(shared_models: Path) -> None:
    torch.manual_seed(0)
    trunk = str(shared_models / "ssdlite_pedestrian.onnx")
    config = StudentConfig(input_width=320, input_height=240, trunk=trunk, head_stride=8, trunk_stride=32)  # 240 / 32: rounded up
    model = Student(config)
    assert model.lateral32 is not None and count_parameters(model) > count_parameters(Student(replace(config, trunk_stride=16)))
    onnx_bytes = export_onnx(model, "s32")
    assert config_of(onnx_bytes, shared_models) == config  # fine-tuning rebuilds the same network
    detector = Detector.from_bytes(onnx_bytes, name="student")
    batch, _ = detector.preprocess([(np.random.default_rng(2).random((480, 640, 3)) * 255).astype(np.uint8)])
    model.eval()
    with torch.no_grad():
        heatmap, _ = model(network_input(batch))
    assert heatmap.shape == (1, 1, 30, 40)
    np.testing.assert_allclose(detector.infer(batch)[0], heatmap.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="trunk_stride"):
        Student(StudentConfig(trunk_stride=32))  # the small backbone has no stride-32 features


def test_strong_augmentation_keeps_boxes_on_their_people_and_never_stretches() -> None:
    image = np.zeros((300, 600, 3), np.uint8)
    image[100:200, 280:320] = 255  # one bright "person", 40 x 100
    example = Example(image, np.array([[280, 100, 320, 200]], np.float32), np.ones(1, np.float32), "test", "t")
    rng = np.random.default_rng(0)
    strong = Augment(min_scale=0.5, max_zoom_out=2.5, keep_aspect=True, brightness=0.0, contrast=0.0)
    for _ in range(40):
        chw, boxes = prepare(example, 256, 192, strong, rng)
        if not len(boxes):
            continue  # cropped away
        x0, y0, x1, y1 = boxes[0]
        if x0 <= 0.5 or y0 <= 0.5 or x1 >= 255.5 or y1 >= 191.5:
            continue  # cut by the crop edge
        assert (y1 - y0) / (x1 - x0) == pytest.approx(100 / 40, rel=0.05)  # aspect kept
        inside = chw[:, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
        assert inside.size and inside.mean() > 0.9  # the box still covers the bright region


@pytest.mark.parametrize("stride", [4, 8])
def test_the_edge_adapter_decodes_targets_at_either_head_stride(stride: int) -> None:
    """Targets made at a head stride, fed to the adapter as if the model had output them, give the boxes back."""
    boxes = np.array([[100, 40, 140, 140], [250, 150, 282, 230]], np.float32)
    t = make_targets(boxes, 384, 288, stride)
    assert t["heatmap"].shape == (1, 288 // stride, 384 // stride)
    model = Student(StudentConfig(head_stride=stride))
    detector = Detector.from_bytes(export_onnx(model, f"s{stride}"), name="s")
    assert detector.info.metadata["stride"] == str(stride)
    image = np.zeros((288, 384, 3), np.uint8)  # the input size: frame pixels = input pixels
    _, metas = detector.preprocess([image])
    found = detector.adapter.decode([t["heatmap"][None], t["regression"][None]], 0, metas[0])
    best = found.xyxy[np.argsort(-found.scores)[:2]]
    np.testing.assert_allclose(best[np.argsort(best[:, 0])], boxes, atol=0.5)


def test_a_coarse_head_for_tall_people_merges_into_one_map_the_edge_decodes() -> None:
    """Every person taught at stride 8, the tall ones at stride 16 too: targets fed through ``merge_levels``
    as if both heads had output them decode to each person once; the export stays one heatmap and regression."""
    boxes = np.array([[100, 40, 120, 90], [230, 20, 300, 260], [31, 70, 96, 220]], np.float32)  # 50, 240 and 150 px tall
    images, targets = make_batch(
        [Example(np.zeros((288, 384, 3), np.uint8), boxes, np.ones(3, np.float32), "hand-made", "hand-made#1")],
        384, 288, Augment(enabled=False), np.random.default_rng(0), stride=8, tall_from=100,
    )  # fmt: skip
    assert targets["mask"].sum() == 3 and targets["coarse_mask"].sum() == 2  # 150 and 240 px: on both heads
    merged = merge_levels((targets["heatmap"], targets["regression"]), (targets["coarse_heatmap"], targets["coarse_regression"]), 2)
    assert merged[0].shape == targets["heatmap"].shape
    model = Student(StudentConfig(head_stride=8, tall_from=100))
    assert [level[0].shape[-1] for level in model.levels(images)] == [48, 24]
    with torch.no_grad():
        assert float(student_loss(model.levels(images), targets)) > float(student_loss(model.levels(images)[:1], targets))
    detector = Detector.from_bytes(export_onnx(model, "coarse"), name="s")
    assert detector.info.metadata["tall_from"] == "100"
    assert config_of(export_onnx(model, "coarse"), Path("/nonexistent")).tall_from == 100  # fine-tuning rebuilds both heads
    with pytest.raises(ValueError, match="tall_from"):
        Student(StudentConfig(tall_from=-1))
    _, metas = detector.preprocess([np.zeros((288, 384, 3), np.uint8)])
    found = detector.adapter.decode([merged[0].numpy(), merged[1].numpy()], 0, metas[0])
    best = found.xyxy[np.argsort(-found.scores)[:3]]
    np.testing.assert_allclose(best[np.argsort(best[:, 0])], boxes[np.argsort(boxes[:, 0])], atol=0.5)
