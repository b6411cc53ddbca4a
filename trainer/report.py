"""What a training job leaves behind: the ONNX model, its weights, a metrics JSON and a PNG of the
loss and held-out AP curves (drawn with OpenCV, no plotting library needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from trainer.job import JobResult

WIDTH, HEIGHT, MARGIN = 900, 360, 50


def _panel(
    points: Sequence[tuple[float, float]], title: str, colour: tuple[int, int, int], y_range: tuple[float, float] | None
) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH // 2, 3), 255, np.uint8)
    w, h = image.shape[1] - 2 * MARGIN, HEIGHT - 2 * MARGIN
    cv2.putText(image, title, (MARGIN, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (MARGIN, MARGIN), (MARGIN + w, MARGIN + h), (160, 160, 160), 1)
    if not points:
        cv2.putText(image, "no data", (MARGIN + 10, MARGIN + h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        return image
    xs = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)
    x0, x1 = 0.0, max(float(xs.max()), 1.0)
    y0, y1 = y_range or (float(ys.min()), float(ys.max()))
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    px = MARGIN + (xs - x0) / (x1 - x0) * w
    py = MARGIN + h - (ys - y0) / (y1 - y0) * h
    cv2.polylines(image, [np.stack([px, py], 1).astype(np.int32)], False, colour, 2, cv2.LINE_AA)
    for value, y in ((y1, MARGIN), (y0, MARGIN + h)):
        cv2.putText(image, f"{value:.3g}", (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f"update {x1:.0f}", (MARGIN + w - 80, MARGIN + h + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    if len(points) < 30:
        for x, y in zip(px, py, strict=False):
            cv2.circle(image, (int(x), int(y)), 3, colour, -1, cv2.LINE_AA)
    return image


def curves_png(result: JobResult) -> bytes:
    loss = [(u, value) for u, _t, value in result.loss_curve]
    ap = [(u, a) for u, _t, a in result.ap_curve]
    mode = result.settings.get("mode")
    image = np.hstack(
        [_panel(loss, f"training loss (smoothed), {mode}", (200, 80, 0), None), _panel(ap, "held-out AP50", (0, 140, 0), (0.0, 1.0))]
    )
    ok, png = cv2.imencode(".png", image)
    assert ok
    return png.tobytes()


def write_outputs(result: JobResult, out_dir: Path, model_name: str = "student.onnx") -> dict[str, str]:
    """Write model, weights, metrics and curves into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": out_dir / model_name,
        "weights": out_dir / "weights.npz",
        "metrics": out_dir / "metrics.json",
        "curves": out_dir / "curves.png",
    }
    if result.model_onnx:
        paths["model"].write_bytes(result.model_onnx)
    else:
        paths.pop("model")
    np.savez_compressed(paths["weights"], **result.weights)  # type: ignore[arg-type]  # numpy's stub types **kwds wrongly
    paths["metrics"].write_text(json.dumps(result.metrics(), indent=2))
    paths["curves"].write_bytes(curves_png(result))
    return {k: str(v) for k, v in paths.items()}


def read_weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
