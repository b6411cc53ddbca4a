"""The backend interface every inference runtime implements, and the description of a model's tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from streams.errors import PedstreamError


class BackendError(PedstreamError):
    """A backend could not load or run a model; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a symbolic dimension) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class Backend(ABC):
    """Runs one ONNX model; ``run`` takes and returns numpy arrays. Subclasses fill ``inputs`` and
    ``outputs`` (the model's tensors as this backend sees them) while loading."""

    name: str = "backend"

    def __init__(self, model_bytes: bytes) -> None:
        self.model_bytes = model_bytes
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the order of ``outputs``."""

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's first input insists on, or None when it is symbolic."""
        first = self.inputs[0].shape
        return first[0] if first and isinstance(first[0], int) else None

    def describe(self) -> dict[str, object]:
        return {"backend": self.name}
