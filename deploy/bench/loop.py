"""``pedstream bench loop``: one turn of the closed loop (``deploy.closed_loop``) measured as JSON.

The camera to adapt is ``--sequence`` (default PETS09-S2L1), drifted to night unless ``--drift
none``; the other cameras are PETS09-S2L1 as it is and TUD-Campus (when it is not the adapted one),
standing for the rest of the site, whose AP50 must not drop. ``targets`` compares, in the same run
and on the same frames: the general model on the adapted camera (served from its first frame)
against the stock SSDLite, the camera's own model after one cycle against the NanoDet teacher, and
every other camera's change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from deploy.closed_loop import NIGHT, ClosedLoop, SiteCamera, score_camera
from detectors.detector import Detector, read_model
from streams.cameras.config import Look
from streams.mot import MotSequence
from streams.topics import Topics
from trainer.retrain import FINE_TUNE_LR, RetrainPolicy
from trainer.sources import ReplaySet

DRIFTS = {"night": NIGHT, "none": Look()}
STOCK_MODELS = ("ssdlite_pedestrian", "nanodet")  # scored on the adapted camera's scored frames, in the same run


def site(sequence_dir: Path, data_dir: Path, drift: str) -> list[SiteCamera]:
    adapt = SiteCamera("adapt", MotSequence.load(sequence_dir), DRIFTS[drift], adapt=True)
    cameras = [adapt]
    for camera_id, folder in (("pets-day", data_dir / "PETS09-S2L1"), ("tud-campus", data_dir / "TUD-Campus")):
        if folder.is_dir() and (folder.resolve() != sequence_dir.resolve() or drift != "none"):
            cameras.append(SiteCamera(camera_id, MotSequence.load(folder)))
    return cameras


def run(
    bootstrap: str,
    redis_url: str,
    topics: Topics,
    sequence_dir: Path,
    data_dir: Path,
    models_dir: Path,
    drift: str,
    label_cache: Path,
    updates: int = 300,
    every: int = 4,
    progress: Callable[[str], None] | None = None,
    start_model: str | Path = "student",
    replay_per_new: float = RetrainPolicy.replay_per_new,
    lr: float = FINE_TUNE_LR,
    adapt_batchnorm: bool = False,
    person_px: float | None = RetrainPolicy.person_px,
) -> dict[str, object]:
    cameras = site(sequence_dir, data_dir, drift)
    pets = MotSequence.load(data_dir / "PETS09-S2L1")
    # first halves of the labelled sequences the bundled student was trained on (the loop scores second halves)
    replay = [ReplaySet.of(pets)]
    if (data_dir / "TUD-Campus").is_dir():
        replay.append(ReplaySet.of(MotSequence.load(data_dir / "TUD-Campus"), every=1))
    loop = ClosedLoop(
        bootstrap,
        redis_url,
        topics,
        cameras,
        models_dir,
        label_cache,
        replay,
        updates=updates,
        every=every,
        progress=progress,
        start_model=start_model,
        replay_per_new=replay_per_new,
        lr=lr,
        adapt_batchnorm=adapt_batchnorm,
        person_px=person_px,
    )
    out = loop.run()
    others = [c.camera_id for c in cameras if not c.adapt]
    cycle = out.cycle
    stock = {name: score_camera(Detector.from_bytes(read_model(models_dir / f"{name}.onnx"), name=name, threads=1), cameras[0], every)
             for name in STOCK_MODELS if (models_dir / f"{name}.onnx").is_file()}  # fmt: skip
    before, after = out.ap50_before["adapt"], out.ap50_after["adapt"]
    return {
        "targets": {
            # a camera never seen, served the general model from its first frame, against the stock SSDLite
            "general_over_ssdlite": round(before / stock["ssdlite_pedestrian"], 3) if stock.get("ssdlite_pedestrian") else None,
            "general_over_ssdlite_target": 0.9,
            # after one cycle from its own mined examples, against the NanoDet teacher
            "gap_to_nanodet_after_cycle": round(stock["nanodet"] - after, 4) if "nanodet" in stock else None,
            "gap_to_nanodet_target": 0.05,
            # the other cameras: each one's change (a per-camera model serves only its camera)
            "others_change": {c: round(out.ap50_after[c] - out.ap50_before[c], 4) for c in others},
            "others_change_target": -0.02,
            "start_trained_on_adapted": "adapt" in out.start_trained_on_scored,
        },
        "stock_ap50": stock,
        "publish_to_serving_s": out.publish_to_serving_s,
        "frames_dropped": out.frames_dropped,
        "ap50_before": out.ap50_before["adapt"],
        "ap50_after": out.ap50_after["adapt"],
        "others_ap50_before": {c: out.ap50_before[c] for c in others},
        "others_ap50_after": {c: out.ap50_after[c] for c in others},
        "frames_around_swap": {"published": out.live_frames, "with_detections": out.live_with_detections, "versions": out.live_versions},
        "cycle": {
            **{k: v for k, v in asdict(cycle).items() if k != "train"},
            "train_s": cycle.train.get("seconds"),
            "settings": {
                "updates": updates,
                "lr": lr,
                "replay_per_new": replay_per_new,
                "adapt_batchnorm": adapt_batchnorm,
                "person_px": person_px,
            },  # fmt: skip
            "updates_per_s": cycle.train.get("updates_per_s"),
        },
        "served_after": out.served_version,
        "start_version": out.start_version,
        "start_trained_on_scored": out.start_trained_on_scored,
        "hard_examples": out.hard_examples,
        "frames_published": out.frames_published,
        "drift": drift,
        "sequence": cameras[0].sequence.name,
        "scored_frames": {c.camera_id: [*c.scored, every] for c in cameras},
        "seconds": out.seconds,
    }
