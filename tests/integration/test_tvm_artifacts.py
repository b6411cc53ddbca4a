"""Compile where there is time, serve where there is none: the trainer side compiles an approved
version for the TVM target an edge agent declares and publishes the library signed beside the
ONNX bytes (real Redis); the agent's model loader serves the new version on ONNX Runtime at once,
never compiles, switches to the library when it appears, and refuses a tampered one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.backends.selection import sample_feeds
from detectors.backends.tvm import TvmBackend
from detectors.detector import BUNDLED_MODELS, Detector, with_version
from detectors.model_updates import ModelUpdater
from detectors.serving import ServedModels
from streams.model_channel import ModelReader
from streams.polling import wait_until
from streams.signing import PUBLIC_NAME, Verifier
from tests.integration.test_model_registry import keys, registry  # noqa: F401 - fixtures
from trainer.compiling import compile_version, declared_targets
from trainer.registry import Registry

pytestmark = pytest.mark.integration
STUDENT = BUNDLED_MODELS / "student-float.onnx"


def test_trainer_compiles_for_the_declared_target_and_the_agent_loads_it_without_compiling(
    registry: Registry,  # noqa: F811 - the fixture
    keys: Path,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = ModelReader(registry.client, registry.keys, Verifier.load(keys / PUBLIC_NAME))
    models = ServedModels(Detector.from_bytes(STUDENT.read_bytes(), backend="ort", name="bundled"))
    updater = ModelUpdater(reader, models, "edge-1", backend="tvm", artifact_poll_s=0.3)

    def no_compiling_at_the_edge(self: TvmBackend) -> None:
        raise AssertionError("the edge agent compiled a model while serving")

    try:
        declares = lambda: "edge-1" in registry.agents() and registry.agents()["edge-1"].get("tvm_target")  # noqa: E731
        wait_until(declares, 60, "the agent to declare its target")
        declared = declared_targets(registry)
        assert list(declared) == [registry.agents()["edge-1"]["tvm_target"]["id"]]
        monkeypatch.setattr(TvmBackend, "_compile_into_cache", no_compiling_at_the_edge)
        approved = registry.publish(with_version(STUDENT.read_bytes(), "s-tvm-1"))
        updater.on_announcement(approved)
        wait_until(lambda: "s-tvm-1" in updater.backend_choices, 60, "the new version to be served")
        served = models.served("*")
        assert served.version == "s-tvm-1" and served.detector.backend.name == "ort"  # live at once, on ONNX Runtime
        assert "never compile while serving" in updater.backend_choices["s-tvm-1"]["reason"]

        monkeypatch.undo()  # the trainer side compiles
        result = compile_version(registry, "s-tvm-1", declared)
        [published] = result["published"]
        assert published["size_bytes"] > 10_000 and published["layout"] == "NHWC" and published["approval_to_published_s"] > 0
        assert compile_version(registry, "s-tvm-1", declared)["skipped"] == {published["target_id"]: "already published"}
        monkeypatch.setattr(TvmBackend, "_compile_into_cache", no_compiling_at_the_edge)
        wait_until(lambda: models.served("*").detector.backend.name == "tvm", 60, "the agent to switch to the compiled library")
        assert updater.backend_choices["s-tvm-1"]["backend"] == "tvm"
        status = registry.agents()["edge-1"]
        assert status["backends"]["s-tvm-1"]["backend"] == "tvm" and status["cameras"]["*"]["backend"] == "tvm"
        [listed] = [v for v in registry.versions() if v["version"] == "s-tvm-1"]
        assert listed["artifacts"][0]["target_id"] == published["target_id"]
        feeds = sample_feeds(models.general.backend.inputs)
        ort_out = Detector.from_bytes(STUDENT.read_bytes(), backend="ort").backend.run(feeds)
        for ours, theirs in zip(models.general.backend.run(feeds), ort_out, strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)

        # a library whose bytes were changed in Redis is refused; the version serves on ONNX Runtime
        second = registry.publish(with_version(STUDENT.read_bytes(), "s-tvm-2"))
        monkeypatch.undo()
        [artifact] = compile_version(registry, "s-tvm-2", declared)["published"]
        key = registry.keys.artifact("s-tvm-2", artifact["target_id"])
        registry.client.set(key, registry.client.get(key)[:-4] + b"evil")  # type: ignore[index]
        monkeypatch.setattr(TvmBackend, "_compile_into_cache", no_compiling_at_the_edge)
        updater.on_announcement(second)
        wait_until(lambda: "s-tvm-2" in updater.backend_choices, 60, "the second version to be served")
        assert models.served("*").version == "s-tvm-2" and models.served("*").detector.backend.name == "ort"
        assert "refused" in updater.backend_choices["s-tvm-2"]["reason"] and "sha256" in updater.backend_choices["s-tvm-2"]["reason"]
    finally:
        updater.close()


def test_rejected_versions_get_no_library(registry: Registry) -> None:  # noqa: F811 - the fixture
    registry.store(with_version(STUDENT.read_bytes(), "s-rej"), state="rejected", reason="gate")
    with pytest.raises(Exception, match="rejected"):
        registry.store_artifact("s-rej", "{}", "abc", b"library", {}, 1.0)
