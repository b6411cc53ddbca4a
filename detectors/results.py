"""The one value type for detector output: columns of boxes, scores and class ids for one image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.records import Box

PERSON = 0
PUBLISH_THRESHOLD = 0.3  # a detector agent publishes boxes scored this or more (its default; --publish-threshold)


@dataclass(frozen=True)
class BoxArray:
    """Detections in one image: ``xyxy`` (N, 4) float32 pixels, ``scores`` (N,), ``class_ids`` (N,) int."""

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must have shape ({n}, 4) to match scores, got {self.xyxy.shape}")
        if self.class_ids.shape != (n,):
            raise ValueError(f"class_ids must have shape ({n},), got {self.class_ids.shape}")

    @classmethod
    def empty(cls) -> BoxArray:
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int64))

    @classmethod
    def of(cls, xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None = None) -> BoxArray:
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        ids = np.zeros(len(scores), np.int64) if class_ids is None else np.asarray(class_ids, np.int64).reshape(-1)
        return cls(xyxy, scores, ids)

    @classmethod
    def concat(cls, parts: list[BoxArray]) -> BoxArray:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xyxy for p in parts]), np.concatenate([p.scores for p in parts]), np.concatenate([p.class_ids for p in parts])
        )

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: np.ndarray | slice) -> BoxArray:
        """Rows selected by a mask, index array or slice, as a new BoxArray."""
        return BoxArray(self.xyxy[index], self.scores[index], self.class_ids[index])

    def above(self, threshold: float) -> BoxArray:
        return self[self.scores >= threshold]

    def to_boxes(self) -> list[Box]:
        """As record boxes for the bus (scores clipped to [0, 1])."""
        return [
            Box(
                x1=float(b[0]),
                y1=float(b[1]),
                x2=float(max(b[2], b[0])),
                y2=float(max(b[3], b[1])),
                score=float(min(max(s, 0.0), 1.0)),
                class_id=int(c),
            )
            for b, s, c in zip(self.xyxy, self.scores, self.class_ids, strict=False)
        ]

    @classmethod
    def from_boxes(cls, boxes: list[Box]) -> BoxArray:
        if not boxes:
            return cls.empty()
        return cls.of(
            np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes]), np.array([b.score for b in boxes]), np.array([b.class_id for b in boxes])
        )
