"""A dependency that is down is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import redis
from kafka.errors import KafkaTimeoutError

from deploy import cli
from deploy.commands import cameras
from deploy.commands.common import find_model, find_sequence


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:1']"), "the Kafka broker did not answer"),
        (redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."), "Redis did not answer"),
    ],
)
def test_an_unreachable_dependency_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception, says: str
) -> None:
    def down(_args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cameras, "cmd_dead_letters", down)
    assert cli.main(["dead-letters", "--bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pedstream: error: {says}") and "stack status" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_each_command_keeps_its_own_backend_default() -> None:
    """eval and the benches run ONNX Runtime unless asked; only detect measures both (auto)."""
    parser = cli.build_parser()
    assert parser.parse_args(["eval", "--model", "student", "--sequence", "PETS09-S2L1"]).backend == "ort"
    assert parser.parse_args(["detect", "--model", "student"]).backend == "auto"
    assert parser.parse_args(["eval", "--model", "student", "--sequence", "PETS09-S2L1", "--backend", "tvm"]).backend == "tvm"


def test_bare_model_and_sequence_names_are_found_in_the_configured_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--model nanodet.onnx --sequence PETS09-S2L1` as the README writes them, from any folder."""
    models, data = tmp_path / "models", tmp_path / "data"
    (data / "PETS09-S2L1").mkdir(parents=True)
    models.mkdir()
    (models / "nanodet.onnx").write_bytes(b"onnx")
    monkeypatch.setenv("PEDSTREAM_MODELS", str(models))
    monkeypatch.setenv("PEDSTREAM_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    assert find_model("nanodet.onnx") == str(models / "nanodet.onnx")
    assert find_sequence("PETS09-S2L1") == str(data / "PETS09-S2L1")
    assert find_model("student") == "student"  # the bundled one
    assert find_model("missing.onnx") == "missing.onnx"  # not found anywhere: the error names what was asked
    (tmp_path / "nanodet.onnx").write_bytes(b"local")
    assert find_model("nanodet.onnx") == "nanodet.onnx"  # a file where the user is wins


def test_validate_config_names_a_camera_whose_source_file_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], vtest: str
) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(
        f"cameras:\n  - id: door\n    source: {vtest}\n  - id: yard\n    source: gone.mp4\n  - id: street\n    source: rtsp://127.0.0.1:8554/street\n"
    )
    assert cli.main(["camera", "--config", str(cfg), "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert f"camera yard: source {tmp_path / 'gone.mp4'}: no such file or folder" in err and "door" not in err and "street" not in err


def test_train_checks_its_ray_ports_before_any_labelling(tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data: Path) -> None:
    import socket
    import time

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        base = holder.getsockname()[1]
        started = time.monotonic()
        run = ["train", "--labels", "oracle", "--frames", "1:200", "--ray-port", str(base), "--out", str(tmp_path / "run")]
        code = cli.main([*run, "--data", str(shared_data)])
    err = capsys.readouterr().err
    assert code == 2 and f"Ray ports [{base}]" in err and "label" not in err.split("Ray ports")[0]
    assert time.monotonic() - started < 20 and not (tmp_path / "run").exists()


def test_a_model_that_cannot_be_loaded_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PEDSTREAM_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    where = f"$PEDSTREAM_MODELS={tmp_path / 'models'}"
    for model, says in (
        (
            "missing.onnx",
            f"missing.onnx: cannot read model (No such file or directory) (a bare name is looked for here and in {where})",
        ),
        (str(tmp_path / "broken.onnx"), f"{tmp_path / 'broken.onnx'}: not an ONNX model"),
    ):
        assert cli.main(["eval", "--model", model, "--sequence", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pedstream: error: {says}") and len(err.strip().splitlines()) == 1, err


def test_tune_prints_its_report_as_json_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`pedstream tune --json` (the tuning itself is tested in test_tvm_tuning.py; here a stand-in)."""
    from detectors.backends import tvm, tvm_tuning

    report = {"trials": 4, "seconds": 1.5, "target": "llvm", "database": "abc123"}
    monkeypatch.setattr(tvm_tuning, "tune", lambda *_a, **_k: dict(report))
    monkeypatch.setattr(tvm, "TvmBackend", lambda *_a, **_k: type("B", (), {"describe": lambda self: {"schedule": "ms-abc123"}})())
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert cli.main(["tune", "--model", str(model), "--trials", "4", "--work-dir", str(tmp_path / "db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {**report, "compiled": {"schedule": "ms-abc123"}}
    assert cli.main(["tune", "--model", str(model), "--trials", "4", "--work-dir", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tuned m.onnx: 4 trials in 1.5 s for llvm; database abc123") and "{" not in out


@pytest.mark.parametrize("threads", ["0", "two", ",", "1,-2"])
def test_bench_generalize_names_a_bad_thread_setting_before_training(threads: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "generalize", "--threads", threads, "--left-out", "TUD-Campus"]) == 2
    err = capsys.readouterr().err
    assert f"--threads {threads!r}" in err and "Traceback" not in err


@pytest.mark.parametrize("teachers", ["nanodet,yolo", "ssdlite,ssdlite", ","])
def test_bench_generalize_names_a_bad_teacher_ensemble_before_training(teachers: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "generalize", "--teachers", teachers, "--left-out", "TUD-Campus"]) == 2
    err = capsys.readouterr().err
    assert err.count("--teachers") == 1 and "Traceback" not in err
    assert "choose from nanodet, centernet, ssdlite" in err or "names a model twice" in err


def test_bench_generalize_refuses_a_negative_warmup_before_training(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "generalize", "--warmup", "-5", "--left-out", "TUD-Campus"]) == 2
    err = capsys.readouterr().err
    assert "--warmup -5" in err and "Traceback" not in err
