"""Which adapter reads a model: named explicitly (``--format``) or recognised from its ONNX signature."""

from __future__ import annotations

from detectors.adapters.base import ModelAdapter
from detectors.adapters.centernet import CenterNetAdapter
from detectors.adapters.nanodet import NanoDetAdapter
from detectors.adapters.ssd import TfSsdAdapter
from detectors.adapters.student import StudentAdapter
from detectors.adapters.yolo import YoloV8Adapter
from detectors.backends.base import BackendError, TensorSpec

FORMAT_METADATA_KEY = "pedstream_format"
"""ONNX metadata key naming a model's format; pedstream's own exports set it."""

ADAPTERS: dict[str, type[ModelAdapter]] = {
    TfSsdAdapter.format: TfSsdAdapter,
    NanoDetAdapter.format: NanoDetAdapter,
    CenterNetAdapter.format: CenterNetAdapter,
    YoloV8Adapter.format: YoloV8Adapter,
    StudentAdapter.format: StudentAdapter,
}


def register(adapter: type[ModelAdapter]) -> None:
    """Make another model family known (the project's student registers itself this way)."""
    ADAPTERS[adapter.format] = adapter


def detect_format(inputs: list[TensorSpec], outputs: list[TensorSpec], metadata: dict[str, str]) -> str:
    """The format named in the model's metadata, else the one family whose signature matches."""
    named = metadata.get(FORMAT_METADATA_KEY)
    if named:
        if named not in ADAPTERS:
            raise BackendError(f"model says its format is {named!r}, which this build does not know ({', '.join(ADAPTERS)})")
        return named
    found = [fmt for fmt, adapter in ADAPTERS.items() if adapter.matches(inputs, outputs, metadata)]
    if len(found) != 1:
        what = "no known family" if not found else f"several families ({', '.join(found)})"
        raise BackendError(f"cannot tell the model's format from its signature: it matches {what}; pass --format")
    return found[0]


def make_adapter(fmt: str, inputs: list[TensorSpec], outputs: list[TensorSpec], input_size: tuple[int, int] | None = None) -> ModelAdapter:
    try:
        return ADAPTERS[fmt](inputs, outputs, input_size)
    except KeyError:
        raise BackendError(f"unknown format {fmt!r}; known: {', '.join(ADAPTERS)}") from None
