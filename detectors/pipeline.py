"""Task-level pipeline parallelism: decode, preprocess, inference and postprocess as threads joined by
bounded queues, with micro-batching across cameras in front of inference (one run per model when cameras are served
different models).

Each stage is one thread, so items leave in the order they entered (the agent relies on that to
acknowledge Kafka messages without gaps). A full queue blocks the stage before it: back-pressure,
never unbounded buffering. Models are looked up per camera at each batch (``detectors.serving``),
so swaps happen between batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from detectors.adapters.base import ImageMeta, ModelAdapter
from detectors.detector import Detector
from detectors.metrics import BATCH_SIZE
from detectors.results import BoxArray
from detectors.serving import ServedModels
from detectors.tiling import Tile, merge, plan_tiles, split
from streams.cameras.config import Tiling

log = logging.getLogger(__name__)

_STOP = object()


def _ema(previous: float, value: float, weight: float = 0.2) -> float:
    return value if previous == 0.0 else previous + weight * (value - previous)


@dataclass
class WorkItem:
    """One frame on its way through the pipeline; ``token`` is the caller's (e.g. the Kafka event)."""

    token: Any
    camera_id: str
    jpeg: bytes
    tiling: Tiling | None = None
    declared_size: tuple[int, int] | None = None  # (width, height) the record states; the decoded JPEG must match
    image: np.ndarray | None = None
    brightness: float | None = None  # mean pixel value of the decoded frame (hard-example mining)
    tiles: list[Tile] | None = None
    tile_jpegs: list[bytes] = field(default_factory=list, repr=False)  # tiles to fan out (tiling.fan_out)
    tensors: list[np.ndarray] = field(default_factory=list, repr=False)
    metas: list[ImageMeta] = field(default_factory=list, repr=False)
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)
    boxes: BoxArray | None = None
    adapter: ModelAdapter | None = field(default=None, repr=False)  # the one that made ``tensors``
    model_version: str = ""
    batch_size: int = 0
    error: str | None = None
    expires_ts: float | None = None  # unix time after which the frame is not worth inferring (None: never)
    shed: str | None = None  # why the frame was not inferred (it went stale); set by the caller or before inference
    timings_ms: dict[str, float] = field(default_factory=dict)
    entered: float = field(default_factory=time.perf_counter)
    delivered_ts: float = 0.0  # unix time the result left the pipeline


