"""The parameter server's staleness rule, checkpoints, and a short asynchronous run that learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.errors import PedstreamError
from streams.mot import MotSequence
from trainer.actors import split_into_shards
from trainer.data import Augment, Example
from trainer.job import JobSettings
from trainer.labels import OracleLabeler
from trainer.ps import GradientWorker, ParameterServer, StalenessPolicy, model_weights
from trainer.student import Student, StudentConfig


def server(
    policy: StalenessPolicy = StalenessPolicy(lr=0.1, momentum=0.0, clip_norm=1e9, staleness_bound=3, optimizer="sgd"),
) -> ParameterServer:
    return ParameterServer({"w": np.zeros(2, np.float32)}, policy)


def test_fresh_gradient_uses_the_full_rate() -> None:
    ps = server()
    result = ps.push({"w": np.ones(2, np.float32)}, based_on=0)
    assert result.applied and result.staleness == 0 and result.lr == pytest.approx(0.1)
    np.testing.assert_allclose(ps.weights["w"], [-0.1, -0.1])


@pytest.mark.parametrize(("staleness", "rate"), [(1, 0.05), (2, 0.1 / 3), (3, 0.025)])
def test_stale_gradients_are_applied_with_the_scaled_rate(staleness: int, rate: float) -> None:
    ps = server()
    for _ in range(staleness):
        ps.push({"w": np.zeros(2, np.float32)}, based_on=ps.version)
    before = ps.weights["w"].copy()
    result = ps.push({"w": np.ones(2, np.float32)}, based_on=0)
    assert result.applied and result.staleness == staleness and result.lr == pytest.approx(rate)
    np.testing.assert_allclose(ps.weights["w"], before - rate)


def test_gradients_beyond_the_bound_are_dropped() -> None:
    ps = server()
    for _ in range(4):
        ps.push({"w": np.zeros(2, np.float32)}, based_on=ps.version)
    result = ps.push({"w": np.ones(2, np.float32)}, based_on=0)
    assert not result.applied and result.staleness == 4 and ps.dropped == 1 and ps.version == 4


def test_clipping_and_checkpoint_round_trip(tmp_path: Path) -> None:
    ps = server(StalenessPolicy(lr=1.0, momentum=0.0, clip_norm=1.0, optimizer="sgd"))
    ps.push({"w": np.array([3.0, 4.0], np.float32)}, based_on=0)  # norm 5 clipped to 1
    np.testing.assert_allclose(ps.weights["w"], [-0.6, -0.8], rtol=1e-6)
    ps.checkpoint(tmp_path / "ps.ckpt")
    restored = ParameterServer.restore(tmp_path / "ps.ckpt", ps.policy)
    assert restored.version == 1 and np.allclose(restored.weights["w"], ps.weights["w"])


def test_asynchronous_updates_on_real_frames_lower_the_loss(shared_data: Path) -> None:
    sequence = MotSequence.load(shared_data / "PETS09-S2L1")
    oracle = OracleLabeler()
    examples = []
    for number, image in sequence.frames(1, 60, 4):
        labels = oracle.label(sequence.gt(number))
        examples.append(Example(image, labels.boxes.xyxy, labels.boxes.scores, labels.source, f"pets#{number}"))
    config = StudentConfig(input_width=256, input_height=192)
    ps = ParameterServer(model_weights(Student(config)), StalenessPolicy(lr=0.02, momentum=0.5, optimizer="sgd"))
    workers = [GradientWorker(examples, config, batch_size=4, augment=Augment(enabled=False), seed=s) for s in (1, 2)]
    losses = []
    in_flight = [(w, *ps.pull()) for w in workers]  # each trainer holds possibly stale weights
    for step in range(40):
        worker, version, weights = in_flight[step % 2]
        grads, buffers, loss, based_on = worker.compute({k: v.copy() for k, v in weights.items()}, version)
        ps.push(grads, based_on, buffers=buffers)
        losses.append(loss)
        in_flight[step % 2] = (worker, *ps.pull())
    assert max(ps.staleness_seen) >= 1  # the two trainers really were asynchronous
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_adam_scales_its_step_by_staleness_too(staleness: int) -> None:
    ps = ParameterServer({"w": np.zeros(3, np.float32)}, StalenessPolicy(lr=0.01, clip_norm=1e9, staleness_bound=8, optimizer="adam"))
    ps.version = staleness  # the gradient below was computed on version 0
    result = ps.push({"w": np.array([2.0, -0.5, 1e-3], np.float32)}, based_on=0)
    assert result.applied and result.staleness == staleness
    # Adam's first step moves every weight by the learning rate against the gradient's sign
    np.testing.assert_allclose(ps.weights["w"], np.array([-1, 1, -1]) * 0.01 / (1 + staleness), rtol=1e-3)


def test_the_server_ships_a_moving_average_of_the_weights_when_asked(tmp_path: Path) -> None:
    policy = StalenessPolicy(lr=0.1, momentum=0.0, clip_norm=1e9, optimizer="sgd", average_decay=0.9)
    ps = ParameterServer({"w": np.zeros(2, np.float32), "count": np.zeros((), np.int64)}, policy)
    for _ in range(200):
        ps.push({"w": np.ones(2, np.float32)}, based_on=ps.version, buffers={"count": ps.weights["count"] + 1})
    version, averaged = ps.pull_averaged()
    assert version == 200 and ps.weights["w"][0] == pytest.approx(-20.0, abs=1e-4)
    # the weights walk down by 0.1 per update: once the decay has ramped up (update 80), the average
    # trails them by decay / (1 - decay) = 9 updates
    assert averaged["w"][0] == pytest.approx(-20.0 + 0.9, abs=0.02)
    assert averaged["w"].dtype == np.float32 and averaged["count"] == 200  # counters are copied, not averaged
    ps.checkpoint(tmp_path / "ps.ckpt")
    np.testing.assert_array_equal(ParameterServer.restore(tmp_path / "ps.ckpt", policy).pull_averaged()[1]["w"], averaged["w"])
    plain = server()
    plain.push({"w": np.ones(2, np.float32)}, based_on=0)
    assert plain.pull_averaged()[1] is plain.weights  # no average kept: the last weights are shipped
    with pytest.raises(ValueError, match="average_decay"):
        StalenessPolicy(average_decay=1.0)


def test_a_long_average_is_honoured_not_capped_by_a_ramp() -> None:
    # decay 0.998 over a 2000-update job spans ~460 updates of a steady walk (sum of j * 0.998**j over
    # sum of 0.998**j); TensorFlow's num_updates ramp would have cut it to ~200
    policy = StalenessPolicy(lr=0.1, momentum=0.0, clip_norm=1e9, optimizer="sgd", average_decay=0.998)
    ps = ParameterServer({"w": np.zeros(1, np.float32)}, policy)
    for _ in range(2000):
        ps.push({"w": np.ones(1, np.float32)}, based_on=ps.version)
    trail = (ps.pull_averaged()[1]["w"][0] - ps.weights["w"][0]) / 0.1
    assert trail == pytest.approx(461.8, abs=2)


def test_parameters_are_split_into_balanced_shards() -> None:
    weights = {"a": np.zeros(100), "b": np.zeros(60), "c": np.zeros(50), "d": np.zeros(10)}
    shards = split_into_shards(weights, 2)
    assert sorted(sum(shards, [])) == ["a", "b", "c", "d"]
    sizes = sorted(sum(weights[n].size for n in s) for s in shards)
    assert sizes == [110, 110]
    with pytest.raises(ValueError):
        split_into_shards(weights, 0)


def test_learning_rate_warms_up_then_decays() -> None:
    s = JobSettings(updates=100, warmup=10)
    assert s.lr_scale(0) == pytest.approx(0.1) and s.lr_scale(9) == pytest.approx(1.0)
    assert s.lr_scale(10) == pytest.approx(1.0) and s.lr_scale(99) < 0.1 and s.lr_scale(55) == pytest.approx(0.525, abs=0.01)
    with pytest.raises(PedstreamError, match="mode"):
        JobSettings(mode="fast")
    with pytest.raises(PedstreamError, match="warmup"):
        JobSettings(updates=100, warmup=-1)


def test_fine_tuning_keeps_the_start_models_batch_norm_statistics() -> None:
    rng = np.random.default_rng(0)
    examples = [
        Example(
            rng.integers(0, 40, (192, 256, 3), dtype=np.uint8),
            np.array([[20, 30, 60, 150]], np.float32),
            np.ones(1, np.float32),
            "test",
            f"dark#{i}",
        )
        for i in range(4)
    ]  # dark frames: other statistics
    config = StudentConfig(input_width=256, input_height=192)
    start = model_weights(Student(config))
    for freeze in (True, False):
        worker = GradientWorker(examples, config, batch_size=4, augment=Augment(enabled=False), seed=1, freeze_batchnorm=freeze)
        grads, buffers, _loss, _ = worker.compute({k: v.copy() for k, v in start.items()}, 0)
        means = [n for n in buffers if n.endswith("running_mean")]
        assert means and grads
        unchanged = all(np.array_equal(buffers[n], start[n]) for n in means)
        assert unchanged == freeze


def test_weights_named_by_a_prefix_learn_at_their_own_rate() -> None:
    # the pretrained trunk (trunk.*) at a tenth of the head's rate; Adam's first step moves by lr
    policy = StalenessPolicy(lr=0.01, lr_scale_by_prefix=(("trunk.", 0.1),))
    ps = ParameterServer({"trunk.conv": np.zeros(2, np.float32), "heatmap.conv": np.zeros(2, np.float32)}, policy)
    ps.push({"trunk.conv": np.ones(2, np.float32), "heatmap.conv": np.ones(2, np.float32)}, based_on=0)
    np.testing.assert_allclose(ps.weights["trunk.conv"], -0.001, rtol=1e-4)
    np.testing.assert_allclose(ps.weights["heatmap.conv"], -0.01, rtol=1e-4)
    with pytest.raises(ValueError, match="lr_scale_by_prefix"):
        StalenessPolicy(lr_scale_by_prefix=(("trunk.", 2.0),))
