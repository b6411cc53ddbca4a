"""Where a job's examples come from: frames of a MOT-style sequence labelled by the teacher or the
oracle (labels cached on disk), and held-out frames with their ground truth for scoring."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from streams.errors import PedstreamError
from streams.mot import MotSequence
from trainer.data import Example, LabelCache, label_frames, shrink
from trainer.job import HeldOut
from trainer.labels import ORACLE_SOURCE, TEACHER_SOURCE, Labels, OracleLabeler, TeacherLabeler

LABELERS = ("teacher", "oracle")
STORAGE_WIDTH = 576  # examples are kept at this width (1.5x the student's input) to save memory


def parse_frames(text: str | None, length: int) -> tuple[int, int]:
    """'A:B' (1-based, inclusive) -> (A, B); None -> the whole sequence."""
    if not text:
        return 1, length
    try:
        a, b = text.split(":")
        start, stop = int(a or 1), int(b or length)
    except ValueError:
        raise PedstreamError(f"frames {text!r}: use A:B, 1-based and inclusive, e.g. 1:397") from None
    if not 1 <= start <= stop:
        raise PedstreamError(f"frames {text!r}: need 1 <= A <= B")
    return start, min(stop, length)


def labelled_examples(
    sequence: MotSequence,
    frames: tuple[int, int],
    labeler: str,
    models_dir: Path | None,
    cache_dir: Path | None,
    every: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Example]:
    """Examples from ``frames`` of ``sequence``, labelled by the teacher ensemble or the oracle."""
    if labeler not in LABELERS:
        raise PedstreamError(f"labeler: must be one of {LABELERS}, not {labeler!r}")
    start, stop = frames
    total = len(range(start, stop + 1, every))
    if labeler == "teacher":
        if models_dir is None:
            raise PedstreamError("the teacher labeller needs the models folder (set PEDSTREAM_MODELS)")
        teacher_holder: list[TeacherLabeler] = []

        def label(image: np.ndarray) -> Labels:
            if not teacher_holder:  # load the teachers only when a frame is not cached
                teacher_holder.append(TeacherLabeler(models_dir))
            return teacher_holder[0].label(image)

        source = TEACHER_SOURCE
        refs = ((f"{sequence.name}#{n}", image) for n, image in sequence.frames(start, stop, every))
        examples = label_frames(
            refs, label, source, LabelCache(cache_dir) if cache_dir else None, (lambda done: progress(done, total)) if progress else None
        )
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
