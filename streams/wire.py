"""How records become Kafka messages (key, value, headers) and back, with strict validation.

* JSON records (Detections, Alert, ModelAnnouncement, CameraStatus): the value is the record as
  UTF-8 JSON, ``schema_version`` included.
* Image records (Frame, HardExample): the value is the raw JPEG; every other field travels as one
  JSON object in the ``pedstream-meta`` header. No base64, no envelope around image bytes.
* Every message has a ``pedstream-record`` header naming the record type, and camera records are
  keyed by camera id so one camera's messages stay in one partition, in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from streams.errors import RecordError
from streams.records import ALL_RECORDS, IMAGE_RECORDS, SCHEMA_VERSION, CameraRecord, Record

RECORD_HEADER = "pedstream-record"
META_HEADER = "pedstream-meta"

R = TypeVar("R", bound=Record)
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class WireMessage:
    """One Kafka message as pedstream writes it."""

    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


def encode(record: Record) -> WireMessage:
    """Turn a record into the Kafka message that carries it."""
    key = record.partition_key() if isinstance(record, CameraRecord) else None
    headers: Headers = [(RECORD_HEADER, record.record_name.encode())]
    if isinstance(record, IMAGE_RECORDS):
        meta = record.model_dump(mode="json", exclude={"jpeg"})
        headers.append((META_HEADER, json.dumps(meta, separators=(",", ":")).encode()))
        return WireMessage(key=key, value=record.jpeg, headers=headers)
    return WireMessage(key=key, value=record.model_dump_json().encode(), headers=headers)


def header_value(headers: Headers | None, name: str) -> bytes | None:
    """The value of the first header called ``name``, or None."""
    for key, value in headers or []:
        if key == name:
            return value
    return None


def decode(record_type: type[R], value: bytes | None, headers: Headers | None) -> R:
    """Read a Kafka message as ``record_type``; raise RecordError saying exactly what is wrong."""
    name = record_type.record_name
    declared = header_value(headers, RECORD_HEADER)
    if declared is not None and declared.decode(errors="replace") != name:
        raise RecordError(f"expected a {name} record, the message says it is {declared.decode(errors='replace')!r}")
    if value is None:
        raise RecordError(f"{name}: message has no value")
    if record_type in IMAGE_RECORDS:
        raw_meta = header_value(headers, META_HEADER)
        if raw_meta is None:
            raise RecordError(f"{name}: missing header {META_HEADER!r}")
        fields = _parse_json_object(name, raw_meta, where=f"header {META_HEADER!r}")
        fields["jpeg"] = value
    else:
        fields = _parse_json_object(name, value, where="value")
    return validate(record_type, fields)


def validate(record_type: type[R], fields: dict[str, Any]) -> R:
    """Build ``record_type`` from plain fields, refusing unknown schema versions and bad fields."""
    name = record_type.record_name
    version = fields.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"{name}: unsupported schema_version {version!r} (this build reads {SCHEMA_VERSION})")
    try:
        return record_type.model_validate(fields)
    except ValidationError as exc:
        raise RecordError(f"{name}: {_describe(exc)}") from None


def record_type_named(name: str) -> type[Record]:
    """The record class for a ``pedstream-record`` header value."""
    try:
        return ALL_RECORDS[name]
    except KeyError:
        raise RecordError(f"unknown record type {name!r}; known: {', '.join(sorted(ALL_RECORDS))}") from None


def _parse_json_object(name: str, raw: bytes, where: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{name}: {where} is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise RecordError(f"{name}: {where} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        location = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"field {location}: {err['msg']}")
    return "; ".join(parts)
