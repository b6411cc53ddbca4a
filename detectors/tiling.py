"""Tiling: split a frame into overlapping tiles for a small-input model and merge the results across seams.

Tiles overlap by at least the tallest person expected, so everyone is whole in at least one tile;
duplicates from neighbouring tiles are merged with NMS in frame coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detectors.boxes import nms, scale_boxes
from detectors.results import BoxArray
from streams.cameras.config import Tiling

MERGE_IOU = 0.5


@dataclass(frozen=True)
class Tile:
    x0: int
    y0: int
    x1: int
    y1: int


def plan_tiles(width: int, height: int, tiling: Tiling) -> list[Tile]:
    """``rows`` x ``cols`` tiles covering the frame, neighbours sharing ``overlap`` pixels (plus the
    full frame when asked)."""

    def spans(size: int, parts: int) -> list[tuple[int, int]]:
        if parts == 1:
            return [(0, size)]
        length = min(size, int(np.ceil((size + (parts - 1) * tiling.overlap) / parts)))
        starts = np.linspace(0, size - length, parts).round().astype(int)
        return [(int(s), int(s) + length) for s in starts]

    tiles = [Tile(x0, y0, x1, y1) for (y0, y1) in spans(height, tiling.rows) for (x0, x1) in spans(width, tiling.cols)]
    if tiling.include_full_frame:
        tiles.append(Tile(0, 0, width, height))
    return tiles


def split(image: np.ndarray, tiles: list[Tile]) -> list[np.ndarray]:
    return [image[t.y0 : t.y1, t.x0 : t.x1] for t in tiles]


def merge(parts: list[BoxArray], tiles: list[Tile], iou_threshold: float = MERGE_IOU) -> BoxArray:
    """Boxes of every tile moved to frame coordinates, duplicates across seams removed by NMS."""
    if len(parts) != len(tiles):
        raise ValueError(f"{len(parts)} results for {len(tiles)} tiles")
    moved = [BoxArray(scale_boxes(p.xyxy, 1.0, 1.0, t.x0, t.y0), p.scores, p.class_ids) for p, t in zip(parts, tiles, strict=True)]
    return merge_in_frame(moved, iou_threshold)


def merge_in_frame(parts: list[BoxArray], iou_threshold: float = MERGE_IOU) -> BoxArray:
    """Tile results already in frame coordinates, duplicates across seams removed by NMS."""
    merged = BoxArray.concat(parts)
    if not len(merged):
        return merged
    return merged[nms(merged.xyxy, merged.scores, iou_threshold)]


def tiled(detect: Callable[[list[np.ndarray]], list[BoxArray]], tiling: Tiling) -> Callable[[list[np.ndarray]], list[BoxArray]]:
    """A detect function that runs ``detect`` on each frame's tiles as one batch and merges them."""

    def run(images: list[np.ndarray]) -> list[BoxArray]:
        out = []
        for image in images:
            tiles = plan_tiles(image.shape[1], image.shape[0], tiling)
            out.append(merge(detect(split(image, tiles)), tiles))
        return out

    return run
