"""The model registry in Redis (trainer side): store signed versions with lineage, make one current,
announce it, promote, roll back, list. The key layout is ``streams.model_channel``'s.

Publishing a version stores it; making it current announces it on the Redis channel (agents swap
within a second) and, when a Kafka publisher is given, as a ``ModelAnnouncement`` record on the
models topic for any other subscriber. A rejected candidate is stored too, with its reason, and
never made current.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from detectors.adapters.registry import FORMAT_METADATA_KEY
from detectors.detector import VERSION_METADATA_KEY, onnx_metadata
from streams.errors import PedstreamError
from streams.model_channel import ModelKeys, get_bytes, list_bytes, read_announcement
from streams.records import ModelAnnouncement
from streams.signing import Signer, sha256_hex

STATES = ("published", "rejected")


@dataclass(frozen=True)
class Lineage:
    """Where a version came from."""

    parent: str | None = None
    data: dict[str, int] = field(default_factory=dict)  # e.g. {"examples": 397, "hard_examples": 120}
    labels: str | None = None
    notes: str | None = None


class Registry:
    def __init__(self, client: redis.Redis, keys: ModelKeys, signer: Signer | None = None, kafka_publisher: Any | None = None) -> None:
        self.client = client
        self.keys = keys
        self.signer = signer
        self.kafka_publisher = kafka_publisher  # a RecordPublisher[ModelAnnouncement], optional

    # --- writing ---------------------------------------------------------------------------------

    def store(
        self,
        onnx: bytes,
        lineage: Lineage = Lineage(),
        metrics: dict[str, float] | None = None,
        state: str = "published",
        reason: str | None = None,
        weights: dict[str, np.ndarray] | None = None,
    ) -> ModelAnnouncement:
        """Sign and store a version (its name is the ONNX metadata's ``pedstream_version``); with
        ``weights`` (the student's training weights) later cycles can fine-tune it."""
        if self.signer is None:
            raise PedstreamError("publishing needs the private signing key (pedstream keys init)")
        if state not in STATES:
            raise PedstreamError(f"state must be one of {STATES}")
        meta = onnx_metadata(onnx)
        version = meta.get(VERSION_METADATA_KEY)
        if not version:
            raise PedstreamError("the model has no pedstream_version in its ONNX metadata")
        if self.client.exists(self.keys.version(version)):
            raise PedstreamError(f"version {version} already exists in the registry: versions are immutable")
        announcement = ModelAnnouncement(
            version=version,
            sha256=sha256_hex(onnx),
            size_bytes=len(onnx),
            signature=self.signer.sign(onnx),
            registry_key=self.keys.onnx(version),
            parent_version=lineage.parent,
            model_format=meta.get(FORMAT_METADATA_KEY, "unknown"),
            published_ts=time.time(),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
        )
        entry = {"announcement": json.loads(announcement.model_dump_json()), "lineage": lineage.__dict__, "state": state, "reason": reason}
        pipe = self.client.pipeline()
        pipe.set(self.keys.onnx(version), onnx)
        pipe.set(self.keys.version(version), json.dumps(entry))
        if weights is not None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **weights)  # type: ignore[arg-type]  # numpy's stub types **kwds wrongly
            pipe.set(self._weights_key(version), buffer.getvalue())
        pipe.zadd(self.keys.versions, {version: announcement.published_ts})
        pipe.execute()
        return announcement

    def make_current(self, version: str) -> ModelAnnouncement:
        """Point every agent at ``version`` and announce it."""
        entry = self.entry(version)
        if entry["state"] != "published":
            raise PedstreamError(f"version {version} was {entry['state']} ({entry.get('reason')}): it cannot be served")
        announcement = read_announcement(self.client, self.keys, version)
        assert announcement is not None
        pipe = self.client.pipeline()
        pipe.set(self.keys.current, version)
        pipe.rpush(self.keys.history, version)
        pipe.publish(self.keys.channel, announcement.model_dump_json())
        pipe.execute()
        if self.kafka_publisher is not None:
            self.kafka_publisher.publish(announcement)
            self.kafka_publisher.flush(10)
        return announcement

    def publish(
        self,
        onnx: bytes,
        lineage: Lineage = Lineage(),
        metrics: dict[str, float] | None = None,
        weights: dict[str, np.ndarray] | None = None,
    ) -> ModelAnnouncement:
        """Store and make current in one step."""
        announcement = self.store(onnx, lineage, metrics, weights=weights)
        return self.make_current(announcement.version)

    def rollback(self) -> ModelAnnouncement:
        """Make the version that was current before this one current again."""
        history = [v.decode() for v in list_bytes(self.client.lrange(self.keys.history, 0, -1))]
        if len(history) < 2:
            raise PedstreamError("nothing to roll back to: fewer than two versions have been current")
        previous = history[-2]
        pipe = self.client.pipeline()
        pipe.rpop(self.keys.history)  # the current one
        pipe.rpop(self.keys.history)  # the previous one, pushed back by make_current
        pipe.execute()
        return self.make_current(previous)

    # --- reading ---------------------------------------------------------------------------------

    def _weights_key(self, version: str) -> str:
        return self.keys.version(version) + ":weights"  # trainer-side only: edge agents never read it

    def weights(self, version: str) -> dict[str, np.ndarray] | None:
        raw = get_bytes(self.client, self._weights_key(version))
        if raw is None:
            return None
        with np.load(io.BytesIO(raw)) as data:
            return {k: data[k] for k in data.files}

    def onnx(self, version: str) -> bytes:
        raw = get_bytes(self.client, self.keys.onnx(version))
        if raw is None:
            raise PedstreamError(f"no ONNX bytes for version {version!r}")
        return raw

    def entry(self, version: str) -> dict[str, Any]:
        raw = get_bytes(self.client, self.keys.version(version))
        if raw is None:
            raise PedstreamError(f"no version {version!r} in the registry")
        entry: dict[str, Any] = json.loads(raw)
        return entry

    def current_version(self) -> str | None:
        raw = get_bytes(self.client, self.keys.current)
        return raw.decode() if raw else None

    def versions(self) -> list[dict[str, Any]]:
        current = self.current_version()
        out = []
        for raw in list_bytes(self.client.zrange(self.keys.versions, 0, -1)):
            version = raw.decode()
            entry = self.entry(version)
            a = entry["announcement"]
            out.append(
                {
                    "version": version,
                    "state": entry["state"],
                    "current": version == current,
                    "parent": a.get("parent_version"),
                    "format": a["model_format"],
                    "sha256": a["sha256"],
                    "size_bytes": a["size_bytes"],
                    "published_ts": a["published_ts"],
                    "metrics": a["metrics"],
                    "reason": entry.get("reason"),
                }
            )
        return out

    def agents(self) -> dict[str, dict[str, Any]]:
        reply = self.client.hgetall(self.keys.agents)
        assert isinstance(reply, dict)
        return {(k.decode() if isinstance(k, bytes) else str(k)): json.loads(v) for k, v in reply.items()}
