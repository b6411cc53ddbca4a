"""Frame sources for camera agents: video files, network streams, USB devices and image folders.

Every source raises SourceError with a plain reason when it cannot open or stops delivering, so
the camera agent can report it and retry with backoff.
"""

from __future__ import annotations

import configparser
import os
from abc import ABC, abstractmethod
from pathlib import Path

# FFmpeg (inside OpenCV) writes its decoder complaints straight to stderr ("error while decoding
# block..."), many per damaged file; keep only fatal ones. A source that ends early says so itself
# (``end_note``). Read when the first capture opens; set OPENCV_FFMPEG_LOGLEVEL yourself to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

import cv2  # noqa: E402 - after the FFmpeg log level
import numpy as np

from streams.errors import SourceError
from streams.mot import VIDEO_SUFFIXES, MotSequence

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000


class FrameSource(ABC):
    """Yields ``(source_frame_index, bgr_image)``; ``read`` returns None at the end of a finite source."""

    live: bool = False
    native_fps: float | None = None
    end_note: str | None = None  # set when the source ended early in a way a user should hear of (a truncated file)

    def __init__(self, description: str) -> None:
        self.description = description

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> tuple[int, np.ndarray] | None: ...

    def skip(self, count: int) -> None:
        """Drop ``count`` frames without decoding them fully (used to catch up, never to queue)."""
        for _ in range(count):
            if self.read() is None:
                return

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class CaptureSource(FrameSource):
    """A source read by OpenCV's VideoCapture (FFmpeg): a file, a URL or a device index."""

    def __init__(self, target: str | int, live: bool, loop: bool, start_frame: int = 0, fps_override: float | None = None) -> None:
        super().__init__(f"usb:{target}" if isinstance(target, int) else str(target))
        self.target = target
        self.live = live
        self.loop = loop and not live
        self.start_frame = start_frame
        self.fps_override = fps_override
        self._capture: cv2.VideoCapture | None = None
        self._index = 0
        self._decoded_since_open = 0
        self._declared_frames = 0  # what the file's container says it holds (0: unknown, or a stream)

    def open(self) -> None:
        if isinstance(self.target, str) and not self.live and not Path(self.target).is_file():
            raise SourceError(f"{self.target}: no such file")
        self._open_capture()
        fps = self._capture.get(cv2.CAP_PROP_FPS) if self._capture is not None else 0.0
        self.native_fps = self.fps_override or (fps if 0 < fps < 1000 else None)
        if not self.live and self._capture is not None:
            self._declared_frames = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        if not self.live and self.start_frame:
            skipped = 0
            while skipped < self.start_frame and self._capture is not None and self._capture.grab():
                skipped += 1
            self._index = skipped

    def _open_capture(self) -> None:
        self.close()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        if isinstance(self.target, int):
            capture = cv2.VideoCapture(self.target)
        else:
            capture = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description}: cannot open (unreachable, not a video, or unsupported codec)")
        self._capture = capture
        self._index = 0
        self._decoded_since_open = 0

    def read(self) -> tuple[int, np.ndarray] | None:
        if self._capture is None:
            raise SourceError(f"{self.description}: read before open")
        ok, image = self._capture.read()
        if ok and image is not None:
            index = self._index
            self._index += 1
            self._decoded_since_open += 1
            return index, image
        if self.live:
            raise SourceError(f"{self.description}: stream stopped delivering frames")
        if self._decoded_since_open == 0:
            raise SourceError(f"{self.description}: opened but no frame could be decoded (corrupt or empty file)")
        if self._declared_frames and self._index < self._declared_frames - max(2, self._declared_frames // 50):
            self.end_note = (
                f"{self.description} ended at frame {self._index} of the {self._declared_frames} its container declares: "
                "the file looks truncated or damaged"
            )
        if not self.loop:
            return None
        self._open_capture()  # loop: rewind by reopening (seeking is unreliable for some codecs)
        return self.read()

    def skip(self, count: int) -> None:
        for _ in range(count):
            if self._capture is None or not self._capture.grab():
                return
            self._index += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class ImageFolderSource(FrameSource):
    """A folder of JPEG/PNG frames read in name order (a MOT ``img1`` folder, or any such folder)."""

    def __init__(self, folder: Path, loop: bool, start_frame: int = 0, fps: float | None = None) -> None:
        super().__init__(str(folder))
        self.folder = folder
        self.loop = loop
        self.start_frame = start_frame
        self.native_fps = fps
        self._files: list[Path] = []
        self._pos = 0

    def open(self) -> None:
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not self._files:
            raise SourceError(f"{self.folder}: no .jpg/.png frames")
        self._pos = self.start_frame % len(self._files)

    def read(self) -> tuple[int, np.ndarray] | None:
        if self._pos >= len(self._files):
            if not self.loop:
                return None
            self._pos = 0
        path = self._files[self._pos]
        image = cv2.imread(str(path))
        if image is None:
            raise SourceError(f"{path}: cannot decode image")
        index = self._pos
        self._pos += 1
        return index, image

    def skip(self, count: int) -> None:
        self._pos += count
        if self.loop and self._files:
            self._pos %= len(self._files)


def seqinfo_fps(video: Path) -> float | None:
    """The frame rate in a ``seqinfo.ini`` beside a video, which beats the container's header."""
    info = video.parent / "seqinfo.ini"
    if not info.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(info)
        return float(parser["Sequence"]["frameRate"])
    except (KeyError, ValueError, configparser.Error):
        return None


def missing_file(source: str | int) -> str | None:
    """Why a file or folder source cannot be read at all (None: it exists, or it is a URL or a
    device index, which may come up later)."""
    if isinstance(source, int) or "://" in source or Path(source).exists():
        return None
    return f"source {source}: no such file or folder"


def build_source(
    source: str | int, loop: bool, start_s: float = 0.0, start_frame: int = 0, fps_override: float | None = None
) -> FrameSource:
    """Pick the source class from what ``source`` is: index, URL, folder or file."""
    if isinstance(source, int):
        return CaptureSource(source, live=True, loop=False)
    if source.startswith(STREAM_SCHEMES):
        return CaptureSource(source, live=True, loop=False)
    path = Path(source)
    if path.is_dir():
        if (path / "seqinfo.ini").is_file():
            seq = MotSequence.load(path)
            fps = fps_override or seq.frame_rate
            first = start_frame + int(round(start_s * fps))
            if seq.image_dir is not None:
                return ImageFolderSource(seq.image_dir, loop, first, fps)
            assert seq.video is not None
            return CaptureSource(str(seq.video), live=False, loop=loop, start_frame=first, fps_override=fps)
        return ImageFolderSource(path, loop, start_frame, fps_override)
    container_fps = fps_override or seqinfo_fps(path) or _container_fps(path)
    first = start_frame + int(round(start_s * (container_fps or 0)))
    return CaptureSource(source, live=False, loop=loop, start_frame=first, fps_override=container_fps)


def _container_property(path: Path, prop: int) -> float:
    """One property (frame rate, frame count) from a video file's container; 0 when unreadable."""
    if not path.is_file():
        return 0.0
    capture = cv2.VideoCapture(str(path))
    try:
        return float(capture.get(prop)) if capture.isOpened() else 0.0
    finally:
        capture.release()


def _container_fps(path: Path) -> float | None:
    fps = _container_property(path, cv2.CAP_PROP_FPS)
    return fps if 0 < fps < 1000 else None


def probe_duration_s(source: str | int) -> float | None:
    """Length in seconds of a file source, folder or MOT sequence; None for live sources or unknown."""
    if isinstance(source, int) or source.startswith(STREAM_SCHEMES):
        return None
    path = Path(source)
    if path.is_dir() and (path / "seqinfo.ini").is_file():
        seq = MotSequence.load(path)
        return seq.length / seq.frame_rate
    if not path.is_file() or path.suffix.lower() not in VIDEO_SUFFIXES:
        return None
    frames = _container_property(path, cv2.CAP_PROP_FRAME_COUNT)
    fps = seqinfo_fps(path) or _container_fps(path)
    return frames / fps if frames > 0 and fps else None
