"""The hard-example store: mined frames consumed from Kafka into a folder with an index.

``ROOT/images/<camera>/<seq>-<sha8>.jpg`` holds the JPEGs; ``ROOT/index.sqlite`` the index: one row
per distinct JPEG (deduplicated by sha256, and by camera + sequence + capture time), with the edge
model's detections, why it was mined, and which model version was later trained on it (``used_in``).
Examples a version was trained on become the replay set of the next retraining, so new training
does not forget. The gate's frames are whole blocks of the camera's timeline, never frames
interleaved with training ones: a frame is held out (for the gate, never trained on) when its
block of ``block_frames`` consecutive source frames is every ``split_every``-th one (default: blocks
of 20 frames, 2 s at 10 fps, and every 5th block, from the first), so a gate frame's near-duplicate neighbours are
held out with it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streams.records import HardExample

SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    sha256 TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    source_frame_index INTEGER NOT NULL,
    capture_ts REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    path TEXT NOT NULL,
    reasons TEXT NOT NULL,
    model_version TEXT NOT NULL,
    detections TEXT NOT NULL,
    added_ts REAL NOT NULL,
    held_out INTEGER NOT NULL,
    used_in TEXT,
    UNIQUE (camera_id, seq, capture_ts)
);
CREATE INDEX IF NOT EXISTS by_camera ON examples (camera_id, used_in);
"""


@dataclass(frozen=True)
class StoredExample:
    sha256: str
    camera_id: str
    seq: int
    source_frame_index: int
    capture_ts: float
    path: Path
    reasons: list[str]
    model_version: str
    detections: list[dict[str, float]]
    held_out: bool
    used_in: str | None


class HardExampleStore:
    def __init__(self, root: Path, split_every: int = 5, block_frames: int = 20) -> None:
        self.root = root
        self.split_every = split_every
        self.block_frames = block_frames
        (root / "images").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(root / "index.sqlite", check_same_thread=False)
        self.db.executescript(SCHEMA)

    def add(self, record: HardExample) -> bool:
        """Store one hard example; False when it is a duplicate."""
        digest = hashlib.sha256(record.jpeg).hexdigest()
        folder = self.root / "images" / record.camera_id
        path = folder / f"{record.seq:08d}-{digest[:8]}.jpg"
        held_out = int(self.is_gate_block(record.source_frame_index))
        with self._lock:
            exists = self.db.execute(
                "SELECT 1 FROM examples WHERE sha256 = ? OR (camera_id = ? AND seq = ? AND capture_ts = ?)",
                (digest, record.camera_id, record.seq, record.capture_ts),
            ).fetchone()
            if exists:
                return False
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(record.jpeg)
            self.db.execute(
                "INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    digest,
                    record.camera_id,
                    record.seq,
                    record.source_frame_index,
                    record.capture_ts,
                    record.width,
                    record.height,
                    str(path.relative_to(self.root)),
                    json.dumps(list(record.reasons)),
                    record.model_version,
                    json.dumps([b.model_dump() for b in record.detections]),
                    time.time(),
                    held_out,
                ),
            )
            self.db.commit()
        return True

    def is_gate_block(self, source_frame_index: int) -> bool:
        """Whether a frame falls in a held-out block of its camera's timeline."""
        return (source_frame_index // self.block_frames) % self.split_every == 0

    def counts(self) -> dict[str, dict[str, int]]:
        """Per camera: ``new`` (never trained on, not held out), ``held_out``, ``used`` (replay), ``total``."""
        with self._lock:  # one connection, used by the collecting loop and the retraining thread
            rows = self.db.execute(
                "SELECT camera_id, SUM(held_out = 0 AND used_in IS NULL), SUM(held_out), SUM(used_in IS NOT NULL), COUNT(*) "
                "FROM examples GROUP BY camera_id"
            ).fetchall()
        return {
            cam: {"new": int(new or 0), "held_out": int(held or 0), "used": int(used or 0), "total": int(total)}
            for cam, new, held, used, total in rows
        }

    def _select(self, where: str, args: Iterable[object]) -> list[StoredExample]:
        with self._lock:
            rows = self.db.execute(
                "SELECT sha256, camera_id, seq, source_frame_index, capture_ts, path, reasons, model_version, detections, "
                f"held_out, used_in FROM examples WHERE {where} ORDER BY camera_id, seq",
                tuple(args),
            ).fetchall()
        return [
            StoredExample(r[0], r[1], r[2], r[3], r[4], self.root / r[5], json.loads(r[6]), r[7], json.loads(r[8]), bool(r[9]), r[10])
            for r in rows
        ]

    def new_examples(self, camera: str | None = None) -> list[StoredExample]:
        if camera:
            return self._select("held_out = 0 AND used_in IS NULL AND camera_id = ?", [camera])
        return self._select("held_out = 0 AND used_in IS NULL", [])

    def replay(self) -> list[StoredExample]:
        return self._select("used_in IS NOT NULL", [])

    def held_out(self, camera: str | None = None) -> list[StoredExample]:
        if camera:
            return self._select("held_out = 1 AND camera_id = ?", [camera])
        return self._select("held_out = 1", [])

    def mark_used(self, examples: Iterable[StoredExample], version: str) -> None:
        with self._lock:
            self.db.executemany("UPDATE examples SET used_in = ? WHERE sha256 = ?", [(version, e.sha256) for e in examples])
            self.db.commit()

    def close(self) -> None:
        self.db.close()
