"""Training data for the student: labelled frames (cached on disk), augmentation, and batches with targets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from detectors.boxes import clip_boxes
from trainer.labels import Labels
from trainer.targets import make_targets


@dataclass(frozen=True)
class Example:
    """One labelled frame: the image (BGR), its boxes in frame pixels with confidences, and provenance."""

    image: np.ndarray
    boxes: np.ndarray  # (N, 4)
    scores: np.ndarray  # (N,)
    source: str
    ref: str  # e.g. "PETS09-S2L1#17" or "pets-2/seq 40"


class LabelCache:
    """Labels kept on disk by frame reference and labeller, so teachers run once per frame."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, ref: str, source: str) -> Path:
        return self.folder / (hashlib.sha1(f"{source}|{ref}".encode()).hexdigest() + ".json")

    def get(self, ref: str, source: str) -> tuple[np.ndarray, np.ndarray] | None:
        path = self._path(ref, source)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return np.asarray(data["boxes"], np.float32).reshape(-1, 4), np.asarray(data["scores"], np.float32)

    def put(self, ref: str, source: str, boxes: np.ndarray, scores: np.ndarray) -> None:
        self._path(ref, source).write_text(json.dumps({"ref": ref, "source": source, "boxes": boxes.tolist(), "scores": scores.tolist()}))


def label_frames(
    frames: Iterable[tuple[str, np.ndarray]],
    labeler: Callable[[np.ndarray], Labels],
    source: str,
    cache: LabelCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Example]:
    """Label ``(ref, image)`` pairs with ``labeler``, reusing cached labels."""
    examples = []
    for i, (ref, image) in enumerate(frames):
        cached = cache.get(ref, source) if cache else None
        if cached is None:
            labels = labeler(image)
            boxes, scores = labels.boxes.xyxy, labels.boxes.scores
            if cache:
                cache.put(ref, source, boxes, scores)
        else:
            boxes, scores = cached
        examples.append(Example(image, boxes, scores, source, ref))
        if progress:
            progress(i + 1)
    return examples


def shrink(example: Example, max_width: int) -> Example:
    """The example with its image scaled down to at most ``max_width`` pixels wide (boxes follow)."""
    h, w = example.image.shape[:2]
    if w <= max_width:
        return example
    factor = max_width / w
    image = cv2.resize(example.image, (max_width, round(h * factor)), interpolation=cv2.INTER_AREA)
    return Example(image, example.boxes * factor, example.scores, example.source, example.ref)


@dataclass(frozen=True)
class Augment:
    """Random flip, scale/crop and photometric jitter (off for evaluation)."""

    flip: bool = True
    min_scale: float = 0.75
    brightness: float = 0.3
    contrast: float = 0.3
    enabled: bool = True


def prepare(example: Example, input_w: int, input_h: int, augment: Augment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(CHW float RGB/255 image at the input size, boxes in input pixels) with augmentation."""
    image, boxes = example.image, example.boxes.astype(np.float32)
    h, w = image.shape[:2]
    if augment.enabled and augment.min_scale < 1.0:
        scale = rng.uniform(augment.min_scale, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        boxes = clip_boxes(boxes - np.array([x0, y0, x0, y0], np.float32), cw, ch)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 4) & ((boxes[:, 3] - boxes[:, 1]) > 8)
        boxes = boxes[keep]
        h, w = ch, cw
    resized = cv2.resize(image, (input_w, input_h), interpolation=cv2.INTER_LINEAR)
    boxes = boxes * np.array([input_w / w, input_h / h, input_w / w, input_h / h], np.float32)
    if augment.enabled and augment.flip and rng.random() < 0.5:
        resized = resized[:, ::-1]
        boxes = np.stack([input_w - boxes[:, 2], boxes[:, 1], input_w - boxes[:, 0], boxes[:, 3]], axis=1) if len(boxes) else boxes
    rgb = cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    if augment.enabled:
        rgb = (rgb - 0.5) * (1 + rng.uniform(-augment.contrast, augment.contrast)) + 0.5
        rgb = np.clip(rgb + rng.uniform(-augment.brightness, augment.brightness) * 0.5, 0.0, 1.0)
    return rgb.transpose(2, 0, 1).copy(), boxes


def make_batch(
    examples: list[Example],
    input_w: int,
    input_h: int,
    augment: Augment,
    rng: np.random.Generator,
    min_score: float = 0.3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images (N, 3, H, W) and stacked targets for a list of examples (labels below ``min_score`` dropped)."""
    images, targets = [], []
    for ex in examples:
        confident = Example(ex.image, ex.boxes[ex.scores >= min_score], ex.scores[ex.scores >= min_score], ex.source, ex.ref)
        image, boxes = prepare(confident, input_w, input_h, augment, rng)
        images.append(image)
        targets.append(make_targets(boxes, input_w, input_h))
    stacked = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
    return torch.from_numpy(np.stack(images)), stacked
