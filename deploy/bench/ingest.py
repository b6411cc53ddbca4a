"""``pedstream bench ingest``: virtual cameras from one video publish for a while; measure what got through."""

from __future__ import annotations

import time

import numpy as np

from streams.cameras.agent import CameraFleet
from streams.cameras.config import CameraOptions, VirtualCameras, expand_virtual
from streams.topics import Topics


def virtual_fleet(source: str, cameras: int, fps: float, max_width: int | None = None, id_prefix: str = "bench") -> list:  # type: ignore[type-arg]
    """``cameras`` virtual cameras from ``source``, offsets spread over its length, default looks."""
    group = VirtualCameras(id_prefix=id_prefix, source=source, count=cameras, fps=fps, max_width=max_width, loop=True, realtime=True)
    return expand_virtual(group, CameraOptions(), None, "bench")


def run(bootstrap: str, topics: Topics, source: str, cameras: int, fps: float, seconds: float, progress=None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Publish from ``cameras`` virtual cameras at ``fps`` each for ``seconds``; return the figures."""
    fleet = CameraFleet(virtual_fleet(source, cameras, fps), bootstrap, topics)
    fleet.start()
    started = time.monotonic()
    try:
        fleet.wait(seconds, on_tick=(lambda: progress(time.monotonic() - started, fleet.stats())) if progress else None)
    finally:
        elapsed = time.monotonic() - started
        fleet.stop()
    per_camera = {r.config.id: round(r.stats.published / elapsed, 2) for r in fleet.runners}
    latencies = np.array([ms for r in fleet.runners for ms in r.stats.latencies_ms]) if fleet.runners else np.array([])
    total_bytes = sum(r.stats.bytes_published for r in fleet.runners)
    return {
        "cameras": cameras,
        "seconds": round(elapsed, 2),
        "source": source,
        "offered_fps": round(cameras * fps, 2),
        "achieved_fps": round(sum(per_camera.values()), 2),
        "bytes_per_s": round(total_bytes / elapsed, 1),
        "publish_latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
            "p99": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        },
        "per_camera": per_camera,
        "dropped_by_cap": sum(r.stats.dropped for r in fleet.runners),
        "publish_failures": sum(r.stats.failed for r in fleet.runners),
        "bootstrap": bootstrap,
    }
