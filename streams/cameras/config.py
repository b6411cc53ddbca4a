"""The cameras configuration (``cameras.yaml``): typed, strict, and explicit about which field is wrong.

See ``docs/cameras.md`` for the reference. Sources may use ``${VAR}`` or ``${VAR:-default}``;
relative paths are taken from the configuration file's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.cameras.sources import probe_duration_s
from streams.errors import ConfigError
from streams.records import AlertKind, CameraId

__all__ = [
    "AlertRule",
    "CameraOptions",
    "DetectSettings",
    "Look",
    "Tiling",
    "RetryPolicy",
    "CameraConfig",
    "VirtualCameras",
    "CamerasFile",
    "load_cameras",
    "DEFAULT_VARIANTS",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Look(_Strict):
    """How a virtual camera changes the source picture (applied in this order)."""

    crop: tuple[float, float, float, float] | None = Field(None, description="x, y, width, height as fractions (0-1) of the source frame")
    flip: bool = Field(False, description="mirror left-right")
    brightness: float = Field(1.0, gt=0, le=4, description="multiply pixel values (0.3 looks like night)")
    blur: int = Field(0, ge=0, le=51, description="Gaussian blur kernel size in pixels (odd; 0 = off)")
    noise: float = Field(0.0, ge=0, le=100, description="Gaussian noise standard deviation in grey levels")

    @field_validator("crop")
    @classmethod
    def _crop_inside(cls, crop: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if crop is None:
            return None
        x, y, w, h = crop
        if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1 and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9):
            raise ValueError("crop must be fractions x, y, w, h with the box inside the frame")
        return crop

    @field_validator("blur")
    @classmethod
    def _odd_kernel(cls, blur: int) -> int:
        if blur and blur % 2 == 0:
            raise ValueError("blur kernel size must be odd (or 0 for none)")
        return blur

    @property
    def is_identity(self) -> bool:
        return self == Look()


class AlertRule(_Strict):
    """One alert rule of a camera: enough people (in a zone), or someone staying too long in it."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    zone: list[tuple[float, float]] | None = Field(
        None, description="polygon in frame pixels of the published frame; none = the whole frame"
    )
    count_at_least: Annotated[int, Field(ge=1)] | None = Field(None, description="fire when this many people are in the zone")
    dwell_at_least_s: Annotated[float, Field(gt=0)] | None = Field(None, description="fire when a person stays this long in the zone")
    cooldown_s: float = Field(30.0, ge=0, description="quiet time after the rule fired")
    min_score: float = Field(0.5, gt=0, le=1, description="detections below this score do not count")

    @field_validator("zone")
    @classmethod
    def _polygon(cls, zone: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if zone is not None and len(zone) < 3:
            raise ValueError("a zone needs at least 3 points")
        return zone

    @model_validator(mode="after")
    def _one_condition(self) -> AlertRule:
        if (self.count_at_least is None) == (self.dwell_at_least_s is None):
            raise ValueError("give exactly one of count_at_least or dwell_at_least_s")
        return self

    @property
    def kind(self) -> AlertKind:
        return "count" if self.count_at_least is not None else "dwell"


class Tiling(_Strict):
    """Split each frame into overlapping tiles for a small-input model; results merge with NMS."""

    rows: int = Field(2, ge=1, le=8)
    cols: int = Field(2, ge=1, le=8)
    overlap: int = Field(96, ge=0, description="pixels shared by neighbouring tiles: at least the tallest person expected")
    include_full_frame: bool = Field(False, description="also run the whole frame, to keep people larger than a tile")
    fan_out: bool = Field(False, description="send tiles as tile records to every detector agent of the group instead of running them here")


class DetectSettings(_Strict):
    """How detector agents treat this camera."""

    alerts: list[AlertRule] = Field(default_factory=list)
    tiling: Tiling | None = None
    hard_examples_per_minute: float = Field(6.0, ge=0, description="budget of hard examples mined from this camera")
    deadline_ms: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="a frame older than this (since capture) when the agent reaches it is shed, not inferred; "
        "default: two of the camera's frame periods (frames published as fast as possible have none)",
    )
    shed_stale: bool = Field(True, description="false: infer every frame however late (latency then grows without bound)")

    def deadline_s(self, period_ms: float | None) -> float | None:
        """Seconds after capture a frame of this camera stays worth inferring; None: no deadline."""
        if not self.shed_stale:
            return None
        if self.deadline_ms is not None:
            return self.deadline_ms / 1000.0
        return 2.0 * period_ms / 1000.0 if period_ms is not None else None


class RetryPolicy(_Strict):
    """Backoff for a camera whose source fails: initial_s, doubled each attempt up to max_s."""

    initial_s: float = Field(1.0, gt=0, le=600)
    max_s: float = Field(30.0, gt=0, le=3600)


class CameraOptions(_Strict):
    """Options a camera may set and ``defaults`` may give to every camera."""

    fps: Annotated[float, Field(ge=0, le=240)] | None = Field(
        None, description="Publish at most this many frames per second (0: no cap); extra frames are dropped, never queued"
    )
    max_width: Annotated[int, Field(ge=16, le=7680)] | None = Field(None, description="Downscale wider frames")
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] | None = None
    loop: bool | None = Field(None, description="Video files and image folders: start again at the end")
    realtime: bool | None = Field(
        None, description="Video files and image folders: play at the source's frame rate (false: as fast as possible)"
    )
    source_fps: Annotated[float, Field(gt=0, le=240)] | None = Field(
        None, description="Override the frame rate a file reports (vtest.avi claims 10, is 7)"
    )
    retry: RetryPolicy | None = None


