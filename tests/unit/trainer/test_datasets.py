"""YOLO and COCO dataset loaders against hand-made files: boxes in pixels, only persons, crowds
ignored, and every malformed input refused naming its file and line or entry."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from streams.errors import PedstreamError
from trainer.datasets import load_dataset


def _image(path: Path, width: int = 200, height: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))


def _yolo(root: Path, names: object, labels: dict[str, str]) -> Path:
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(json.dumps({"names": names}))
    for stem, text in labels.items():
        _image(root / "images" / "train" / f"{stem}.jpg")
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    return root


def test_yolo_folder_gives_person_boxes_in_pixels(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "ds", ["car", "person"], {"a": "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.1 0.1\n\n", "b": ""})
    _image(root / "images" / "train" / "c.jpg")  # no label file: a background image
    data = load_dataset(root)
    assert data.kind == "yolo" and len(data.images) == 3 and data.boxes == 1
    example = data.images[0].example(data.name)
    np.testing.assert_allclose(example.boxes, [[80.0, 30.0, 120.0, 70.0]], atol=1e-4)  # cx 100, cy 50, w 40, h 40
    assert example.source == "human: ds" and example.scores.tolist() == [1.0]
    assert data.describe() == {"name": "ds", "format": "yolo", "labels": "human", "images": 3, "boxes": 1}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "expected 'class cx cy w h', got 4 values"),
        ("0 0.5 half 0.2 0.2", "not numbers"),
        ("0 0.5 0.5 1.7 0.2", "normalised to 0-1"),
        ("0 0.5 0.5 0.0 0.2", "w, h > 0"),
    ],
)
def test_a_malformed_yolo_line_names_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    root = _yolo(tmp_path / "ds", ["person"], {"a": "0 0.5 0.5 0.2 0.2\n" + line + "\n"})
    with pytest.raises(PedstreamError, match=message) as caught:
        load_dataset(root)
    assert f"{root / 'labels' / 'train' / 'a.txt'}:2:" in str(caught.value)


def test_a_yolo_dataset_without_a_person_class_is_refused(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "ds", {0: "car", 1: "bus"}, {"a": ""})
    with pytest.raises(PedstreamError, match="no class named 'person'"):
        load_dataset(root)


def _coco(tmp_path: Path, annotations: list[dict[str, object]]) -> Path:
    _image(tmp_path / "img" / "one.jpg")
    spec = {
        "images": [{"id": 7, "file_name": "one.jpg", "width": 200, "height": 100}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(spec))
    return path


def test_coco_json_gives_person_boxes_and_keeps_crowds_apart(tmp_path: Path) -> None:
    path = _coco(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [100, 0, 90, 90], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
    )
    data = load_dataset(path, tmp_path / "img")
    assert data.kind == "coco" and data.boxes == 1
    [image] = data.images
    np.testing.assert_allclose(image.boxes, [[10, 20, 40, 60]])
    np.testing.assert_allclose(image.ignored, [[100, 0, 190, 90]])
    assert image.example(data.name).image.shape == (100, 200, 3)


def test_a_bad_coco_entry_names_the_file_and_the_entry(tmp_path: Path) -> None:
    path = _coco(tmp_path, [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, -3, 40]}])
    with pytest.raises(PedstreamError, match=r"instances.json: annotations\[0\]: bbox must be"):
        load_dataset(path, tmp_path / "img")
    path = _coco(tmp_path, [{"id": 1, "image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(PedstreamError, match=r"annotations\[0\]: image_id 99 is not in 'images'"):
        load_dataset(path, tmp_path / "img")


def test_coco_images_must_exist(tmp_path: Path) -> None:
    path = _coco(tmp_path, [])
    with pytest.raises(PedstreamError, match="1 image\\(s\\) not found"):
        load_dataset(path, tmp_path / "elsewhere")


def test_the_shared_coco128_person_folder_loads(shared_data: Path) -> None:
    data = load_dataset(shared_data / "coco128-person")
    assert (len(data.images), data.boxes) == (134, 604)  # as its README says
