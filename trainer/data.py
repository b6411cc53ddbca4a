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

from detectors.boxes import box_area, box_intersection, clip_boxes
from trainer.labels import Labels
from trainer.targets import COARSE_PREFIX, COARSE_STRIDE, make_targets


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
    """Random geometry and looks for training (off for evaluation). The defaults are student v0's
    (flip, crops down to 0.75, brightness and contrast); ``strong()`` is student v1's, made for
    cameras never seen: zoom in and out, no stretching, night, blur, noise and JPEG artefacts."""

    flip: bool = True
    min_scale: float = 0.75  # zoom in: crop down to this fraction of the frame
    max_zoom_out: float = 1.0  # zoom out: shrink the frame into a canvas up to this many times larger (1: never)
    keep_aspect: bool = False  # crops and canvases take the input's aspect ratio, so people are never stretched
    brightness: float = 0.3
    contrast: float = 0.3
    night: float = 0.0  # probability of a night look: dark (x0.15-0.45) with sensor noise
    blur: float = 0.0  # probability of a Gaussian blur
    noise: float = 0.0  # probability of sensor noise
    jpeg: float = 0.0  # probability of re-encoding at JPEG quality 20-60
    enabled: bool = True

    @classmethod
    def strong(cls) -> Augment:
        return cls(min_scale=0.5, max_zoom_out=2.5, keep_aspect=True, night=0.15, blur=0.2, noise=0.2, jpeg=0.2)


def _window(w: int, h: int, input_w: int, input_h: int, augment: Augment, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) of the part of the frame (or of a larger canvas around it) to show."""
    if augment.keep_aspect:
        aspect = input_w / input_h
        # log-uniform, so zooming in and out are about as likely
        scale = float(np.exp(rng.uniform(np.log(augment.min_scale), np.log(augment.max_zoom_out)))) if augment.enabled else 1.0
        if scale <= 1.0:
            cw = scale * min(w, h * aspect)
        else:
            cw = scale * max(w, h * aspect)
        ch = cw / aspect
    else:
        scale = rng.uniform(augment.min_scale, 1.0) if augment.enabled and augment.min_scale < 1.0 else 1.0
        cw, ch = w * scale, h * scale
    x0 = rng.uniform(min(0.0, w - cw), max(0.0, w - cw))
    y0 = rng.uniform(min(0.0, h - ch), max(0.0, h - ch))
    return x0, y0, cw, ch


def _looks(bgr: np.ndarray, augment: Augment, rng: np.random.Generator) -> np.ndarray:
    if augment.jpeg and rng.random() < augment.jpeg:
        decoded = cv2.imdecode(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 61))])[1], cv2.IMREAD_COLOR)
        bgr = bgr if decoded is None else decoded
    if augment.blur and rng.random() < augment.blur:
        bgr = cv2.GaussianBlur(bgr, (5, 5) if rng.random() < 0.5 else (3, 3), 0)
    out = bgr.astype(np.float32)
    if augment.night and rng.random() < augment.night:
        out = out * rng.uniform(0.15, 0.45) + rng.normal(0.0, rng.uniform(4.0, 12.0), out.shape).astype(np.float32)
    elif augment.noise and rng.random() < augment.noise:
        out = out + rng.normal(0.0, rng.uniform(2.0, 8.0), out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def prepare(example: Example, input_w: int, input_h: int, augment: Augment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(CHW float RGB/255 image at the input size, boxes in input pixels) with augmentation."""
    image, boxes, _scores = prepare_scored(example, input_w, input_h, augment, rng)
    return image, boxes


def prepare_scored(
    example: Example, input_w: int, input_h: int, augment: Augment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``prepare``, also giving the confidence of each box that is still in view."""
    image, boxes, scores = example.image, example.boxes.astype(np.float32), example.scores
    h, w = image.shape[:2]
    x0, y0, cw, ch = _window(w, h, input_w, input_h, augment, rng)
    # one affine map from the window to the input: crops and canvases (grey outside the frame) alike
    sx, sy = input_w / cw, input_h / ch
    matrix = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], np.float32)
    resized = cv2.warpAffine(image, matrix, (input_w, input_h), flags=cv2.INTER_LINEAR, borderValue=(114, 114, 114))
    boxes = (boxes - np.array([x0, y0, x0, y0], np.float32)) * np.array([sx, sy, sx, sy], np.float32)
    boxes = clip_boxes(boxes, input_w, input_h)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 2) & ((boxes[:, 3] - boxes[:, 1]) > 4)
    boxes, scores = boxes[keep], scores[keep]
    if augment.enabled and augment.flip and rng.random() < 0.5:
        resized = resized[:, ::-1]
        boxes = np.stack([input_w - boxes[:, 2], boxes[:, 1], input_w - boxes[:, 0], boxes[:, 3]], axis=1) if len(boxes) else boxes
    if augment.enabled:
        resized = _looks(np.ascontiguousarray(resized), augment, rng)
    rgb = cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    if augment.enabled:
        rgb = (rgb - 0.5) * (1 + rng.uniform(-augment.contrast, augment.contrast)) + 0.5
        rgb = np.clip(rgb + rng.uniform(-augment.brightness, augment.brightness) * 0.5, 0.0, 1.0)
    return rgb.transpose(2, 0, 1).copy(), boxes, scores


def unsure_regions(unsure: np.ndarray, people: np.ndarray, part_of: float = 0.7) -> np.ndarray:
    """The unsure boxes to leave out of training, less those that lie mostly (``part_of`` of their
    area) inside a person's box: a part of someone already labelled (a head, an upper body), whose
    area must stay background around that person's centre, or the heatmap learns double peaks."""
    if len(unsure) == 0 or len(people) == 0:
        return unsure
    inside = box_intersection(unsure, people) / np.maximum(box_area(unsure), 1e-6)[:, None]
    kept: np.ndarray = unsure[inside.max(axis=1) < part_of]
    return kept


def make_batch(
    examples: list[Example],
    input_w: int,
    input_h: int,
    augment: Augment,
    rng: np.random.Generator,
    min_score: float = 0.3,
    stride: int = 4,
    tall_from: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images (N, 3, H, W) and stacked targets for a list of examples. Labels from ``min_score`` up
    are people; the labeller's less confident boxes are ignored (neither people nor background).
    ``tall_from`` > 0: targets for a student with a coarse head too (``StudentConfig.tall_from``), under
    ``COARSE_PREFIX``: the people from ``tall_from`` input px tall (every person is in the targets at ``stride``)."""
    images, targets = [], []
    for ex in examples:
        image, boxes, scores = prepare_scored(ex, input_w, input_h, augment, rng)
        confident = scores >= min_score
        images.append(image)
        ignored = unsure_regions(boxes[~confident], boxes[confident])
        people = boxes[confident]
        target = make_targets(people, input_w, input_h, stride, ignored=ignored)
        if tall_from:
            tall = people[(people[:, 3] - people[:, 1]) >= tall_from]
            coarse = make_targets(tall, input_w, input_h, COARSE_STRIDE, ignored=ignored)
            target |= {COARSE_PREFIX + key: value for key, value in coarse.items()}
        targets.append(target)
    stacked = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
    return torch.from_numpy(np.stack(images)), stacked
