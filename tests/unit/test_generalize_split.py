"""`bench generalize`'s training sets (the left-out camera never enters training, nor its stem) and its scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy import cli
from deploy.bench import generalize
from detectors.detector import BUNDLED_MODELS, onnx_metadata, read_model
from detectors.evaluation import match_frame, score_matches
from detectors.results import BoxArray
from streams.mot import GroundTruth, MotSequence
from trainer.data import Example
from trainer.labels import TEACHERS

ENSEMBLE = ("nanodet", "centernet", "ssdlite")  # what the test asks the videos to be labelled by


@pytest.fixture
def teacherless(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Teacher-labelled videos stand in as one empty example each (the teachers are not under test)."""
    asked: list[tuple[str, int]] = []

    def one_example(video: Path, every: int, _models: Path, _cache: Path | None, teachers: tuple[str, ...] = TEACHERS) -> list[Example]:
        asked.append((video.name, every))
        assert teachers == ENSEMBLE
        image = np.zeros((24, 32, 3), np.uint8)
        return [Example(image, np.empty((0, 4), np.float32), np.empty(0, np.float32), "teacher", f"{video.stem}@0#0")]

    monkeypatch.setattr(generalize, "video_examples", one_example)
    return asked


@pytest.mark.parametrize("left_out", ["PETS09-S2L1", "TUD-Campus"])
def test_the_left_out_camera_never_enters_training(shared_data: Path, tmp_path: Path, teacherless: list, left_out: str) -> None:
    examples, trained_on = generalize.training_set(shared_data, tmp_path, tmp_path, left_out, lambda _m: None, ENSEMBLE)
    names = [source["name"] for source in trained_on]
    assert left_out not in names and not any(e.ref.startswith(left_out) for e in examples)
    other = next(name for name in generalize.LABELLED_SEQUENCES if name != left_out)
    assert other in names and any(e.ref.startswith(other) for e in examples)  # the other labelled camera is trained on
    assert "coco128-person" in names
    assert all(source["teachers"] == list(ENSEMBLE) for source in trained_on if source["labels"] == "teacher")  # the JSON says who labelled
    clips = sorted(p.name for p in (shared_data / "unlabelled").glob("*.mp4"))
    assert sorted(name for name, every in teacherless if every == generalize.CLIP_EVERY) == clips
    # the stem is distilled on neither labelled camera's frames, whichever is left out
    assert not any(e.ref.startswith(generalize.LABELLED_SEQUENCES) for e in generalize.never_scored(examples))


def test_repeated_photos_are_drawn_more_often_but_distilled_on_once(shared_data: Path, tmp_path: Path, teacherless: list) -> None:
    once, _ = generalize.training_set(shared_data, tmp_path, tmp_path, "TUD-Campus", lambda _m: None, ENSEMBLE)
    thrice, trained_on = generalize.training_set(shared_data, tmp_path, tmp_path, "TUD-Campus", lambda _m: None, ENSEMBLE, 3)
    photos = sum(1 for e in once if e.ref.startswith("coco128-person"))
    assert photos > 0 and len(thrice) == len(once) + 2 * photos
    assert next(s for s in trained_on if s["name"] == "coco128-person")["repeats"] == 3  # the JSON says so
    assert [e.ref for e in generalize.never_scored(thrice)] == [e.ref for e in generalize.never_scored(once)]  # one stem serves both
    with pytest.raises(ValueError, match="photo_repeats"):
        generalize.training_set(shared_data, tmp_path, tmp_path, "TUD-Campus", lambda _m: None, ENSEMBLE, 0)


def test_the_cli_offers_the_training_choices_the_trainer_runs_without_importing_torch() -> None:
    """The flags' choices come from trainer.choices, which the torch-free CLI can import; the trainer
    uses the same names."""
    import subprocess
    import sys

    probe = "import sys, trainer.choices; assert not {'torch', 'ray'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
    from streams.errors import PedstreamError
    from trainer.choices import PERSON_PX, TRAINING_MODES
    from trainer.job import JobSettings
    from trainer.retrain import RetrainPolicy

    assert [JobSettings(mode=mode).mode for mode in TRAINING_MODES] == list(TRAINING_MODES)
    with pytest.raises(PedstreamError, match="mode: must be one of"):
        JobSettings(mode="hogwild")
    assert RetrainPolicy().person_px == PERSON_PX