_BUILTIN_DEFAULTS: dict[str, Any] = {
    "fps": 5.0,
    "max_width": 1280,
    "jpeg_quality": 80,
    "loop": True,
    "realtime": True,
    "source_fps": None,
    "retry": RetryPolicy(),
}


class CameraConfig(CameraOptions):
    """One camera, fully resolved (every option has a value, the source is absolute)."""

    id: CameraId
    source: str | int = Field(description="video file, rtsp/http(s) URL, USB index, or MOT-style/JPEG folder")
    start_s: float = Field(0.0, ge=0, description="Start this many seconds into a file source")
    start_frame: int = Field(0, ge=0, description="Start at this frame of a file source (added to start_s)")
    max_frames: Annotated[int, Field(gt=0)] | None = Field(None, description="Stop after publishing this many frames")
    look: Look = Look()
    detect: DetectSettings = DetectSettings()

    def option(self, name: str) -> Any:
        value = getattr(self, name)
        return _BUILTIN_DEFAULTS[name] if value is None else value


class VirtualCameras(CameraOptions):
    """Derive ``count`` cameras from one source, each with its own start offset and look."""

    id_prefix: CameraId
    source: str | int
    count: int = Field(ge=1, le=256)
    spread: bool = Field(True, description="Spread start offsets evenly over the source's length")
    looks: list[Look] = Field(default_factory=list, description="Looks given to the cameras in turn")
    detect: DetectSettings = DetectSettings()


DEFAULT_VARIANTS: tuple[Look, ...] = (
    Look(),
    Look(flip=True),
    Look(brightness=0.35, noise=8.0),
    Look(blur=5),
    Look(crop=(0.0, 0.0, 0.6, 1.0)),
    Look(noise=12.0),
    Look(flip=True, brightness=1.3),
    Look(crop=(0.4, 0.0, 0.6, 1.0), blur=3),
)
"""Looks used by ``--virtual N`` and the benchmarks when none are given."""


class CamerasFile(_Strict):
    """The whole file: defaults, explicit cameras and virtual camera groups."""

    defaults: CameraOptions = CameraOptions()
    cameras: list[CameraConfig] = Field(default_factory=list)
    virtual: list[VirtualCameras] = Field(default_factory=list)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_source(source: str | int, base_dir: Path | None, where: str) -> str | int:
    """Expand ``${VAR}`` / ``${VAR:-default}`` and make relative file paths absolute."""
    if isinstance(source, int):
        return source

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{where}.source: environment variable {name} is not set and has no default")
            return default
        return value

    text = _VAR.sub(substitute, source)
    if "://" in text or text.isdigit():
        return int(text) if text.isdigit() else text
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def _merge(defaults: CameraOptions, entry: BaseModel) -> dict[str, Any]:
    merged = entry.model_dump(exclude_none=True)
    for name, value in defaults.model_dump(exclude_none=True).items():
        merged.setdefault(name, value)
    return merged


def expand_virtual(group: VirtualCameras, defaults: CameraOptions, base_dir: Path | None, where: str) -> list[CameraConfig]:
    """The cameras of one virtual group, with offsets spread over the source's length."""
    source = expand_source(group.source, base_dir, where)
    looks = group.looks or list(DEFAULT_VARIANTS)
    duration = probe_duration_s(source) if group.spread else None
    options = _merge(defaults, group)
    for key in ("id_prefix", "count", "spread", "looks", "source"):
        options.pop(key, None)
    cameras = []
    for i in range(group.count):
        start_s = (duration * i / group.count) if duration else 0.0
        cameras.append(
            CameraConfig(id=f"{group.id_prefix}-{i}", source=source, start_s=round(start_s, 3), look=looks[i % len(looks)], **options)
        )
    return cameras


def resolve_cameras(spec: CamerasFile, base_dir: Path | None) -> list[CameraConfig]:
    """Every camera of a file, defaults applied, virtual groups expanded; ids must be unique."""
    cameras: list[CameraConfig] = []
    for i, cam in enumerate(spec.cameras):
        merged = _merge(spec.defaults, cam)
        merged["source"] = expand_source(cam.source, base_dir, f"cameras[{i}]")
        cameras.append(CameraConfig(**merged))
    for i, group in enumerate(spec.virtual):
        cameras.extend(expand_virtual(group, spec.defaults, base_dir, f"virtual[{i}]"))
    seen: set[str] = set()
    for cam in cameras:
        if cam.id in seen:
            raise ConfigError(f"camera id {cam.id!r} is used twice; ids must be unique")
        seen.add(cam.id)
    if not cameras:
        raise ConfigError("no cameras: give at least one under 'cameras' or 'virtual'")
    return cameras


def parse_cameras(data: Any, base_dir: Path | None = None, origin: str = "config") -> list[CameraConfig]:
    """Validate already-parsed YAML/JSON data; errors name the field (``cameras[2].fps: ...``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'cameras' and/or 'virtual', got {type(data).__name__}")
    try:
        spec = CamerasFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: " + "; ".join(_field_error(e) for e in exc.errors(include_url=False))) from None
    return resolve_cameras(spec, base_dir)


def load_cameras(path: str | Path) -> list[CameraConfig]:
    """Read and validate a cameras.yaml file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_cameras(data, base_dir=path.resolve().parent, origin=str(path))


def _field_error(err: Any) -> str:
    parts: list[str] = []
    for p in err["loc"]:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    location = ".".join(parts) or "(file)"
    return f"{location}: {err['msg']}"
