"""Training on a real loopback Ray cluster: loopback only, async and sync jobs on real frames,
a killed trainer restarted, a trainer joining mid-run, and ``pedstream train`` end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from detectors.detector import Detector, read_model
from streams.mot import MotSequence
from trainer.cluster import LOOPBACK, LocalRayCluster, RayPorts, sockets_off_loopback
from trainer.data import Augment
from trainer.job import JobSettings, TrainingJob
from trainer.labels import UNSURE_FROM
from trainer.sources import held_out_frames, labelled_examples, video_examples
from trainer.student import StudentConfig

pytestmark = pytest.mark.integration  # a real Ray head (and, for `pedstream train`, real processes)

SMALL = StudentConfig(input_width=256, input_height=192)
PORTS = RayPorts(27700)
PEDSTREAM = [sys.executable, "-m", "deploy.cli"]
# 20 oracle-labelled frames, 12 updates, held-out every 10th of 400-440: a job of seconds
SMALL_JOB = [
    "--labels",
    "oracle",
    "--frames",
    "1:60",
    "--every",
    "3",
    "--holdout-frames",
    "400:440",
    "--holdout-every",
    "10",
    "--updates",
    "12",
]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    with LocalRayCluster(PORTS, num_cpus=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pets(shared_data: Path) -> MotSequence:
    return MotSequence.load(shared_data / "PETS09-S2L1")


@pytest.fixture(scope="module")
def examples(pets: MotSequence) -> list:
    return labelled_examples(pets, (1, 120), "oracle", None, None, every=3)


def test_teacher_training_labels_keep_unsure_boxes_and_cache_them(shared_models: Path, shared_data: Path, tmp_path: Path) -> None:
    clip = shared_data / "unlabelled" / "city_crossing_street.mp4"
    labelled = video_examples(clip, 40, shared_models, tmp_path)
    scores = [float(s) for e in labelled for s in e.scores]
    assert len(labelled) >= 5 and min(scores) >= UNSURE_FROM - 1e-6
    assert any(s < 0.3 for s in scores) and any(s >= 0.3 for s in scores)  # sure people and unsure ones
    cached = video_examples(clip, 40, tmp_path / "no-models", tmp_path)  # cached: the teachers are not even loaded
    assert [e.ref for e in cached] == [e.ref for e in labelled]
    assert all((a.scores == b.scores).all() for a, b in zip(cached, labelled, strict=True))


def settings(**kw: object) -> JobSettings:
    base = dict(workers=2, updates=40, batch_size=4, augment=Augment(enabled=False), eval_every=0, warmup=5, checkpoint_every=10)
    base.update(kw)
    return JobSettings(**base)


def test_ray_listens_and_talks_on_loopback_only_with_pinned_ports(ray_cluster: LocalRayCluster, examples: list) -> None:
    job = TrainingJob(examples, settings(updates=6), SMALL)
    seen: list[str] = []
    listening: set[int] = set()

    def inspect(_job: TrainingJob, update: int) -> None:  # while the actors are alive
        if update == 3:
            pids = ray_cluster.pids() + [os.getpid()]
            seen.extend(sockets_off_loopback(pids))
            for pid in ray_cluster.pids():
                for c in psutil.Process(pid).net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        listening.add(c.laddr.port)

    job.on_update = inspect
    job.run()
    assert seen == []
    low, high = PORTS.worker_range
    assert PORTS.gcs in listening and listening
    assert all(PORTS.base <= p <= high for p in listening), sorted(listening)
    assert any(low <= p <= high for p in listening)  # worker processes took ports from the pinned range
    import ray

    assert all(node["NodeManagerAddress"] == LOOPBACK for node in ray.nodes())


def test_async_training_on_real_frames_lowers_the_loss_and_evaluates(
    ray_cluster: LocalRayCluster, examples: list, pets: MotSequence
) -> None:
    held = held_out_frames(pets, (400, 480), every=20)
    result = TrainingJob(examples, settings(updates=50, eval_every=25), SMALL, held).run()
    losses = [loss for _u, _t, loss in result.loss_curve]
    assert result.updates == 50 and len(losses) == 50
    assert losses[-1] < 0.8 * losses[4], losses
    assert result.staleness["max"] >= 1  # two trainers really ran asynchronously
    assert [u for u, _t, _a in result.ap_curve] == [25, 50] and result.ap50 is not None
    assert sum(result.gradients_per_trainer) >= 50 and min(result.gradients_per_trainer) > 0
    detector = Detector.from_bytes(result.model_onnx, name="t")
    assert detector.info.format == "student"


def test_sync_mode_averages_every_trainers_gradient(ray_cluster: LocalRayCluster, examples: list) -> None:
    result = TrainingJob(examples, settings(mode="sync", updates=8, ps_shards=2), SMALL).run()
    assert result.updates == 8 and result.samples == 8 * 2 * 4
    assert result.staleness["max"] == 0 and result.gradients_per_trainer == [8, 8]
    assert [s["version"] for s in result.shards] == [8, 8]


def test_a_killed_trainer_is_restarted_and_training_finishes(ray_cluster: LocalRayCluster, examples: list, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_one(job: TrainingJob, update: int) -> None:
        if update == 8:
            pid = job.trainer_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    # enough updates after the kill that the run cannot end before Ray reports the trainer dead (with
    # 30, the other trainer once did the 22 left before that, and nothing was restarted)
    result = TrainingJob(examples, settings(updates=120), SMALL, checkpoint_dir=tmp_path, on_update=kill_one).run()
    assert killed and result.updates == 120
    assert result.trainer_restarts >= 1
    assert (tmp_path / "ps-shard-0.ckpt").is_file()


def test_a_trainer_joins_mid_run_and_takes_work(ray_cluster: LocalRayCluster, examples: list) -> None:
    result = TrainingJob(examples, settings(workers=1, updates=60, join_after=5), SMALL).run()
    assert result.updates == 60 and len(result.gradients_per_trainer) == 2
    # the newcomer needs a few seconds to start (torch import, its data shard), then takes work
    assert result.gradients_per_trainer[1] >= 1, result.gradients_per_trainer


def _small_yolo(shared_data: Path, root: Path) -> Path:
    """Three coco128-person images with their labels, as a user's own YOLO folder."""
    source = shared_data / "coco128-person"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [person]\n")
    for image in sorted((source / "images").rglob("*.jpg"))[:3]:
        shutil.copy(image, root / "images" / image.name)
        label = (source / "labels" / image.relative_to(source / "images")).with_suffix(".txt")
        shutil.copy(label, root / "labels" / label.name)
    return root


