"""A detector: one ONNX model on one backend with its adapter, split into the stages the pipeline runs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.adapters.base import ImageMeta, ModelAdapter
from detectors.adapters.registry import detect_format, make_adapter
from detectors.backends.base import Backend, BackendError
from detectors.backends.onnx_graph import load_model
from detectors.backends.selection import choose_backend
from detectors.results import BoxArray

VERSION_METADATA_KEY = "pedstream_version"
TRAINED_ON_METADATA_KEY = "trained_on"  # JSON list of the training sources: name, labels (human/teacher), frames


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model: its bytes' sha256, format, version and ONNX metadata."""

    sha256: str
    format: str
    version: str
    metadata: dict[str, str]
    size_bytes: int


def onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    """The ONNX model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in load_model(model_bytes).metadata_props}


def with_metadata(model_bytes: bytes, **props: str) -> bytes:
    """The same model with these ``metadata_props`` set (added or replaced)."""
    proto = load_model(model_bytes)
    merged = {p.key: p.value for p in proto.metadata_props} | props
    del proto.metadata_props[:]
    for key, value in merged.items():
        proto.metadata_props.add(key=key, value=value)
    return bytes(proto.SerializeToString())


def with_version(model_bytes: bytes, version: str) -> bytes:
    """The same model under another ``pedstream_version`` (the registry names versions by it)."""
    return with_metadata(model_bytes, **{VERSION_METADATA_KEY: version})


def trained_on(model_bytes: bytes) -> list[dict[str, object]]:
    """What a model was trained on, as ``pedstream train`` recorded it (``[]`` when unknown)."""
    text = onnx_metadata(model_bytes).get(TRAINED_ON_METADATA_KEY)
    return list(json.loads(text)) if text else []


BUNDLED_MODELS = Path(__file__).parent / "models"
# `--model student`: the project's own student, shipped in the package as the edge serves it (int8,
# `pedstream quantize`); `--model student-float` is the same network before quantization. Both
# fine-tune from the same training weights.
BUNDLED_NAMES = {"student": "student.onnx", "student-float": "student-float.onnx"}
BUNDLED_WEIGHTS = "student.weights.npz"


def model_path(name_or_path: str | Path) -> Path:
    """A bundled model's name (``student``) or a file path -> the file."""
    if str(name_or_path) in BUNDLED_NAMES:
        return BUNDLED_MODELS / BUNDLED_NAMES[str(name_or_path)]
    return Path(name_or_path)


def weights_path(name_or_path: str | Path) -> Path | None:
    """The training weights kept beside a student model file (``NAME.weights.npz`` next to
    ``NAME.onnx``), which fine-tuning starts from; None when there are none."""
    path = model_path(name_or_path)
    weights = BUNDLED_MODELS / BUNDLED_WEIGHTS if str(name_or_path) in BUNDLED_NAMES else path.with_name(path.stem + ".weights.npz")
    return weights if weights.is_file() else None


def read_model(path: str | Path) -> bytes:
    """The bytes of a model file, or of a bundled model named ``student``."""
    path = model_path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BackendError(f"{path}: cannot read model ({exc.strerror})") from None


class Detector:
    """Frames in, person boxes out. ``preprocess``, ``infer`` and ``postprocess`` are the pipeline's stages."""

    def __init__(self, backend: Backend, adapter: ModelAdapter, info: ModelInfo) -> None:
        self.backend = backend
        self.adapter = adapter
        self.info = info
        self.backend_reason = "given"

    @property
    def version(self) -> str:
        return self.info.version

    @classmethod
    def from_bytes(
        cls,
        model_bytes: bytes,
        backend: Backend | str = "ort",
        fmt: str | None = None,
        version: str | None = None,
        name: str = "model",
        threads: int = 0,
    ) -> Detector:
        """A detector for ONNX ``model_bytes`` on ``backend`` (an instance, or ``ort``/``tvm``/``auto``)."""
        metadata = onnx_metadata(model_bytes)  # first: refuses what is not ONNX at all, with that reason
        reason = "given"
        if isinstance(backend, str):
            choice = choose_backend(backend, model_bytes, threads=threads)
            backend, reason = choice.backend, choice.reason
        fmt = fmt or detect_format(backend.inputs, backend.outputs, metadata)
        sha = hashlib.sha256(model_bytes).hexdigest()
        version = version or metadata.get(VERSION_METADATA_KEY) or f"{name}-{sha[:8]}"
        adapter = make_adapter(fmt, backend.inputs, backend.outputs)
        detector = cls(backend, adapter, ModelInfo(sha, fmt, version, metadata, len(model_bytes)))
        detector.backend_reason = reason
        return detector

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[ImageMeta]]:
        return self.adapter.preprocess(images)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the backend on a batch; models with a fixed batch of 1 run image by image."""
        fixed = self.backend.fixed_batch
        if fixed is None or fixed == len(batch):
            return self.backend.run({self.adapter.input_name: batch})
        if fixed != 1:
            raise BackendError(f"model wants batches of exactly {fixed}, got {len(batch)}")
        runs = [self.backend.run({self.adapter.input_name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate(parts, axis=0) for parts in zip(*runs, strict=False)]

    def postprocess(self, outputs: list[np.ndarray], metas: list[ImageMeta]) -> list[BoxArray]:
        return self.adapter.postprocess(outputs, metas)

    def detect(self, images: list[np.ndarray]) -> list[BoxArray]:
        if not images:
            return []
        batch, metas = self.preprocess(images)
        return self.postprocess(self.infer(batch), metas)
