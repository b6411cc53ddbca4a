"""The model registry in Redis (trainer side): versions with lineage and gate reports, and the
signed release orders that say which camera serves which version. The key layout is
``streams.model_channel``'s.

Storing a version approves it (numbered and signed) or records it as rejected (unsigned, with its
reason: never served). An order (``assign``) serves an approved version as the general model or on
a camera or group of cameras; it is announced on the Redis channel (agents swap within a second)
and, when a Kafka publisher is given, as a ``ModelAnnouncement`` record on the models topic.
Orders only move forward; ``rollback`` signs the order that goes back. Both need the private key.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from detectors.adapters.registry import FORMAT_METADATA_KEY
from detectors.detector import VERSION_METADATA_KEY, onnx_metadata
from streams.errors import PedstreamError
from streams.model_channel import ModelKeys, get_bytes, list_bytes, read_orders
from streams.records import GENERAL_SCOPE, CompiledArtifact, ModelAnnouncement, describe_scope
from streams.signing import Signer, VerificationError, Verifier, sha256_hex

STATES = ("approved", "rejected")


@dataclass(frozen=True)
class Lineage:
    """Where a version came from."""

    parent: str | None = None
    data: dict[str, int] = field(default_factory=dict)  # e.g. {"examples": 397, "hard_examples": 120}
    labels: str | None = None
    notes: str | None = None


def scope_keys(cameras: Sequence[str]) -> list[str]:
    """The ``P:orders`` fields an order for ``cameras`` writes (``*`` for the general model)."""
    return sorted(cameras) or [GENERAL_SCOPE]


class Registry:
    def __init__(self, client: redis.Redis, keys: ModelKeys, signer: Signer | None = None, kafka_publisher: Any | None = None) -> None:
        self.client = client
        self.keys = keys
        self.signer = signer
        self.kafka_publisher = kafka_publisher  # a RecordPublisher[ModelAnnouncement], optional

    def _signer(self) -> Signer:
        if self.signer is None:
            raise PedstreamError("signing needs the private signing key (pedstream keys init; --keys FOLDER)")
        return self.signer

    # --- writing ---------------------------------------------------------------------------------

    def store(
        self,
        onnx: bytes,
        lineage: Lineage = Lineage(),
        metrics: dict[str, float] | None = None,
        state: str = "approved",
        reason: str | None = None,
        weights: dict[str, np.ndarray] | None = None,
        scope: Sequence[str] = (),
        gate: dict[str, Any] | None = None,
    ) -> ModelAnnouncement:
        """Store a version (its name is the ONNX metadata's ``pedstream_version``) for the cameras in
        ``scope`` (none: a general model). An approved version gets the next approval number and is
        signed; a rejected one is stored unsigned, with its reason, and can never be served. With
        ``weights`` (the student's training weights) later cycles can fine-tune it; ``gate`` is the
        gate's report."""
        if state not in STATES:
            raise PedstreamError(f"state must be one of {STATES}")
        signer = self._signer() if state == "approved" else None
        meta = onnx_metadata(onnx)
        version = meta.get(VERSION_METADATA_KEY)
        if not version:
            raise PedstreamError("the model has no pedstream_version in its ONNX metadata")
        if self.client.exists(self.keys.version(version)):
            raise PedstreamError(f"version {version} already exists in the registry: versions are immutable")
        number = self._next(self.keys.numbers) if state == "approved" else 0
        announcement = ModelAnnouncement(
            version=version,
            sha256=sha256_hex(onnx),
            size_bytes=len(onnx),
            registry_key=self.keys.onnx(version),
            parent_version=lineage.parent,
            model_format=meta.get(FORMAT_METADATA_KEY, "unknown"),
            published_ts=time.time(),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            scope=sorted(scope),
            number=number,
            state=state,  # type: ignore[arg-type]  # checked against STATES above
        )
        if signer is not None:
            announcement = signer.sign_order(announcement)  # serial 0: no agent serves it until an order names it
        entry = {
            "announcement": json.loads(announcement.model_dump_json()),
            "lineage": lineage.__dict__,
            "state": state,
            "reason": reason,
            "gate": gate,
        }
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

    def assign(self, version: str, cameras: Sequence[str] = (), order: str = "release") -> ModelAnnouncement:
        """Sign a release order serving ``version`` on ``cameras`` (none: as the general model) and
        announce it. A release order may only move a scope forward (a version approved no earlier
        than the one it serves); going back takes ``order="rollback"`` (``rollback``)."""
        signer = self._signer()
        entry = self.entry(version)
        if entry["state"] != "approved":
            raise PedstreamError(f"version {version} was {entry['state']} ({entry.get('reason')}): it cannot be served")
        approved = ModelAnnouncement.model_validate(entry["announcement"])
        in_force = self._own_orders(signer)
        if order == "release":
            for key in scope_keys(cameras):
                serving = in_force.get(key)
                if serving is not None and serving.number > approved.number:
                    raise PedstreamError(
                        f"{version} (approval #{approved.number}) is older than {serving.version} (#{serving.number}) "
                        f"that {describe_scope([key])} serves: use `pedstream models rollback`"
                    )
        serial = self._next(self.keys.serials)
        signed = signer.sign_order(
            approved.model_copy(update={"scope": sorted(cameras), "serial": serial, "order": order, "signature": None})
        )
        as_json = signed.model_dump_json()
        pipe = self.client.pipeline()
        for key in scope_keys(cameras):
            pipe.hset(self.keys.orders, key, as_json)
            if order == "release":
                pipe.rpush(self._stack_key(key), version)
        if not cameras:
            pipe.set(self.keys.current, version)
        pipe.rpush(self.keys.history, as_json)
        pipe.publish(self.keys.channel, as_json)
        pipe.execute()
        if self.kafka_publisher is not None:
            self.kafka_publisher.publish(signed)
            self.kafka_publisher.flush(10)
        return signed

    def _own_orders(self, signer: Signer) -> dict[str, ModelAnnouncement]:
        """The orders in force that this registry's key signed (anything else in Redis was written
        by someone without the key, and no agent serves it)."""
        verifier = Verifier(signer.key.public_key())
        own = {}
        for scope, order in read_orders(self.client, self.keys).items():
            try:
                verifier.verify_order(order)
            except VerificationError:
                continue
            own[scope] = order
        return own

    def make_current(self, version: str) -> ModelAnnouncement:
        """Serve ``version`` as the general model (every camera without a model of its own)."""
        return self.assign(version)

    def publish(
        self,
        onnx: bytes,
        lineage: Lineage = Lineage(),
        metrics: dict[str, float] | None = None,
        weights: dict[str, np.ndarray] | None = None,
    ) -> ModelAnnouncement:
        """Store (approved) and make the general model in one step."""
        announcement = self.store(onnx, lineage, metrics, weights=weights)
        return self.make_current(announcement.version)

    def rollback(self, camera: str | None = None, to: str | None = None) -> ModelAnnouncement:
        """Sign a rollback order: ``camera`` (None: the general model) goes back to ``to``, by default
        to what it served before its latest release (each scope keeps a stack of its releases; a
        rollback pops one; a camera with none left gets the general model's version). The only way
        a scope goes back to an older version."""
        scope = [camera] if camera else []
        stack = self._stack_key(camera or GENERAL_SCOPE)
        if to is None:
            versions = [v.decode() for v in list_bytes(self.client.lrange(stack, 0, -1))]
            if not versions:
                raise PedstreamError(f"nothing to roll back: {describe_scope(scope)} has no release")
            if len(versions) >= 2:
                to = versions[-2]
            elif camera is not None and self.current_version() not in (None, versions[-1]):
                to = self.current_version()
            else:
                raise PedstreamError(f"nothing to roll back to: {describe_scope(scope)} has served only {versions[-1]}")
            self.client.rpop(stack)
        assert to is not None
        return self.assign(to, scope, order="rollback")

    def _stack_key(self, scope: str) -> str:
        """The stack of versions ``scope`` (a camera, or ``*``) was released to."""
        return f"{self.keys.history}:{scope}"

    def _next(self, counter: str) -> int:
        """The next number of ``counter``: the time in milliseconds, or one past the last number if
        that is later, so numbers keep rising even when Redis lost its data."""
        last = int(get_bytes(self.client, counter) or 0)
        number = max(int(time.time() * 1000), last + 1)
        self.client.set(counter, number)
        return number

    # --- reading ---------------------------------------------------------------------------------

    def _weights_key(self, version: str) -> str:
        return self.keys.version(version) + ":weights"  # trainer-side only: edge agents never read it

    def weights(self, version: str) -> dict[str, np.ndarray] | None:
        raw = get_bytes(self.client, self._weights_key(version))
        if raw is None:
            return None
        with np.load(io.BytesIO(raw)) as data:
            return {k: data[k] for k in data.files}

    def store_artifact(
        self, version: str, target: str, target_id: str, data: bytes, settings: dict[str, str], compile_s: float
    ) -> CompiledArtifact:
        """Store a library compiled from approved ``version`` for one device target, signed like the
        version itself (rejected versions get none: they are never served)."""
        signer = self._signer()
        entry = self.entry(version)
        if entry["state"] != "approved":
            raise PedstreamError(f"version {version} was {entry['state']}: nothing is compiled for a version that is never served")
        approved = ModelAnnouncement.model_validate(entry["announcement"])
        artifact = signer.sign_artifact(
            CompiledArtifact(
                version=version,
                model_sha256=approved.sha256,
                target=target,
                target_id=target_id,
                sha256=sha256_hex(data),
                size_bytes=len(data),
                registry_key=self.keys.artifact(version, target_id),
                settings=settings,
                compile_s=round(compile_s, 2),
                approved_ts=approved.published_ts,
                published_ts=time.time(),
            )
        )
        pipe = self.client.pipeline()
        pipe.set(artifact.registry_key, data)
        pipe.hset(self.keys.artifacts(version), target_id, artifact.model_dump_json())
        pipe.execute()
        return artifact

    def artifacts(self, version: str) -> list[CompiledArtifact]:
        reply = self.client.hgetall(self.keys.artifacts(version))
        assert isinstance(reply, dict)
        return [CompiledArtifact.model_validate_json(raw) for raw in reply.values()]

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
        """The general model's version."""
        raw = get_bytes(self.client, self.keys.current)
        return raw.decode() if raw else None

    def orders(self) -> dict[str, ModelAnnouncement]:
        """The release orders in force by scope (``*``: the general model; else a camera id)."""
        return read_orders(self.client, self.keys)

    def serving(self, camera: str) -> str | None:
        """The version ``camera`` is ordered to serve: its own model's, else the general one's."""
        orders = self.orders()
        order = orders.get(camera) or orders.get(GENERAL_SCOPE)
        return order.version if order else None

    def history(self, camera: str | None = None) -> list[ModelAnnouncement]:
        """Every release order for ``camera`` (None: for the general model), oldest first."""
        orders = [ModelAnnouncement.model_validate_json(raw) for raw in list_bytes(self.client.lrange(self.keys.history, 0, -1))]
        return [o for o in orders if (camera in o.scope if camera else not o.scope)]

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
                    "scope": a.get("scope", []),
                    "number": a.get("number", 0),
                    "lineage": entry.get("lineage"),
                    "gate": entry.get("gate"),
                    "artifacts": [
                        {"runtime": a.runtime, "target_id": a.target_id, "size_bytes": a.size_bytes, **a.settings}
                        for a in self.artifacts(version)
                    ],
                }
            )
        return out

    def agents(self) -> dict[str, dict[str, Any]]:
        reply = self.client.hgetall(self.keys.agents)
        assert isinstance(reply, dict)
        return {(k.decode() if isinstance(k, bytes) else str(k)): json.loads(v) for k, v in reply.items()}