def test_every_model_is_scored_with_its_errors_on_the_left_out_frames(shared_data: Path, shared_models: Path) -> None:
    sequence = MotSequence.load(shared_data / "TUD-Campus")
    camera = generalize.LeftOut("TUD-Campus", (1, 4), 1)
    scored, matches = generalize.score({"ssdlite": read_model(shared_models / "ssdlite_pedestrian.onnx")}, sequence, camera, (1,))
    entry = scored["ssdlite"]
    assert len(matches["ssdlite"]) == 4  # one per frame, for the paired comparisons
    assert entry["frames"] == 4 and entry["fps"] > 0 and entry["fps_by_threads"] == {"1": entry["fps"]}
    errors = entry["errors"]
    labelled = sum(int(sequence.gt(n).consider.sum()) for n in range(1, 5))
    assert errors["hits"] + errors["missed"] == labelled and errors["hits"] > 0
    assert errors["min_score"] == 0.3 and {"misplaced", "duplicate", "background"} <= set(errors)
    by_height = entry["people_by_height"]  # TUD-Campus labels people 129 px and taller
    assert sum(r["people"] for r in by_height) == labelled and all(r["height_px"][0] >= 100 for r in by_height)
    assert all(0 <= r["found"] <= r["people"] and 0 <= r["median_best_score"] <= 1 for r in by_height)


def _frames(hits_per_frame: list[int], people: int = 2) -> list:
    """Matches of frames with ``people`` labelled each, of which the model finds the given number
    (one sure box each) and adds one false box scored 0.2."""
    truth_boxes = np.array([[10 + 40 * k, 10, 40 + 40 * k, 90] for k in range(people)], np.float32)
    truth = GroundTruth(truth_boxes, np.arange(people), np.ones(people, bool))
    out = []
    for hits in hits_per_frame:
        boxes = np.vstack([truth_boxes[:hits], [[300, 300, 330, 380]]]).astype(np.float32)
        out.append(match_frame(BoxArray.of(boxes, np.array([0.9] * hits + [0.2], np.float32)), truth))
    return out


def test_the_targets_compare_the_int8_student_with_ssdlite_and_the_best_teacher_on_the_same_frames() -> None:
    found = {"student_int8": [2] * 20, "ssdlite": [1] * 20, "nanodet": [2] * 20, "centernet": [1] * 20}
    fps = {"student_int8": 200.0, "ssdlite": 50.0, "nanodet": 20.0, "centernet": 30.0}
    matches = {name: _frames(hits) for name, hits in found.items()}
    scored = {name: {"ap50": round(score_matches(m).ap50, 4), "fps": fps[name]} for name, m in matches.items()}
    targets = generalize.against_targets(scored, matches)
    assert targets["vs_best_teacher"]["teacher"] == "nanodet"  # the higher AP50 on this camera, not the faster
    ssd = targets["vs_ssdlite"]
    assert ssd["ap50_gain"] > 0.3 and ssd["ap50_gain_90"][0] > 0 and ssd["fps_ratio"] == 4.0
    assert targets["vs_best_teacher"]["fps_ratio"] == 10.0 and targets["vs_best_teacher"]["ap50_gain"] == 0.0
    assert targets["all_met"] and targets["stretch_within_5_points_of_best_teacher"]

    # a student that finds the same people as SSDLite on some frames and fewer on others: behind,
    # with an interval that says so, and slower than 8x the best teacher: not met
    matches["student_int8"] = _frames([1] * 10 + [0] * 10)
    scored["student_int8"] = {"ap50": round(score_matches(matches["student_int8"]).ap50, 4), "fps": 150.0}
    targets = generalize.against_targets(scored, matches)
    low, high = targets["vs_ssdlite"]["ap50_gain_90"]
    assert low <= targets["vs_ssdlite"]["ap50_gain"] <= high < 0
    assert targets["met"] == {"ap50_at_least_ssdlite": False, "fps_at_least_2x_ssdlite": True, "fps_at_least_8x_best_teacher": False}
    assert not targets["all_met"] and not targets["stretch_within_5_points_of_best_teacher"]


def test_bench_generalize_trains_the_bundled_students_recipe() -> None:
    """What `bench generalize` measures by default is how the bundled student was built: its input size,
    head and trunk strides, stem and neck width (so a recipe change must be bundled, or benched, both)."""
    args = cli.build_parser().parse_args(["bench", "generalize"])
    bundled = onnx_metadata((BUNDLED_MODELS / "student.onnx").read_bytes())
    width, height = (int(v) for v in args.input_size.split("x"))
    benched = {"input_width": width, "input_height": height, "stride": args.head_stride, "trunk_stride": args.trunk_stride,
               "neck": args.neck, "stem": args.stem}  # fmt: skip
    assert {key: str(value) for key, value in benched.items()} == {key: bundled[key] for key in benched}
