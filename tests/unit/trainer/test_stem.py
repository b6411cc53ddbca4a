"""The distilled stem: same feature shapes as the trunk blocks it replaces, batch norm folded exactly,
distillation gets closer to the trunk's features, is cached by its inputs, and a student built on it
starts from those weights, keeps them frozen and says so in its export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.choices import DISTILLED_STEM
from trainer.data import Example
from trainer.pretrained import SSDLITE_STRIDE4, SSDLITE_STRIDE8, SSDLITE_STRIDE16, ssdlite_trunk
from trainer.stem import DistilledStem, DistillSettings, StemTrunk, distill_stem
from trainer.student import Student, StudentConfig, config_of, export_onnx

OUTPUTS = (SSDLITE_STRIDE4, SSDLITE_STRIDE8, SSDLITE_STRIDE16)


def _examples(count: int) -> list[Example]:
    rng = np.random.default_rng(1)
    none = np.zeros((0, 4), np.float32)
    # smooth random images (blurred noise), so that the trunk's features are not noise themselves
    images = [np.repeat(np.repeat(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), 8, 0), 8, 1) for _ in range(count)]
    return [Example(image, none, np.zeros(0, np.float32), "test", f"synthetic#{i}") for i, image in enumerate(images)]


def test_the_stem_trunk_gives_the_trunk_s_feature_shapes(shared_models: Path) -> None:
    model = shared_models / "ssdlite_pedestrian.onnx"
    image = torch.rand(1, 3, 240, 320) * 2 - 1
    with torch.no_grad():
        want = ssdlite_trunk(model, OUTPUTS)(image)
        got = StemTrunk(model, OUTPUTS)(image)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want] == [(1, 24, 60, 80), (1, 32, 30, 40), (1, 96, 15, 20)]


def test_folding_batch_norm_keeps_the_function() -> None:
    stem = DistilledStem(batchnorm=True)
    stem.train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        stem(torch.randn(4, 3, 48, 64) * 2 + 0.5)
    stem.eval()
    image = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(stem.fused()(image), stem(image), atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in stem.fused().modules())


def test_distillation_learns_is_cached_and_starts_a_student(shared_models: Path, tmp_path: Path) -> None:
    model = shared_models / "ssdlite_pedestrian.onnx"
    settings = DistillSettings(steps=40, batch_size=4, input_width=160, input_height=120, crop_width=96, crop_height=64)
    examples = _examples(6)
    first = distill_stem(model, examples, settings, tmp_path)
    assert not first.cached and first.relative_error_stride4 < 0.9  # it starts at about 1 (outputs near 0)
    again = distill_stem(model, examples, settings, tmp_path)
    assert again.cached and again.relative_error_stride8 == first.relative_error_stride8
    assert all(np.array_equal(again.weights[name], first.weights[name]) for name in first.weights)
    other = distill_stem(model, examples[:5], DistillSettings(steps=1, batch_size=2, crop_width=96, crop_height=64), tmp_path)
    assert not other.cached  # other images, other settings: distilled again

    config = StudentConfig(input_width=160, input_height=128, trunk=str(model), head_stride=8, stem=DISTILLED_STEM)
    student = Student(config)
    student.load_stem(first.weights)
    assert isinstance(student.trunk, StemTrunk)
    stem_weight = student.trunk.stem.layers[0].weight
    assert torch.equal(stem_weight, torch.from_numpy(first.weights["layers.0.weight"]))
    assert not any(p.requires_grad for p in student.trunk.stem.parameters())  # frozen, as the blocks it replaces are
    assert config_of(export_onnx(student, "t"), shared_models) == config
