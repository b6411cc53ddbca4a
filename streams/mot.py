"""MOT-style sequence folders: ``seqinfo.ini``, ``gt/gt.txt`` and frames from ``img1/*.jpg`` or one video.

Frame numbers follow MOT: they count from 1 and line up with the video's frames read in order.
"""

from __future__ import annotations

import configparser
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from streams.errors import PedstreamError, SourceError

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


def parse_frame_range(text: str | None, length: int, flag: str = "--frames") -> tuple[int, int]:
    """``'A:B'`` (1-based, inclusive; ``A:`` and ``:B`` leave that end open) -> ``(A, B)`` within a
    sequence of ``length`` frames; ``None`` or ``''`` -> the whole sequence."""
    if not text:
        return 1, length
    first, sep, last = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start, stop = int(first or 1), int(last or length)
    except ValueError:
        raise PedstreamError(f"{flag} {text!r}: use A:B (1-based, inclusive), A: or :B, e.g. 1:397") from None
    if not 1 <= start <= stop:
        raise PedstreamError(f"{flag} {text!r}: need 1 <= A <= B")
    if start > length:
        raise PedstreamError(f"{flag} {text!r}: the sequence has only {length} frames")
    return start, min(stop, length)


@dataclass(frozen=True)
class GroundTruth:
    """The boxes of one frame: ``xyxy`` (N, 4) in pixels, ``track_ids`` (N,), ``consider`` (N,) bool.

    A box whose ``consider`` is False is neither a miss nor a false positive when scoring.
    """

    xyxy: np.ndarray
    track_ids: np.ndarray
    consider: np.ndarray

    @classmethod
    def empty(cls) -> GroundTruth:
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.int64), np.empty(0, bool))


@dataclass
class MotSequence:
    """One sequence folder, e.g. ``PETS09-S2L1``: metadata, ground truth and its frames."""

    root: Path
    name: str
    frame_rate: float
    length: int
    width: int
    height: int
    image_dir: Path | None
    video: Path | None
    ground_truth: dict[int, GroundTruth] = field(repr=False)

    @classmethod
    def load(cls, root: str | Path) -> MotSequence:
        root = Path(root)
        info_path = root / "seqinfo.ini"
        if not info_path.is_file():
            raise SourceError(f"{root}: not a MOT sequence folder (no seqinfo.ini)")
        parser = configparser.ConfigParser()
        parser.read(info_path)
        if "Sequence" not in parser:
            raise SourceError(f"{info_path}: missing [Sequence] section")
        seq = parser["Sequence"]
        try:
            name = seq.get("name", root.name)
            frame_rate = float(seq["frameRate"])
            length = int(seq["seqLength"])
            width, height = int(seq["imWidth"]), int(seq["imHeight"])
        except (KeyError, ValueError) as exc:
            raise SourceError(f"{info_path}: bad or missing field {exc}") from None
        image_dir = root / seq.get("imDir", "img1")
        has_images = image_dir.is_dir() and any(image_dir.glob("*.jpg"))
        videos = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not has_images and not videos:
            raise SourceError(f"{root}: neither {image_dir.name}/*.jpg nor a video file found")
        gt_path = root / "gt" / "gt.txt"
        ground_truth = _read_gt(gt_path) if gt_path.is_file() else {}
        return cls(
            root=root,
            name=name,
            frame_rate=frame_rate,
            length=length,
            width=width,
            height=height,
            image_dir=image_dir if has_images else None,
            video=None if has_images else videos[0],
            ground_truth=ground_truth,
        )

    def gt(self, frame_number: int) -> GroundTruth:
        """Ground truth of one frame (1-based), empty when it has none."""
        return self.ground_truth.get(frame_number, GroundTruth.empty())

    @property
    def gt_box_count(self) -> int:
        return sum(len(g.xyxy) for g in self.ground_truth.values())

    def frames(self, start: int = 1, stop: int | None = None, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_number, bgr_image)`` for frames ``start..stop`` (1-based, inclusive), every ``every``-th."""
        stop = self.length if stop is None else min(stop, self.length)
        if start < 1 or every < 1:
            raise ValueError("start and every must be >= 1")
        return self.picked_frames(range(start, stop + 1, every))

    def picked_frames(self, numbers: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_number, bgr_image)`` for these frame numbers (1-based), in order, each once;
        numbers past the end are skipped."""
        wanted = sorted({n for n in numbers if n <= self.length})
        if wanted and wanted[0] < 1:
            raise ValueError("frame numbers start at 1")
        if self.image_dir is not None:
            for number in wanted:
                image = cv2.imread(str(self.image_dir / f"{number:06d}.jpg"))
                if image is None:
                    raise SourceError(f"{self.image_dir}: cannot read frame {number:06d}.jpg")
                yield number, image
            return
        if not wanted:
            return
        assert self.video is not None
        capture = cv2.VideoCapture(str(self.video))
        if not capture.isOpened():
            raise SourceError(f"{self.video}: cannot open video")
        try:
            wanted_set = set(wanted)
            for number in range(1, wanted[-1] + 1):
                if number not in wanted_set:
                    if not capture.grab():
                        break
                    continue
                ok, image = capture.read()
                if not ok:
                    break
                yield number, image
        finally:
            capture.release()


def _read_gt(path: Path) -> dict[int, GroundTruth]:
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    if rows.size and rows.shape[1] < 7:
        raise SourceError(f"{path}: expected at least 7 columns (frame,id,left,top,width,height,consider)")
    out: dict[int, GroundTruth] = {}
    for number in np.unique(rows[:, 0]).astype(int) if rows.size else []:
        sel = rows[rows[:, 0] == number]
        xyxy = np.stack([sel[:, 2], sel[:, 3], sel[:, 2] + sel[:, 4], sel[:, 3] + sel[:, 5]], axis=1).astype(np.float32)
        out[int(number)] = GroundTruth(xyxy=xyxy, track_ids=sel[:, 1].astype(np.int64), consider=sel[:, 6] != 0)
    return out
