"""The MobileNetV2 trunk cut from the stock SSDLite and rebuilt in torch computes what ONNX Runtime
computes on the same cut, and its weights train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from streams.errors import PedstreamError
from trainer.pretrained import SSDLITE_INPUT, SSDLITE_STRIDE4, SSDLITE_STRIDE8, SSDLITE_STRIDE16, FrozenTrunk, cut_onnx, ssdlite_trunk


def test_the_rebuilt_trunk_matches_onnx_runtime(shared_models: Path) -> None:
    model = shared_models / "ssdlite_pedestrian.onnx"
    outputs = [SSDLITE_STRIDE8, SSDLITE_STRIDE16]
    cut = cut_onnx(model, [SSDLITE_INPUT], outputs)
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 288, 384)).astype(np.float32)
    expected = session.run(outputs, {SSDLITE_INPUT: image})
    trunk = ssdlite_trunk(model).eval()
    with torch.no_grad():
        got = trunk(torch.from_numpy(image))
    assert [tuple(g.shape) for g in got] == [(1, 32, 36, 48), (1, 96, 18, 24)]  # strides 8 and 16
    for ours, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in trunk.parameters()) == 534_464  # every conv weight and bias (the 2 more of the cut are the ReLU6 bounds)
    assert len(trunk.convs) == 39


def test_the_frozen_trunk_in_onnx_runtime_matches_the_rebuilt_one_at_any_size(shared_models: Path) -> None:
    # the stem's distillation teacher: batches of 160x120 crops, not the stock model's input size
    model = shared_models / "ssdlite_pedestrian.onnx"
    outputs = (SSDLITE_STRIDE4, SSDLITE_STRIDE8)
    images = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (3, 3, 120, 160)).astype(np.float32))
    frozen = FrozenTrunk(model, outputs)(images)
    with torch.no_grad():
        rebuilt = ssdlite_trunk(model, outputs).eval()(images)
    assert [tuple(f.shape) for f in frozen] == [(3, 24, 30, 40), (3, 32, 15, 20)]
    for theirs, ours in zip(frozen, rebuilt, strict=True):
        np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-4, rtol=1e-4)


def test_its_weights_train(shared_models: Path) -> None:
    trunk = ssdlite_trunk(shared_models / "ssdlite_pedestrian.onnx", (SSDLITE_STRIDE8,))
    before = trunk.convs["conv0"].weight.detach().clone()
    optimiser = torch.optim.SGD(trunk.parameters(), lr=0.1)
    trunk(torch.randn(1, 3, 64, 64))[0].mean().backward()
    optimiser.step()
    assert not torch.equal(before, trunk.convs["conv0"].weight)


def test_a_wrong_cut_is_named(shared_models: Path) -> None:
    with pytest.raises(PedstreamError, match="cannot cut"):
        cut_onnx(shared_models / "ssdlite_pedestrian.onnx", ["no-such-tensor"], [SSDLITE_STRIDE16])