class DetectionPipeline:
    """Four stage threads; ``submit`` blocks when the first queue is full; ``on_result`` gets every item,
    in submission order, from the postprocess thread (errors included, with ``error`` set)."""

    def __init__(
        self,
        models: ServedModels | Detector,
        on_result: Callable[[WorkItem], None],
        max_batch: int = 4,
        max_wait_ms: float = 0.0,
        queue_size: int = 2,
    ) -> None:
        self.models = models if isinstance(models, ServedModels) else ServedModels(models)
        self.on_result = on_result
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.q_decode: queue.Queue[Any] = queue.Queue(queue_size)
        self.q_pre: queue.Queue[Any] = queue.Queue(queue_size)
        self.q_infer: queue.Queue[Any] = queue.Queue(queue_size)
        self.q_post: queue.Queue[Any] = queue.Queue(queue_size)
        self.batches: list[int] = []
        # running estimates (EMA) of one batch's inference and of an item's whole way through, in seconds:
        # a frame is shed when it would finish after its deadline, not only when it already missed it
        self.infer_estimate_s = 0.0
        self.total_estimate_s = 0.0
        self._threads = [
            threading.Thread(target=self._stage, args=(self.q_decode, self.q_pre, self._decode), name="pipe-decode", daemon=True),
            threading.Thread(target=self._stage, args=(self.q_pre, self.q_infer, self._preprocess), name="pipe-pre", daemon=True),
            threading.Thread(target=self._infer_loop, name="pipe-infer", daemon=True),
            threading.Thread(target=self._stage, args=(self.q_post, None, self._postprocess), name="pipe-post", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # --- public -------------------------------------------------------------------------------

    def submit(self, item: WorkItem, timeout: float | None = None) -> None:
        self.q_decode.put(item, timeout=timeout)

    def expected_latency_s(self) -> float:
        """How long a frame submitted now should take: the batches queued ahead of it and its own, at
        the current inference time. It follows the queues as they are now, so a burst that is over no
        longer counts (an average of past frames' whole way through stays high after a burst, when
        every new frame is shed and none updates it: nothing would ever be detected again)."""
        queued = sum(q.qsize() for q in (self.q_decode, self.q_pre, self.q_infer, self.q_post))
        return (queued // max(1, self.max_batch) + 1) * self.infer_estimate_s

    def swap(self, detector: Detector) -> None:
        """Serve ``detector`` as the general model from the next batch on; frames already batched
        finish on the old one (per-camera swaps go through ``models``)."""
        self.models.install(detector, None, [])

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then stop the threads."""
        self.q_decode.put(_STOP)
        for t in self._threads:
            t.join(timeout=timeout)

    # --- stages -------------------------------------------------------------------------------

    def _stage(self, inbox: queue.Queue[Any], outbox: queue.Queue[Any] | None, work: Callable[[WorkItem], None]) -> None:
        while True:
            item = inbox.get()
            if item is _STOP:
                if outbox is not None:
                    outbox.put(_STOP)
                return
            if item.error is None and item.shed is None:
                started = time.perf_counter()
                try:
                    work(item)
                except Exception as exc:  # a bad frame must not stop the pipeline
                    log.exception("pipeline stage failed for camera %s", item.camera_id)
                    item.error = f"{type(exc).__name__}: {exc}"
                item.timings_ms[work.__name__.strip("_")] = (time.perf_counter() - started) * 1000.0
            if outbox is not None:
                outbox.put(item)
            else:
                self._deliver(item)

    def _decode(self, item: WorkItem) -> None:
        image = cv2.imdecode(np.frombuffer(item.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            item.error = "corrupt JPEG: cannot decode the frame"
            return
        decoded = (image.shape[1], image.shape[0])
        if item.declared_size is not None and decoded != item.declared_size:
            w, h = item.declared_size
            item.error = f"frame size mismatch: the JPEG is {decoded[0]}x{decoded[1]}, the record says {w}x{h}"
            return
        item.image = image
        item.brightness = float(np.mean(cv2.mean(image)[:3]))

    def _preprocess(self, item: WorkItem, adapter: ModelAdapter | None = None) -> None:
        assert item.image is not None
        adapter = adapter or self.models.for_camera(item.camera_id).adapter
        item.adapter = adapter
        item.tensors, item.metas = [], []
        if item.tiling is not None:
            h, w = item.image.shape[:2]
            item.tiles = plan_tiles(w, h, item.tiling)
            crops = split(item.image, item.tiles)
            if item.tiling.fan_out:  # other agents run the tiles: just cut and encode them
                item.tile_jpegs = [cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for c in crops]
                return
        else:
            crops = [item.image]
        for crop in crops:
            tensor, meta = adapter.preprocess_one(crop)
            item.tensors.append(tensor)
            item.metas.append(meta)

    def _infer_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self.q_infer.get()
            if first is _STOP:
                break
            batch = [first]
            images = len(first.tensors)
            deadline = time.perf_counter() + self.max_wait_s
            while images < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    nxt = self.q_infer.get(timeout=max(remaining, 0.0)) if remaining > 0 else self.q_infer.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
                images += len(nxt.tensors)
            self._run_batch(batch)
            for item in batch:
                self.q_post.put(item)
        self.q_post.put(_STOP)

    def _run_batch(self, batch: list[WorkItem]) -> None:
        """Infer a batch: items are grouped by the model their camera is served now (one run each)."""
        now = time.time()
        finish = now + self.infer_estimate_s
        for item in batch:
            if item.shed is None and item.expires_ts is not None and finish > item.expires_ts:
                item.shed = f"stale at inference: would finish {(finish - item.expires_ts) * 1000.0:.0f} ms after its deadline"
        groups: dict[int, tuple[Detector, list[WorkItem]]] = {}
        for item in batch:
            detector = self.models.for_camera(item.camera_id)
            item.model_version = detector.version
            if item.error is None and item.shed is None and item.tensors:
                groups.setdefault(id(detector), (detector, []))[1].append(item)
        if not groups:
            return
        started = time.perf_counter()
        for detector, ready in groups.values():
            self._infer_group(detector, ready, started)
        self.infer_estimate_s = _ema(self.infer_estimate_s, time.perf_counter() - started)

    def _infer_group(self, detector: Detector, ready: list[WorkItem], batch_started: float) -> None:
        for item in ready:
            if item.adapter is not detector.adapter:  # made for the model before a swap: redo for this one
                self._preprocess(item, detector.adapter)
        started = time.perf_counter()
        try:
            stacked = np.stack([t for item in ready for t in item.tensors])
            outputs = detector.infer(stacked)
        except Exception as exc:
            log.exception("inference failed")
            for item in ready:
                item.error = f"inference failed: {exc}"
            return
        spent = (time.perf_counter() - started) * 1000.0
        self.batches.append(len(stacked))
        BATCH_SIZE.observe(len(stacked))
        offset = 0
        for item in ready:
            n = len(item.tensors)
            item.outputs = [out[offset : offset + n] for out in outputs]
            offset += n
            item.batch_size = len(stacked)
            item.timings_ms["infer"] = spent
            item.timings_ms["queue"] = (batch_started - item.entered) * 1000.0 - sum(
                item.timings_ms.get(k, 0.0) for k in ("decode", "preprocess")
            )

    def _postprocess(self, item: WorkItem) -> None:
        if item.tile_jpegs:
            return
        adapter = item.adapter or self.models.for_camera(item.camera_id).adapter
        parts = [adapter.decode(item.outputs, i, meta) for i, meta in enumerate(item.metas)]
        item.boxes = merge(parts, item.tiles) if item.tiles is not None else parts[0]
        item.tensors, item.outputs, item.image = [], [], None  # free memory early

    def _deliver(self, item: WorkItem) -> None:
        item.timings_ms["total"] = (time.perf_counter() - item.entered) * 1000.0
        item.delivered_ts = time.time()
        if item.error is None and item.shed is None:
            self.total_estimate_s = _ema(self.total_estimate_s, item.timings_ms["total"] / 1000.0)
        try:
            self.on_result(item)
        except Exception:
            log.exception("result handler failed for camera %s", item.camera_id)
