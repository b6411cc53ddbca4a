"""ONNX Runtime backend (CPU), with its thread settings exposed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from detectors.backends.base import Backend, BackendError, TensorSpec
from detectors.backends.onnx_graph import without_spatial_pads

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}


def session_options(intra_threads: int = 0, inter_threads: int = 1, spinning: bool = False) -> ort.SessionOptions:
    """The settings pedstream serves with. ORT's worker threads otherwise spin between operators:
    faster alone on a core, but on an edge node they take the cores from decoding, the Kafka
    clients and the cameras beside them (``spinning=True`` is there to measure that trade)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


class OrtBackend(Backend):
    """ONNX Runtime on the CPU. ``intra_threads`` runs one operator on several cores; 0 lets ORT choose."""

    name = "ort"

    def __init__(
        self,
        model_bytes: bytes,
        intra_threads: int = 0,
        inter_threads: int = 1,
        spinning: bool = False,
        profile: bool = False,
        fold_pads: bool = True,
    ) -> None:
        super().__init__(model_bytes)
        options = session_options(intra_threads, inter_threads, spinning)
        options.enable_profiling = profile
        self.intra_threads = intra_threads
        self.spinning = spinning
        try:
            graph = without_spatial_pads(model_bytes) if fold_pads else model_bytes
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BackendError(f"ONNX Runtime cannot load the model: {exc}") from exc
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self._output_names, feeds))

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "intra_threads": self.intra_threads, "spinning": self.spinning, "onnxruntime": ort.__version__}


def _spec(node: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, shape, _ORT_TYPES.get(node.type, node.type))
