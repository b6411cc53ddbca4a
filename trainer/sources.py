"""Where a job's examples come from: frames of a MOT-style sequence labelled by the teacher or the
oracle (labels cached on disk), held-out frames with their ground truth for scoring, the split
between the two, and the replay set that keeps a retraining cycle from forgetting."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streams.errors import PedstreamError
from streams.mot import MotSequence, parse_frame_range
from trainer.data import Example, LabelCache, label_frames, shrink
from trainer.job import HeldOut
from trainer.labels import ORACLE_SOURCE, TEACHERS, UNSURE_FROM, Labels, OracleLabeler, TeacherLabeler, with_unsure_source

LABELERS = ("teacher", "oracle")
STORAGE_WIDTH = 576  # examples are kept at this width (1.5x the student's input) to save memory
LABEL_CACHE_ENV = "PEDSTREAM_LABEL_CACHE"


def default_label_cache() -> Path:
    """Where teacher labels are cached per frame: ``$PEDSTREAM_LABEL_CACHE`` or ``~/.cache/pedstream/labels``."""
    return Path(os.environ.get(LABEL_CACHE_ENV) or Path.home() / ".cache" / "pedstream" / "labels")


def labelled_examples(
    sequence: MotSequence,
    frames: tuple[int, int],
    labeler: str,
    models_dir: Path | None,
    cache_dir: Path | None,
    every: int = 1,
    progress: Callable[[int, int], None] | None = None,
    teachers: tuple[str, ...] = TEACHERS,
) -> list[Example]:
    """Examples from ``frames`` of ``sequence``, labelled by the teacher ensemble (``teachers``) or the oracle."""
    if labeler not in LABELERS:
        raise PedstreamError(f"labeler: must be one of {LABELERS}, not {labeler!r}")
    start, stop = frames
    total = len(range(start, stop + 1, every))
    if labeler == "teacher":
        if models_dir is None:
            raise PedstreamError("the teacher labeller needs the models folder (set PEDSTREAM_MODELS)")
        refs = ((f"{sequence.name}#{n}", image) for n, image in sequence.frames(start, stop, every))
        examples = _teacher_labelled(refs, models_dir, cache_dir, (lambda done: progress(done, total)) if progress else None, teachers)
    else:
        oracle = OracleLabeler()
        examples = []
        for n, image in sequence.frames(start, stop, every):
            labels = oracle.label(sequence.gt(n))
            examples.append(Example(image, labels.boxes.xyxy, labels.boxes.scores, ORACLE_SOURCE, f"{sequence.name}#{n}"))
            if progress:
                progress(len(examples), total)
    return [shrink(e, STORAGE_WIDTH) for e in examples]


def held_out_frames(sequence: MotSequence, frames: tuple[int, int], every: int = 1) -> HeldOut:
    start, stop = frames
    images, truths = [], []
    for n, image in sequence.frames(start, stop, every):
        images.append(image)
        truths.append(sequence.gt(n))
    return HeldOut(images, truths, f"{sequence.name} frames {start}-{stop} every {every}")


def training_split(
    sequence: MotSequence,
    frames_text: str | None,
    every: int,
    labeler: str,
    models_dir: Path | None,
    cache_dir: Path | None,
    held_sequence: MotSequence | None = None,
    held_frames_text: str | None = None,
    held_every: int = 1,
    progress: Callable[[int, int], None] | None = None,
    teachers: tuple[str, ...] = TEACHERS,
) -> tuple[list[Example], HeldOut]:
    """The labelled training examples and the held-out frames of one job. Held-out frames come from
    ``held_sequence`` (default: the training sequence) and must not overlap the training frames of
    the same sequence: held-out AP is measured only on frames never trained on."""
    frames = parse_frame_range(frames_text, sequence.length, "--frames")
    held = held_sequence or sequence
    held_range = parse_frame_range(held_frames_text, held.length, "--holdout-frames")
    if held.root.resolve() == sequence.root.resolve() and not (held_range[0] > frames[1] or held_range[1] < frames[0]):
        raise PedstreamError(
            f"--holdout-frames {held_range[0]}:{held_range[1]} overlap the training frames "
            f"{frames[0]}:{frames[1]}: held-out AP must be measured on frames not trained on"
        )
    examples = labelled_examples(sequence, frames, labeler, models_dir, cache_dir, every, progress, teachers)
    return examples, held_out_frames(held, held_range, held_every)


@dataclass(frozen=True)
class ReplaySet:
    """Teacher-labelled frames of a sequence the served model was trained on. They join every
    retraining cycle's replay pool (with the store's earlier hard examples) so a cycle for one camera
    does not make the model forget what it knew."""

    sequence: MotSequence
    frames: tuple[int, int]
    every: int = 2

    @classmethod
    def of(cls, sequence: MotSequence, frames_text: str | None = None, every: int = 2) -> ReplaySet:
        """``frames_text`` of ``sequence``; by default its first half, which for PETS09-S2L1 is the
        bundled student's own training frames (``make student``)."""
        frames = parse_frame_range(frames_text, sequence.length, "--replay-frames") if frames_text else (1, sequence.length // 2)
        return cls(sequence, frames, every)

    def describe(self) -> str:
        return f"teacher labels of {self.sequence.name} frames {self.frames[0]}-{self.frames[1]} (every {self.every})"

    def examples(self, models_dir: Path, cache_dir: Path | None) -> list[Example]:
        return labelled_examples(self.sequence, self.frames, "teacher", models_dir, cache_dir, self.every)


def video_examples(
    video: Path,
    every: int,
    models_dir: Path,
    cache_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
    teachers: tuple[str, ...] = TEACHERS,
) -> list[Example]:
    """Every ``every``-th frame of a video file labelled by the teacher ensemble (labels cached,
    keyed by the file's content, the frame index and the ensemble, so a renamed copy is not
    labelled again)."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise PedstreamError(f"{video}: cannot open the video")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    digest = hashlib.sha256(video.read_bytes()[: 8 << 20]).hexdigest()[:12]
    frames: list[tuple[str, np.ndarray]] = []
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if index % every == 0:
            frames.append((f"{video.stem}@{digest}#{index}", image))
        index += 1
    capture.release()
    count = len(frames) or total // every
    examples = _teacher_labelled(frames, models_dir, cache_dir, (lambda done: progress(done, count)) if progress else None, teachers)
    return [shrink(e, STORAGE_WIDTH) for e in examples]


def _teacher_labelled(
    frames: Iterable[tuple[str, np.ndarray]],
    models_dir: Path,
    cache_dir: Path | None,
    progress: Callable[[int], None] | None,
    teachers: tuple[str, ...] = TEACHERS,
) -> list[Example]:
    """(ref, image) frames labelled for training by the teachers, unsure boxes kept (see
    ``UNSURE_FROM``); the teachers are loaded only when a frame is not cached."""
    teacher_holder: list[TeacherLabeler] = []

    def label(image: np.ndarray) -> Labels:
        if not teacher_holder:
            teacher_holder.append(TeacherLabeler(models_dir, min_score=UNSURE_FROM, teachers=teachers))
        return teacher_holder[0].label(image)

    return label_frames(frames, label, with_unsure_source(teachers), LabelCache(cache_dir) if cache_dir else None, progress)


def dataset_examples(path: Path, every: int = 1) -> tuple[list[Example], dict[str, object]]:
    """The human-labelled images of a YOLO folder, a COCO JSON (trainer.datasets) or a MOT-style
    sequence folder (its ground truth; every ``every``-th frame), and their summary."""
    from trainer.datasets import load_dataset

    if (path / "seqinfo.ini").is_file():
        sequence = MotSequence.load(path)
        found = labelled_examples(sequence, (1, sequence.length), "oracle", None, None, every)
        return found, {"name": sequence.name, "format": "mot", "labels": "human", "images": len(found),
                       "boxes": int(sum(len(e.boxes) for e in found))}  # fmt: skip
    dataset = load_dataset(path)
    return [shrink(image.example(dataset.name), STORAGE_WIDTH) for image in dataset.images], dataset.describe()
