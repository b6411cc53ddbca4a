"""Labelled image datasets users bring: YOLO-format folders and COCO JSON, read as person boxes.

* YOLO: a folder with ``data.yaml`` (``names``: the class names, a list or an index -> name map),
  images under ``images/`` and one ``labels/.../NAME.txt`` per image mirroring its path, each line
  ``class cx cy w h`` normalised to the image size. An image without a label file has no boxes.
* COCO: an instances JSON (``images``, ``annotations`` with ``bbox`` = [x, y, w, h] in pixels,
  ``categories``), images in the folder beside it or ``--images``. ``iscrowd`` regions are kept
  apart as ignored regions, not as people.

Only the class named ``person`` is read. A malformed line or entry is refused with the file and
line (or entry) that holds it. Images are read when an example is made, not when the dataset is
listed, so a large dataset costs memory only for what is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from streams.errors import PedstreamError
from trainer.data import Example

PERSON = "person"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HUMAN_SOURCE = "human"


@dataclass(frozen=True)
class LabelledImage:
    """One image of a dataset with its person boxes (xyxy, pixels) and ignored regions."""

    path: Path
    boxes: np.ndarray  # (N, 4), pixels; or 0-1 of the image size when ``normalised``
    ignored: np.ndarray = field(default_factory=lambda: np.empty((0, 4), np.float32))  # (M, 4) crowd regions
    normalised: bool = False

    def example(self, dataset: str) -> Example:
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise PedstreamError(f"{self.path}: cannot read the image")
        boxes = self.boxes.astype(np.float32)
        if self.normalised:
            h, w = image.shape[:2]
            boxes = boxes * np.array([w, h, w, h], np.float32)
        scores = np.ones(len(boxes), np.float32)
        return Example(image, boxes, scores, f"{HUMAN_SOURCE}: {dataset}", f"{dataset}/{self.path.name}")


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "yolo" or "coco"
    images: list[LabelledImage]

    @property
    def boxes(self) -> int:
        return int(sum(len(i.boxes) for i in self.images))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.kind, "labels": HUMAN_SOURCE, "images": len(self.images), "boxes": self.boxes}


def load_dataset(path: str | Path, images_dir: str | Path | None = None) -> Dataset:
    """A YOLO folder (has ``data.yaml``) or a COCO JSON file (or a folder with ``annotations/*.json``)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "data.yaml").is_file():
        return load_yolo(path)
    if path.is_file() and path.suffix == ".json":
        return load_coco(path, Path(images_dir) if images_dir else None)
    if path.is_dir():
        found = sorted((path / "annotations").glob("*.json")) if (path / "annotations").is_dir() else []
        if len(found) == 1:
            return load_coco(found[0], Path(images_dir) if images_dir else path / "images")
    raise PedstreamError(f"{path}: not a dataset (a YOLO folder with data.yaml, or a COCO instances .json)")


def _person_class_yolo(data_yaml: Path) -> int:
    try:
        spec = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as exc:
        raise PedstreamError(f"{data_yaml}: not valid YAML ({exc})") from None
    names = spec.get("names") if isinstance(spec, dict) else None
    if isinstance(names, list):
        table = dict(enumerate(names))
    elif isinstance(names, dict):
        table = {int(k): v for k, v in names.items()}
    else:
        raise PedstreamError(f"{data_yaml}: 'names' must list the class names")
    persons = [index for index, name in table.items() if str(name).lower() == PERSON]
    if not persons:
        raise PedstreamError(f"{data_yaml}: no class named {PERSON!r} in names {list(table.values())}")
    return persons[0]


def _yolo_boxes(label_file: Path, person: int) -> np.ndarray:
    """The person boxes of one YOLO label file as normalised xyxy."""
    boxes = []
    for lineno, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{label_file}:{lineno}"
        if len(parts) != 5:
            raise PedstreamError(f"{where}: expected 'class cx cy w h', got {len(parts)} values: {line.strip()!r}")
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise PedstreamError(f"{where}: not numbers: {line.strip()!r}") from None
        if not all(-0.01 <= v <= 1.01 for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise PedstreamError(f"{where}: values must be normalised to 0-1 with w, h > 0: {line.strip()!r}")
        if cls != person:
            continue
        boxes.append([max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(1.0, cx + w / 2), min(1.0, cy + h / 2)])
    return np.array(boxes, np.float32).reshape(-1, 4)


def load_yolo(root: Path) -> Dataset:
    person = _person_class_yolo(root / "data.yaml")
    image_root = root / "images"
    if not image_root.is_dir():
        raise PedstreamError(f"{root}: no images/ folder")
    images = []
    for image_path in sorted(p for p in image_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label_file = (root / "labels" / image_path.relative_to(image_root)).with_suffix(".txt")
        boxes = _yolo_boxes(label_file, person) if label_file.is_file() else np.empty((0, 4), np.float32)
        images.append(LabelledImage(image_path, boxes, normalised=True))
    if not images:
        raise PedstreamError(f"{image_root}: no images")
    return Dataset(root.name, "yolo", images)


def load_coco(json_path: Path, images_dir: Path | None = None) -> Dataset:
    try:
        spec = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PedstreamError(f"{json_path}: not a readable COCO JSON file ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(spec.get(key), list):
            raise PedstreamError(f"{json_path}: missing the {key!r} list of a COCO instances file")
    persons = {c.get("id") for c in spec["categories"] if str(c.get("name", "")).lower() == PERSON}
    if not persons:
        raise PedstreamError(f"{json_path}: no category named {PERSON!r}")
    folder = images_dir or json_path.parent
    by_id: dict[Any, tuple[Path, list[list[float]], list[list[float]]]] = {}
    for index, entry in enumerate(spec["images"]):
        if "id" not in entry or "file_name" not in entry:
            raise PedstreamError(f"{json_path}: images[{index}] needs 'id' and 'file_name'")
        by_id[entry["id"]] = (folder / entry["file_name"], [], [])
    for index, ann in enumerate(spec["annotations"]):
        where = f"{json_path}: annotations[{index}]"
        if ann.get("category_id") not in persons:
            continue
        if ann.get("image_id") not in by_id:
            raise PedstreamError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        bbox = ann.get("bbox")
        if (
            not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox))
            or bbox[2] <= 0
            or bbox[3] <= 0
        ):
            raise PedstreamError(f"{where}: bbox must be [x, y, width, height] with width, height > 0, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        _, boxes, crowds = by_id[ann["image_id"]]
        (crowds if ann.get("iscrowd") else boxes).append([x, y, x + w, y + h])
    images = [
        LabelledImage(path, np.array(boxes, np.float32).reshape(-1, 4), np.array(crowds, np.float32).reshape(-1, 4))
        for path, boxes, crowds in by_id.values()
    ]
    missing = [str(i.path) for i in images if not i.path.is_file()]
    if missing:
        raise PedstreamError(f"{json_path}: {len(missing)} image(s) not found, e.g. {missing[0]} (give the images folder)")
    return Dataset(json_path.stem, "coco", images)
