"""``pedstream bench loop``: one turn of the closed loop (``deploy.closed_loop``) measured as JSON.

The camera to adapt is ``--sequence`` (default PETS09-S2L1), drifted to night unless ``--drift
none``; the other cameras are PETS09-S2L1 as it is and TUD-Campus (when it is not the adapted one),
standing for the rest of the site, whose AP50 must not drop (forgetting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from deploy.closed_loop import NIGHT, ClosedLoop, SiteCamera
from streams.cameras.config import Look
from streams.mot import MotSequence
from streams.topics import Topics
from trainer.sources import ReplaySet

DRIFTS = {"night": NIGHT, "none": Look()}


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
    )
    out = loop.run()
    others = [c.camera_id for c in cameras if not c.adapt]
    cycle = out.cycle
    return {
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