def test_pedstream_train_writes_model_metrics_and_curves(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PEDSTREAM_DATA": str(shared_data), "PEDSTREAM_LABEL_CACHE": str(tmp_path / "labels")}
    command = [
        *PEDSTREAM,
        "train",
        *SMALL_JOB,
        "--eval-every",
        "6",
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--input-size",
        "256x192",
        "--ray-port",
        "27900",
        "--version",
        "student-test",
        "--out",
        str(out),
        "--dataset",
        str(_small_yolo(shared_data, tmp_path / "yolo")),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray's own error lines stay out of the user's output (the PS shards start from a file, so Ray has no
    # object-store constructor arguments to warn about)
    assert "core_worker.cc" not in done.stderr and "max_restarts > 0" not in done.stderr, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["updates"] == 12 and summary["version"] == "student-test" and summary["labels"] == "oracle"
    # what it trained on, and who labelled it
    assert summary["data"][0]["labels"] == "human" and summary["data"][0]["images"] == 20
    assert summary["data"][1] == {"name": "yolo", "format": "yolo", "labels": "human", "images": 3, "boxes": summary["data"][1]["boxes"]}
    assert summary["examples"] == 23
    assert "[train async x2]" in done.stderr  # progress is shown
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["loss_curve"]) == 12 and metrics["ap_curve"][0][0] == 6
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    detector = Detector.from_bytes(read_model(out / "student.onnx"), name="s")
    assert detector.version == "student-test"
    assert not [p for p in psutil.process_iter(["cmdline"]) if "pedstream-ray-27900" in " ".join(p.info["cmdline"] or [])]


def test_held_out_frames_may_not_overlap_training_frames(shared_data: Path) -> None:
    env = {**os.environ, "PEDSTREAM_DATA": str(shared_data)}
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "train", "--labels", "oracle", "--frames", "1:100", "--holdout-frames", "90:200"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "overlap the training frames" in done.stderr


def test_bench_train_compares_modes_workers_and_allocations(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PEDSTREAM_DATA": str(shared_data)}
    command = [
        *PEDSTREAM,
        "bench",
        "train",
        *SMALL_JOB,
        "--batch-size",
        "4",
        "--input-size",
        "256x192",
        "--workers",
        "1,2",
        "--mode",
        "async,sync",
        "--processes",
        "3",
        "--allocation-updates",
        "4",
        "--target-loss",
        "100",
        "--ray-port",
        "27950",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert [(r["mode"], r["workers"]) for r in out["runs"]] == [("async", 1), ("async", 2), ("sync", 1), ("sync", 2)]
    for run in out["runs"]:
        assert run["updates_per_s"] > 0 and run["samples_per_s"] > 0 and run["ap50"] is not None
        assert run["seconds_to_loss"] is not None  # the loss starts below 100
    sync2 = next(r for r in out["runs"] if r["mode"] == "sync" and r["workers"] == 2)
    assert sync2["samples_per_s"] / sync2["updates_per_s"] == pytest.approx(8, rel=0.01)  # two batches of 4 per update
    measured = out["allocation"]["measured"]
    assert [(m["ps_shards"], m["trainers"]) for m in measured] == [(1, 2), (2, 1)]
    assert out["allocation"]["best"] in measured and "scaling" in out
